"""`gencycle serve --compile`: the compiled steps are built before /health says ready, and greedy answers
under concurrent load are those of gencycle's eager generate for each prompt alone (slow: it compiles)."""

import asyncio

import openai
import pytest
from serve_helpers import Server, tiny_chat_folder

from gencycle import LLM
from gencycle.generation.compiled import has_cpp_compiler

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(not has_cpp_compiler(), reason="compiled decoding needs a C++ compiler")]

PROMPTS = ["Do you like pizza?", "Where is the station?", "Is it raining today?", "Can we meet at noon?"]


def test_compiled_server_answers_as_eager_generate_alone(tmp_path):
    folder = tiny_chat_folder(tmp_path / "tiny-chat", context=512)
    llm = LLM.load(folder, device="cpu")
    alone = [llm.chat([{"role": "user", "content": p}], max_new_tokens=40, eos_token_id=[]) for p in PROMPTS]
    server = Server(folder, "--compile", "--max-concurrency", "2", "--embedding-model", "none", timeout=900)
    try:
        assert "compiling the decoding steps" in server.output()

        async def run():
            async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0,
                                          timeout=300) as client:
                async def one(prompt):
                    out = await client.chat.completions.create(
                        model="tiny-chat", messages=[{"role": "user", "content": prompt}], max_tokens=40,
                        temperature=0, extra_body={"ignore_eos": True})
                    return out.choices[0].message.content
                return await asyncio.gather(*(one(p) for p in PROMPTS * 2))
        assert asyncio.run(run()) == alone * 2
    finally:
        server.close()
