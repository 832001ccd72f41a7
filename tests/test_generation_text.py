"""Text in, text out: LLM, stop strings, streaming, and the `generate` / `chat` commands.

The tokenizer is a byte-level BPE trained here with the `tokenizers` library, so its tokens are
known: the training text's characters and merges of them, and the two bytes of "é".
"""

import json

import pytest
import torch
import transformers as hf
from tokenizers import Tokenizer as Backend
from tokenizers import decoders, models, pre_tokenizers, trainers

import gencycle
from gencycle import LLM, TextStreamer
from gencycle.cli import main
from gencycle.generation.compiled import has_cpp_compiler
from gencycle.generation.stopping import cut_at_eos
from gencycle.tokenizer import Tokenizer, load_tokenizer

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
CORPUS = ["the quick brown fox jumps over the lazy dog", "hello world, hello there", "stop here and wait",
          "a stitch in time saves nine", "all that glitters is not gold", "STOP or START"]


def _backend() -> Backend:
    backend = Backend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    # the alphabet: the corpus' characters, plus the two bytes of "é" (which stays two tokens)
    trainer = trainers.BpeTrainer(vocab_size=120, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=["Ã", "©"], show_progress=False)
    backend.train_from_iterator(CORPUS * 3, trainer)
    return backend


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A model folder: tiny random Llama (HF layout), its tokenizer with a chat template, a generation config."""
    folder = tmp_path_factory.mktemp("tiny-chat")
    tokenizer = Tokenizer(_backend(), {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}, CHATML)
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    ref = hf.LlamaForCausalLM(hf.LlamaConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=64, max_position_embeddings=256, eos_token_id=2, pad_token_id=0))
    with torch.no_grad():
        ref.lm_head.weight.mul_(20)  # peaky: greedy text varies from token to token
    ref.save_pretrained(folder)
    (folder / "generation_config.json").write_text(json.dumps({"max_new_tokens": 24, "transformers_version": "4.46"}))
    return folder


@pytest.fixture(scope="module")
def llm(folder):
    return LLM.load(folder, device="cpu")


def test_load_reads_the_generation_config(llm):
    assert llm.generation_config.max_new_tokens == 24
    assert llm.make_config().eos_token_id == (2,) and llm.make_config(eos_token_id=[]).eos_token_id == ()


def test_generate_returns_completions_only(llm):
    prompts = ["hello", "the quick brown fox"]
    ids = llm.tokenizer(prompts, padding_side="left")
    out = gencycle.generate(llm.model, ids["input_ids"], ids["attention_mask"], max_new_tokens=10, eos_token_id=[2])
    expected = [llm.tokenizer.decode(cut_at_eos(row[ids["input_ids"].shape[1]:].tolist(), [2]), skip_special_tokens=True)
                for row in out]
    assert llm.generate(prompts, max_new_tokens=10) == expected
    assert llm.generate("hello", max_new_tokens=10) == expected[0]
    many = llm.generate(prompts, max_new_tokens=5, do_sample=True, num_return_sequences=3, seed=0)
    assert len(many) == 2 and all(len(texts) == 3 for texts in many)


def test_chat_applies_the_template(llm):
    messages = [{"role": "user", "content": "hello there"}]
    prompt = llm.tokenizer.apply_chat_template(messages)
    assert prompt.endswith("<|im_start|>assistant\n")
    assert llm.chat(messages, max_new_tokens=8) == llm.generate(prompt, max_new_tokens=8)
    assert llm.chat([messages, messages], max_new_tokens=8) == [llm.chat(messages, max_new_tokens=8)] * 2


def _stop_across_tokens(llm, prompt):
    """A 2-character stop string made of the last character of one generated token and the first of
    the next, chosen where it first occurs in the text; returns (stop, text before it, tokens to it)."""
    ids = llm.tokenizer(prompt)["input_ids"]
    new = gencycle.generate(llm.model, ids, max_new_tokens=24, eos_token_id=[])[0, ids.shape[1]:].tolist()
    texts = [llm.tokenizer.decode(new[:i + 1]) for i in range(len(new))]
    for i in range(len(new) - 1):
        a, b = texts[i], texts[i + 1]
        if a and len(b) > len(a) and "\ufffd" not in b and b.find(a[-1] + b[len(a)]) == len(a) - 1:
            return a[-1] + b[len(a)], a[:-1], i + 2
    pytest.fail(f"no usable token boundary in {texts[-1]!r}")


@pytest.mark.parametrize("prompt", ["hello", "the lazy dog"])
def test_stop_string_spanning_two_tokens_ends_generation(llm, prompt):
    stop, before, tokens = _stop_across_tokens(llm, prompt)
    ids = llm.tokenizer(prompt)["input_ids"]
    out = gencycle.generate(llm.model, ids, max_new_tokens=24, eos_token_id=[], stop=[stop], tokenizer=llm.tokenizer)
    assert out.shape[1] == ids.shape[1] + tokens            # ended on the token completing the stop string
    assert llm.generate(prompt, eos_token_id=[], stop=[stop]) == before
    deltas = list(llm.stream(prompt, eos_token_id=[], stop=[stop]))
    assert "".join(deltas) == before and not any(stop in d for d in deltas)


@pytest.mark.parametrize("overrides", [{}, {"do_sample": True, "temperature": 1.5, "seed": 3},
                                       {"do_sample": True, "top_p": 0.9, "seed": 5, "stop": ["o", "e "]},
                                       {"repetition_penalty": 1.4, "stop": "the"}])
def test_streaming_gives_the_same_text(llm, overrides):
    for prompt in ["hello", "all that glitters"]:
        assert "".join(llm.stream(prompt, **overrides)) == llm.generate(prompt, **overrides)
    messages = [{"role": "user", "content": "hi"}]
    assert "".join(llm.stream_chat(messages, **overrides)) == llm.chat(messages, **overrides)


def test_model_stream_and_its_limits(llm):
    ids = llm.tokenizer("hello")["input_ids"]
    text = "".join(gencycle.stream(llm.model, ids, llm.tokenizer, max_new_tokens=6, eos_token_id=[]))
    out = gencycle.generate(llm.model, ids, max_new_tokens=6, eos_token_id=[])
    assert text == llm.tokenizer.decode(out[0, ids.shape[1]:])
    with pytest.raises(ValueError, match="streaming generates one sequence"):
        gencycle.stream(llm.model, ids, llm.tokenizer, num_beams=2)   # refused at the call, before any work


def test_streamer_holds_back_possible_stop_strings_and_partial_characters(llm):
    tok = llm.tokenizer
    streamer = TextStreamer(tok, stop=["STOP"])
    assert streamer.put(tok.encode("hello ST")) == "hello "   # "ST" might begin "STOP"
    assert streamer.put(tok.encode("ar")) == "STar"
    assert streamer.put(tok.encode(" ST")) == " " and streamer.put(tok.encode("OP and more")) == ""
    assert streamer.stopped and streamer.text == "hello STar " and streamer.end() == ""
    accented = tok.encode("é")                                   # two byte tokens: not in the training text
    assert len(accented) == 2
    streamer = TextStreamer(tok)
    assert streamer.put(accented[0]) == "" and streamer.put(accented[1]) == "é" and streamer.end() == ""


def test_encoder_decoder_through_llm(tmp_path, llm):
    """T5: the prompt goes to the encoder (run once); the completion is the decoder's text."""
    torch.manual_seed(1)
    t5 = hf.T5ForConditionalGeneration(hf.T5Config(
        vocab_size=llm.tokenizer.vocab_size, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=2))
    with torch.no_grad():
        for param in t5.parameters():
            param.add_(torch.randn_like(param) * 0.3)
    t5.eval().save_pretrained(tmp_path)
    llm.tokenizer.save_pretrained(tmp_path)
    seq2seq = LLM.load(tmp_path, device="cpu")
    prompts, batch = ["the quick brown fox", "hello"], llm.tokenizer(["the quick brown fox", "hello"])
    for options in ({"no_repeat_ngram_size": 1}, {"num_beams": 3, "no_repeat_ngram_size": 2}):
        out = t5.generate(**batch, max_new_tokens=8, do_sample=False, **options)
        expected = [llm.tokenizer.decode(cut_at_eos(row[1:].tolist(), [2]), skip_special_tokens=True) for row in out]
        assert seq2seq.generate(prompts, max_new_tokens=8, **options) == expected and all(expected)
    assert "".join(seq2seq.stream(prompts[0], max_new_tokens=8, no_repeat_ngram_size=1)) == \
        seq2seq.generate(prompts[0], max_new_tokens=8, no_repeat_ngram_size=1)


def test_cli_generate_and_chat(folder, llm, capsys, monkeypatch):
    assert main(["generate", str(folder), "hello", "--raw", "--max-new-tokens", "8"]) == 0
    assert capsys.readouterr().out == llm.generate("hello", max_new_tokens=8) + "\n"
    assert main(["generate", str(folder), "hello", "--max-new-tokens", "8"]) == 0   # chat template by default
    assert capsys.readouterr().out == llm.chat([{"role": "user", "content": "hello"}], max_new_tokens=8) + "\n"
    assert main(["generate", str(folder), "hello", "--num-beams", "3", "--num-return-sequences", "2",
                 "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out.startswith("[1] ")
    assert main(["generate", str(folder), "hello", "--top-p", "1.5"]) == 2
    assert "argument --top-p: must be a number in (0, 1]" in capsys.readouterr().err  # the flag, not the field

    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("hello\nhow are you\n/reset\nhello\n/exit\n"))
    assert main(["chat", str(folder), "--max-new-tokens", "6"]) == 0
    out = capsys.readouterr().out
    first = llm.chat([{"role": "user", "content": "hello"}], max_new_tokens=6)
    second = llm.chat([{"role": "user", "content": "hello"}, {"role": "assistant", "content": first},
                       {"role": "user", "content": "how are you"}], max_new_tokens=6)
    assert out.count(f"assistant> {first}\n") == 2 and f"assistant> {second}\n" in out   # /reset forgot the history


@pytest.mark.skipif(not has_cpp_compiler(), reason="needs a C++ compiler")
def test_cli_compile_streams_the_same_text(folder, llm, capsys):
    """--compile: the chat answer, streamed through compiled decoding steps, equals the eager one."""
    assert main(["generate", str(folder), "hello", "--max-new-tokens", "8", "--compile"]) == 0
    assert capsys.readouterr().out == llm.chat([{"role": "user", "content": "hello"}], max_new_tokens=8) + "\n"


@pytest.mark.slow
def test_cli_answers_the_capital_question_with_paris(capsys):
    assert main(["generate", "smollm2-135m-instruct", "What is the capital of France?", "--max-new-tokens", "30"]) == 0
    assert "Paris" in capsys.readouterr().out


def test_tokenizer_round_trip_used_here(folder):
    assert load_tokenizer(folder).chat_template == CHATML and gencycle.load_tokenizer(folder).eos_token_id == 2
