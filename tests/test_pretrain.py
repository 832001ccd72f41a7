"""Pretraining from scratch (issue 16, point 3): a tiny run per architecture learns (its validation
loss falls below a stated bound), the model folder is what `transformers` loads, a resumed run is
the straight run exactly, and bad input gets a clear error."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file

from gencycle.cli import main
from gencycle.workflows.pretrain import (
    PRETRAIN_PRESETS, Batches, Block, PretrainConfig, make_blocks, model_config, pretrain,
)
from pretrain_worker import tiny_config, write_corpus

pytestmark = pytest.mark.usefixtures("one_thread")

KIND = {"decoder": "bpe", "encoder": "wordpiece", "encoder-decoder": "unigram"}
VOCAB = 300  # uniform guessing over 300 ids: ln 300 = 5.70 nats per token
# The bounds each tiny run (60 steps of 8 blocks of 64 tokens, lr 3e-3) must reach on held-out
# documents of the synthetic corpus; all three start near 5.1-5.7 nats.
BOUND = {"decoder": 2.2, "encoder": 4.0, "encoder-decoder": 3.4}
RUN = dict(max_steps=60, batch_size=8, block_size=64, eval_every=30, lr=3e-3, warmup_steps=5,
           tokenizer_vocab_size=VOCAB, progress=False)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def configs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("configs")
    return {arch: str(tiny_config(folder, arch)) for arch in KIND}


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory, corpus):
    """One tokenizer per architecture, trained by the workflow itself into an empty folder."""
    from gencycle.data.corpora import load_corpus
    from gencycle.training.tokenizer_training import train_tokenizer_from_texts
    root, train = tmp_path_factory.mktemp("tokenizers"), load_corpus(corpus).split(0.05)[0]
    for arch, kind in KIND.items():
        train_tokenizer_from_texts(train, kind, VOCAB, root / arch, model_max_length=64, show_progress=False)
    return {arch: root / arch for arch in KIND}


@pytest.mark.parametrize("arch", list(KIND))
def test_tiny_run_learns_and_saves_what_transformers_loads(arch, corpus, configs, tmp_path):
    out = tmp_path / "run"
    result = pretrain(corpus, tmp_path / "tokenizer", arch=arch, config=configs[arch], out=out,
                      sample_every=30, sample_tokens=12, **RUN)
    assert result.tokenizer_trained and (tmp_path / "tokenizer" / "tokenizer.json").is_file()
    assert result.eval_loss_before > 5.0
    assert result.eval_loss_after < BOUND[arch], result.summary()
    assert result.perplexity_after == pytest.approx(math.exp(result.eval_loss_after))
    assert [v["step"] for v in result.validation] == [30, 60]
    assert result.tokens_seen == sum(h["tokens"] for h in result.history) > 0
    report = json.loads((out / "report.json").read_text())
    assert report["eval_loss_after"] == pytest.approx(result.eval_loss_after)
    assert (out / "loss_curve.png").stat().st_size > 0 and (out / "metrics.jsonl").is_file()
    if arch == "decoder":  # samples before, every 30 steps, after; each starts with its prompt
        assert len(result.samples_before) == len(result.samples_after) == 2
        assert [h["step"] for h in result.history if "samples" in h] == [30]
        from gencycle.data.corpora import load_corpus
        prompts = load_corpus(corpus).prompts
        assert all(s.startswith(p) and len(s) > len(p) for s, p in zip(result.samples_after, prompts))
    _same_logits_in_transformers(out / "model", result.model, arch)


def _same_logits_in_transformers(folder, model, arch):
    import transformers
    kind = {"decoder": transformers.AutoModelForCausalLM, "encoder": transformers.AutoModelForMaskedLM,
            "encoder-decoder": transformers.T5ForConditionalGeneration}[arch]
    reference = kind.from_pretrained(folder).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:  # GPT-2's byte-level BPE names none
        tokenizer.pad_token = tokenizer.eos_token
    batch = tokenizer(["Emma wrote to the letter at last.", "Anne smiled at her sister."], padding=True,
                      return_tensors="pt")
    extra = {"decoder_input_ids": torch.tensor([[0, 5, 9, 7], [0, 8, 6, 5]])} if arch == "encoder-decoder" else {}
    model.eval()
    with torch.no_grad():
        expected = reference(**batch, **extra).logits
        actual = model(batch["input_ids"], batch["attention_mask"], **extra).logits
    keep = batch["attention_mask"].bool() if arch != "encoder-decoder" else torch.ones(expected.shape[:2], dtype=bool)
    torch.testing.assert_close(actual[keep], expected[keep], atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", list(KIND))
def test_resume_is_the_straight_run(arch, corpus, configs, tokenizers, tmp_path):
    """6 steps straight, checkpoints at 3 and 6; a copy of the run cut back to step 3 and resumed
    reaches the same losses and the same weights."""
    options = dict(arch=arch, config=configs[arch], max_steps=6, batch_size=4, block_size=32, eval_every=3,
                   checkpoint_every=3, sample_every=0, lr=3e-3, progress=False)
    straight = pretrain(corpus, tokenizers[arch], out=tmp_path / "a", **options)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "step-00000006")
    shutil.rmtree(tmp_path / "b" / "model")
    (tmp_path / "b" / "checkpoints" / "latest").write_text("step-00000003\n")
    resumed = pretrain(corpus, tokenizers[arch], out=tmp_path / "b", resume=True, **options)
    assert resumed.eval_loss_before == pytest.approx(straight.history[2]["eval_loss"], abs=1e-6)
    assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in straight.history], abs=1e-6)
    a, b = (load_file(tmp_path / run / "model" / "model.safetensors") for run in ("a", "b"))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-6, rtol=0, msg=name)


def test_masks_depend_on_the_block_and_epoch_only(tokenizers):
    """A block gets the same corruption alone or in any batch (so 2 processes = 1 with the doubled batch),
    another one in the next epoch, and a validation block the same one every time."""
    from gencycle.tokenizer import load_tokenizer
    for arch in ("encoder", "encoder-decoder"):
        tokenizer = load_tokenizer(tokenizers[arch])
        ids = torch.arange(10, 60)
        blocks = [Block(i, ids.roll(i), False) for i in range(4)]
        batches = Batches(arch, tokenizer, seed=0)

        class Epoch:
            epoch = 0
        batches.sampler = Epoch()
        together = batches(blocks)
        alone = batches(blocks[2:3])
        assert torch.equal(together["input_ids"][2:3], alone["input_ids"])
        assert torch.equal(together["labels"][2:3], alone["labels"])
        Epoch.epoch = 1
        assert not torch.equal(batches(blocks[2:3])["labels"], alone["labels"])
        fixed = [Block(0, ids, True)]
        first = batches(fixed)
        Epoch.epoch = 5
        assert torch.equal(batches(fixed)["labels"], first["labels"])


def test_blocks_of_each_architecture(tokenizers):
    from gencycle.tokenizer import load_tokenizer
    documents = [list(range(10, 40)), list(range(40, 90))]
    bpe = load_tokenizer(tokenizers["decoder"])
    rows = make_blocks(documents, "decoder", 16, bpe, fixed=False)
    assert [len(b.input_ids) for b in rows] == [17] * 4  # 30 + 1 + 50 + 1 = 82 ids: 4 rows of 17
    assert rows[1].input_ids[13].item() == bpe.eos_token_id  # the first document ends at id 30 + 1
    wordpiece = load_tokenizer(tokenizers["encoder"])
    rows = make_blocks(documents, "encoder", 16, wordpiece, fixed=False)
    cls, sep = wordpiece.convert_tokens_to_ids(["[CLS]", "[SEP]"])
    assert all(b.input_ids[0] == cls and b.input_ids[-1] == sep and len(b.input_ids) == 16 for b in rows)
    unigram = load_tokenizer(tokenizers["encoder-decoder"])
    rows = make_blocks([list(range(3, 200))], "encoder-decoder", 32, unigram, fixed=False)
    batch = Batches("encoder-decoder", unigram, seed=0)(rows)
    assert batch["input_ids"].shape[1] == 32  # span corruption turns each raw block into 32 encoder ids


def test_presets_build_for_a_tokenizer(tokenizers):
    from gencycle.checkpoints import family_module
    from gencycle.compute import num_parameters
    from gencycle.model import Transformer
    from gencycle.tokenizer import load_tokenizer
    for name, (arch, family, _) in PRETRAIN_PRESETS.items():
        tokenizer = load_tokenizer(tokenizers[arch])
        config = model_config(name, arch, tokenizer)
        assert config.family == family and config.vocab_size == tokenizer.vocab_size
        family_module(config).config_to_hf(config)  # writable in the Hugging Face layout
        with torch.device("meta"):  # shapes only: every preset, the estimator's count equals the model's
            assert Transformer(config).num_parameters() == num_parameters(config)


def _cli(capsys, *args) -> tuple[int, str]:
    code = main(["pretrain", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.err


def test_cli_trains_and_reports(corpus, configs, tokenizers, tmp_path, capsys):
    code = main(["pretrain", "--data", str(corpus), "--tokenizer", str(tokenizers["decoder"]), "--arch", "decoder",
                 "--config", configs["decoder"], "--out", str(tmp_path / "run"), "--max-steps", "3",
                 "--batch-size", "2", "--block-size", "32", "--eval-every", "3", "--sample-every", "0",
                 "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "validation next-token loss" in out and "sample after:" in out
    assert (tmp_path / "run" / "model" / "config.json").is_file()


def test_bad_input_gets_a_clear_error(corpus, configs, tokenizers, tmp_path, capsys):
    tok = tokenizers["decoder"]
    base = ["--tokenizer", tok, "--arch", "decoder", "--config", configs["decoder"], "--out", tmp_path / "r",
            "--max-steps", "1", "--no-progress"]
    empty, binary, latin = tmp_path / "empty.txt", tmp_path / "data.bin", tmp_path / "latin1.txt"
    empty.write_text("  \n")
    binary.write_bytes(b"\x00\x01\x02 weights")
    latin.write_bytes("caf\xe9".encode("latin-1"))
    cases = [
        (["--data", tmp_path / "missing.txt", *base], "does not exist"),
        (["--data", empty, *base], "is empty"),
        (["--data", binary, *base], "not a text file"),
        (["--data", latin, *base], "not UTF-8"),
    ]
    odd = tmp_path / "odd.json"
    odd.write_text(json.dumps(dict(model_type="llama", hidden_size=60, num_hidden_layers=1, num_attention_heads=8,
                                   intermediate_size=64, max_position_embeddings=64)))
    small = tmp_path / "small.json"
    small.write_text(json.dumps(dict(model_type="llama", vocab_size=100, hidden_size=32, num_hidden_layers=1,
                                     num_attention_heads=4, intermediate_size=64, max_position_embeddings=64)))
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps(dict(model_type="gpt2", n_layer=1, n_head=2)))
    data = ["--data", corpus, "--tokenizer", tok, "--out", tmp_path / "r", "--max-steps", "1", "--no-progress",
            "--block-size", "64"]
    cases += [
        ([*data, "--config", odd], "hidden_size 60 is not divisible by num_heads 8"),
        ([*data, "--config", small], f"the tokenizer has {VOCAB} ids, more than the model's embedding table"),
        ([*data, "--config", configs["encoder"]], "is an encoder model, not --arch decoder"),
        ([*data, "--config", "gpt-huge"], "argument --config: is no preset"),
        ([*data, "--config", configs["decoder"], "--block-size", "512"],
         "argument --block-size: 512 is longer than the model's context window"),
        ([*data, "--arch", "encoder", "--config", configs["encoder"]], "needs a tokenizer with [CLS] and [SEP]"),
        ([*data, "--config", tmp_path / "none.json"], "names no preset, and no file"),
        ([*data, "--config", partial], "lacks the field 'n_embd'"),
    ]
    for args, message in cases:
        code, err = _cli(capsys, *args)
        assert code == 2 and message in err, (args, err)
        assert "Traceback" not in err


def test_config_defaults_are_pretraining_ones():
    config = PretrainConfig()
    assert config.arch == "decoder" and config.train.lr == 1e-3 and config.train.betas == (0.9, 0.95)
    with pytest.raises(ValueError, match="arch must be one of decoder, encoder, encoder-decoder"):
        PretrainConfig(arch="rnn")
