"""The real packaged SmolLM2-135M-Instruct GGUF file against transformers' own GGUF loading (slow)."""

import pytest
import torch

import gencycle
from gencycle.assets import resolve

pytestmark = pytest.mark.slow

TEXT = "The quick brown fox jumps over the lazy dog, and then it runs into the forest to hide."


@pytest.fixture(scope="module")
def ours():
    return gencycle.load_model("smollm2-135m-instruct", device="cpu"), gencycle.load_tokenizer("smollm2-135m-instruct")


def test_logits_match_transformers_gguf_loading(ours):
    transformers = pytest.importorskip("transformers")
    path = resolve("smollm2-135m-instruct")
    reference = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name).eval()
    ref_tokenizer = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model, tokenizer = ours
    ids = tokenizer.encode(TEXT)
    assert ids == ref_tokenizer(TEXT)["input_ids"]
    with torch.no_grad():
        a = reference(torch.tensor([ids])).logits
        b = model(torch.tensor([ids])).logits
    assert (a - b).abs().max() < 1e-3


def test_chat_prompt_answers_paris_greedily(ours):
    model, tokenizer = ours
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, tokenize=False)
    ids = torch.tensor([tokenizer.encode(prompt, add_special_tokens=False)])
    cache = model.new_cache(1, ids.shape[1] + 16)
    new, step = [], ids
    with torch.no_grad():
        for _ in range(12):  # plain greedy loop over the KV cache: the core alone, no generation engine
            next_id = model(step, cache=cache).logits[0, -1].argmax().item()
            if next_id == tokenizer.eos_token_id:
                break
            new.append(next_id)
            step = torch.tensor([[next_id]])
    assert "Paris" in tokenizer.decode(new)
