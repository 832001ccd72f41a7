"""LoRA: parity with peft both ways (Llama, T5, GPT-2), merge, freezing, training, the `merge` command."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch import nn

import gencycle
from gencycle.adapters import (LoRALinear, apply_lora, load_adapter, lora_layers, merge_lora, save_adapter,
                               trainable_parameters, unmerge_lora)

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

V = 128


# ------------------------------------------------------------------ tiny models, built here
def hf_tiny(family: str):
    torch.manual_seed(0)
    if family == "llama":
        config = transformers.LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
        return transformers.LlamaForCausalLM(config).eval()
    if family == "t5":
        config = transformers.T5Config(vocab_size=V, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                       feed_forward_proj="gated-gelu", decoder_start_token_id=0, dropout_rate=0.0)
        return transformers.T5ForConditionalGeneration(config).eval()
    config = transformers.GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=128,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return transformers.GPT2LMHeadModel(config).eval()


@pytest.fixture(scope="module", params=["llama", "t5", "gpt2"])
def base(request, tmp_path_factory):
    """(family, folder) of a tiny random HF model saved with save_pretrained."""
    folder = tmp_path_factory.mktemp(request.param)
    hf_tiny(request.param).save_pretrained(folder)
    return request.param, folder


def hf_load(family, folder):
    cls = {"llama": transformers.LlamaForCausalLM, "t5": transformers.T5ForConditionalGeneration,
           "gpt2": transformers.GPT2LMHeadModel}[family]
    return cls.from_pretrained(folder).eval()


def inputs(family):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, V, (2, 9), generator=g)
    return {"input_ids": ids, "decoder_input_ids": torch.randint(0, V, (2, 5), generator=g)} if family == "t5" \
        else {"input_ids": ids}


def ours_logits(model, family):
    x = inputs(family)
    with torch.no_grad():
        if family == "t5":
            return model(x["input_ids"], decoder_input_ids=x["decoder_input_ids"]).logits
        return model(x["input_ids"]).logits


def hf_logits(model, family):
    with torch.no_grad():
        return model(**inputs(family)).logits


def randomize_lora_B(model: nn.Module, seed: int = 0) -> None:
    """Fresh adapters are the identity (B = 0); give B values so that parity tests mean something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


TARGETS = {"llama": [("q_proj", "v_proj"), "all-linear"], "t5": [("q", "v"), "attention"],
           "gpt2": [("q_proj", "v_proj"), ("q_proj", "k_proj", "v_proj", "o_proj", "up_proj")]}


# ------------------------------------------------------------------ parity with peft, both ways
@pytest.mark.parametrize("which", [0, 1])
def test_gencycle_adapter_loads_in_peft(base, which, tmp_path):
    family, folder = base
    model = gencycle.load_model(folder, device="cpu")
    apply_lora(model, rank=4, alpha=8, target_modules=TARGETS[family][which])
    randomize_lora_B(model)
    save_adapter(model, tmp_path / "adapter", base_model_name_or_path=str(folder))
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["lora_alpha"] == 8
    if family != "gpt2":  # GPT-2's q/k/v adapters are fused into one c_attn adapter of rank 4 x (q, k, v)
        assert config["r"] == 4
    assert config["task_type"] == ("SEQ_2_SEQ_LM" if family == "t5" else "CAUSAL_LM")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = peft.PeftModel.from_pretrained(hf_load(family, folder), tmp_path / "adapter").eval()
    torch.testing.assert_close(ours_logits(model, family), hf_logits(reference, family), atol=1e-4, rtol=0)
    # the adapter is not a no-op
    assert (hf_logits(reference, family) - hf_logits(hf_load(family, folder), family)).abs().max() > 1e-2


def test_peft_names_match_peft(tmp_path):
    """Key names and target_modules are those peft itself writes."""
    folder = tmp_path / "base"
    hf = hf_tiny("llama")
    hf.save_pretrained(folder)
    ref = peft.get_peft_model(hf, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    ref.save_pretrained(tmp_path / "peft")
    model = apply_lora(gencycle.load_model(folder, device="cpu"), rank=4, alpha=8)
    save_adapter(model, tmp_path / "ours")
    from safetensors.torch import load_file
    assert sorted(load_file(tmp_path / "ours" / "adapter_model.safetensors")) == \
        sorted(load_file(tmp_path / "peft" / "adapter_model.safetensors"))
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in \
        load_file(tmp_path / "ours" / "adapter_model.safetensors")
    ours = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    theirs = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert sorted(ours["target_modules"]) == sorted(theirs["target_modules"])


PEFT_CONFIGS = {
    "llama": [dict(target_modules=["q_proj", "v_proj"]),
              dict(target_modules=["q_proj", "k_proj", "o_proj", "down_proj"], use_rslora=True,
                   rank_pattern={"o_proj": 2}, alpha_pattern={"down_proj": 3})],
    "t5": [dict(target_modules=["q", "v"]), dict(target_modules=["k", "o", "wi_0", "wo"])],
    "gpt2": [dict(target_modules=["c_attn"]), dict(target_modules=["c_attn", "c_proj", "c_fc"])],
}


@pytest.mark.parametrize("which", [0, 1])
def test_peft_adapter_loads_in_gencycle(base, which, tmp_path):
    family, folder = base
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = peft.get_peft_model(hf_load(family, folder),
                                        peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1,
                                                        **PEFT_CONFIGS[family][which])).eval()
    randomize_lora_B(reference, seed=3)
    reference.save_pretrained(tmp_path / "adapter")

    model = load_adapter(gencycle.load_model(folder, device="cpu"), tmp_path / "adapter")
    assert lora_layers(model)
    torch.testing.assert_close(ours_logits(model, family), hf_logits(reference, family), atol=1e-4, rtol=0)


def test_bert_both_ways(tmp_path):
    """Encoder-only BertModel (no `bert.` prefix in its names): hidden states match peft both ways."""
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64)
    transformers.BertModel(config).eval().save_pretrained(tmp_path / "bert")
    ids = inputs("bert")["input_ids"]
    model = apply_lora(gencycle.load_model(tmp_path / "bert", device="cpu"), rank=4, alpha=8,
                       target_modules=("query", "value", "dense"))
    randomize_lora_B(model)
    save_adapter(model, tmp_path / "ours")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = peft.PeftModel.from_pretrained(transformers.BertModel.from_pretrained(tmp_path / "bert"),
                                                   tmp_path / "ours").eval()
        with torch.no_grad():
            torch.testing.assert_close(model(ids).hidden_states, reference(input_ids=ids).last_hidden_state,
                                       atol=1e-4, rtol=0)
        theirs = peft.get_peft_model(transformers.BertModel.from_pretrained(tmp_path / "bert"),
                                     peft.LoraConfig(r=4, target_modules=["key", "dense"])).eval()
    randomize_lora_B(theirs, seed=2)
    theirs.save_pretrained(tmp_path / "theirs")
    loaded = load_adapter(gencycle.load_model(tmp_path / "bert", device="cpu"), tmp_path / "theirs")
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).hidden_states, theirs(input_ids=ids).last_hidden_state,
                                   atol=1e-4, rtol=0)


def test_round_trip_keeps_patterns_and_regex_targets(tmp_path):
    """peft adapter with per-module rank / alpha -> gencycle -> saved again -> peft: same logits.
    An adapter on some layers only is written with a regex target_modules."""
    folder = tmp_path / "base"
    hf_tiny("llama").save_pretrained(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.get_peft_model(hf_load("llama", folder), peft.LoraConfig(
            r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"], rank_pattern={"v_proj": 2},
            alpha_pattern={"up_proj": 5})).eval()
    randomize_lora_B(theirs, seed=7)
    theirs.save_pretrained(tmp_path / "theirs")
    model = load_adapter(gencycle.load_model(folder, device="cpu"), tmp_path / "theirs")
    save_adapter(model, tmp_path / "ours")
    config = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    assert set(config["rank_pattern"].values()) == {2} and set(config["alpha_pattern"].values()) == {5}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = peft.PeftModel.from_pretrained(hf_load("llama", folder), tmp_path / "ours").eval()
    torch.testing.assert_close(hf_logits(again, "llama"), hf_logits(theirs, "llama"), atol=1e-5, rtol=0)

    model = apply_lora(gencycle.load_model(folder, device="cpu"), rank=4, target_modules=r"decoder\.layers\.1\..*_proj")
    randomize_lora_B(model)
    save_adapter(model, tmp_path / "regex")
    assert isinstance(json.loads((tmp_path / "regex" / "adapter_config.json").read_text())["target_modules"], str)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = peft.PeftModel.from_pretrained(hf_load("llama", folder), tmp_path / "regex").eval()
    assert sum(isinstance(m, peft.tuners.lora.LoraLayer) for m in reference.modules()) == 7
    torch.testing.assert_close(ours_logits(model, "llama"), hf_logits(reference, "llama"), atol=1e-4, rtol=0)


# ------------------------------------------------------------------ merge
def test_merged_equals_unmerged(base):
    family, folder = base
    model = gencycle.load_model(folder, device="cpu")
    apply_lora(model, rank=4, alpha=8, target_modules="all-linear" if family == "llama" else ("q_proj", "v_proj"))
    randomize_lora_B(model)
    before = ours_logits(model, family)
    merge_lora(model)
    assert all(layer.merged for layer in lora_layers(model).values())
    torch.testing.assert_close(ours_logits(model, family), before, atol=1e-5, rtol=0)
    unmerge_lora(model)
    torch.testing.assert_close(ours_logits(model, family), before, atol=1e-5, rtol=0)
    merge_lora(model, unload=True)
    assert not lora_layers(model) and not any(isinstance(m, LoRALinear) for m in model.modules())
    torch.testing.assert_close(ours_logits(model, family), before, atol=1e-5, rtol=0)


def test_merge_command_writes_hf_model(tmp_path):
    """`gencycle merge MODEL ADAPTER --out DIR` = peft's merge_and_unload, loadable by transformers."""
    folder = tmp_path / "base"
    hf_tiny("llama").save_pretrained(folder)
    model = apply_lora(gencycle.load_model(folder, device="cpu"), rank=4, alpha=8, target_modules="all-linear")
    randomize_lora_B(model)
    save_adapter(model, tmp_path / "adapter")
    from gencycle.cli import main
    assert main(["merge", str(folder), str(tmp_path / "adapter"), "--out", str(tmp_path / "merged")]) == 0
    merged = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "merged").eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = peft.PeftModel.from_pretrained(hf_load("llama", folder), tmp_path / "adapter").eval()
    torch.testing.assert_close(hf_logits(merged, "llama"), hf_logits(reference, "llama"), atol=1e-4, rtol=0)
    assert main(["merge", str(folder), str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2


# ------------------------------------------------------------------ training
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matrices: one thread is fastest


def copy_task(n: int, seed: int, length: int = 12):
    """Sequences whose second half repeats the first: the model must learn to copy (induction)."""
    g = torch.Generator().manual_seed(seed)
    half = torch.randint(3, 32, (n, length // 2), generator=g)
    return torch.cat([half, half], dim=1)


def lm_loss(model, ids, skip: int = 0):
    """Next-token cross-entropy, ignoring the first `skip` predictions."""
    logits = model(ids[:, :-1]).logits[:, skip:]
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1 + skip:].reshape(-1))


def tiny_decoder():
    """A random tiny Llama with an untied output head of realistic scale (std 0.1): with the tiny
    tied embeddings of a fresh model no frozen head could give confident predictions."""
    torch.manual_seed(0)
    model = gencycle.Transformer(gencycle.preset("tiny-llama", vocab_size=32, num_layers=2, tie_embeddings=False))
    nn.init.normal_(model.lm_head.weight, std=0.1)
    return model


def train(model, loss_fn, steps: int, lr: float) -> None:
    """A plain AdamW loop over the trainable parameters, gradients clipped at 1."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)
    model.train()
    for step in range(steps):
        loss_fn(step).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def test_only_lora_parameters_change(base):
    family, folder = base
    if family == "t5":
        pytest.skip("covered by the decoder families; the T5 path is the same module swap")
    model = apply_lora(gencycle.load_model(folder, device="cpu"), rank=4, alpha=8, target_modules="all-linear"
                       if family == "llama" else ("q_proj", "v_proj"), dropout=0.1)
    trainable, total = trainable_parameters(model)
    assert 0 < trainable < 0.2 * total
    assert all(("lora_A" in n or "lora_B" in n) == p.requires_grad for n, p in model.named_parameters())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train(model, lambda step: lm_loss(model, copy_task(8, step)), steps=3, lr=1e-2)
    for name, p in model.named_parameters():
        changed = not torch.equal(before[name], p.detach())
        assert changed == ("lora_A" in name or "lora_B" in name), name


def test_lora_fine_tuning_lowers_loss_decoder():
    """Tiny random Llama, LoRA on every Linear, learns to copy: eval loss on the copied half from ~3.8 to < 1.0."""
    model = apply_lora(tiny_decoder(), rank=8, alpha=16, target_modules="all-linear")
    eval_ids = copy_task(64, seed=999)
    with torch.no_grad():
        start = lm_loss(model.eval(), eval_ids, skip=5).item()
    train(model, lambda step: lm_loss(model, copy_task(32, step), skip=5), steps=120, lr=2e-2)
    with torch.no_grad():
        end = lm_loss(model, eval_ids, skip=5).item()
    assert start > 3.0 and end < 1.0, (start, end)


def test_lora_fine_tuning_lowers_loss_t5(tmp_path):
    """Tiny random T5, LoRA on every Linear, learns a fixed token -> token map (src [a, b] -> [f(a), f(b), eos]):
    eval loss from ~5.3 to < 1.6 (knowing only the output tokens' marginal gives ln 17 = 2.8)."""
    hf_tiny("t5").save_pretrained(tmp_path)
    model = apply_lora(gencycle.load_model(tmp_path, device="cpu"), rank=8, alpha=16, target_modules="all-linear")
    f = torch.randperm(17, generator=torch.Generator().manual_seed(5)) + 3

    def loss(seed, n=32):
        src = torch.randint(3, 20, (n, 2), generator=torch.Generator().manual_seed(seed))
        target = torch.cat([f[src - 3], torch.ones(n, 1, dtype=torch.long)], dim=1)
        decoder_input = torch.cat([torch.zeros(n, 1, dtype=torch.long), target[:, :-1]], dim=1)
        logits = model(src, decoder_input_ids=decoder_input).logits
        return nn.functional.cross_entropy(logits.reshape(-1, V), target.reshape(-1))

    with torch.no_grad():
        start = loss(999, 64).item()
    train(model, loss, steps=150, lr=8e-3)
    with torch.no_grad():
        end = loss(999, 64).item()
    assert start > 3.0 and end < 1.6, (start, end)


def copy_examples(n: int, seed: int):
    """The copy task as instruction data: the first half is the prompt (labels -100), the second the answer."""
    from gencycle.training import IGNORE_INDEX, Example
    return [Example(row.tolist(), [IGNORE_INDEX] * 6 + row[6:].tolist()) for row in copy_task(n, seed)]


def test_lora_with_the_shared_trainer(tmp_path):
    """The same task through gencycle.training.Trainer: eval loss < 1.0; the saved adapter reloads exactly."""
    training = pytest.importorskip("gencycle.training")
    model = apply_lora(tiny_decoder(), rank=8, alpha=16, target_modules="all-linear")
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    config = training.TrainConfig(max_steps=120, batch_size=32, lr=2e-2, schedule="constant", progress=False,
                                  eval_every=120, seed=0)
    trainer = training.Trainer(model, config, copy_examples(32 * 120, seed=1), eval_data=copy_examples(64, 999),
                               collate_fn=training.Collator(pad_token_id=0))
    history = trainer.train()
    assert history[0]["loss"] > 3.0 and history[-1]["eval_loss"] < 1.0, (history[0]["loss"], history[-1])
    assert all(torch.equal(frozen[n], p) for n, p in model.named_parameters() if n in frozen)

    save_adapter(model, tmp_path / "adapter")
    reloaded = load_adapter(tiny_decoder(), tmp_path / "adapter")  # same seed: same frozen base
    ids = copy_task(4, seed=5)
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(ids).logits, model.eval()(ids).logits, atol=1e-5, rtol=0)


# ------------------------------------------------------------------ bad input
def test_bad_input(tmp_path):
    model = gencycle.Transformer(gencycle.preset("tiny-llama", num_layers=1))
    with pytest.raises(ValueError, match="rank must be a positive integer"):
        apply_lora(model, rank=0)
    with pytest.raises(ValueError, match="rank must be a positive integer"):
        apply_lora(model, rank=-2)
    with pytest.raises(ValueError, match=r"matched no Linear module.*decoder\.layers\.0\.self_attn\.q_proj"):
        apply_lora(model, target_modules=("query_key_value",))
    with pytest.raises(ValueError, match="matched no Linear"):
        apply_lora(model, target_modules=r".*\.nothing")
    with pytest.raises(ValueError, match="neither LoRA adapters nor a soft prompt"):
        save_adapter(model, tmp_path / "a")
    apply_lora(model, rank=2)
    with pytest.raises(ValueError, match="already has LoRA"):
        apply_lora(model, rank=2)
    save_adapter(model, tmp_path / "a")
    config_path = tmp_path / "a" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    fresh = gencycle.Transformer(gencycle.preset("tiny-llama", num_layers=1))

    config_path.write_text(json.dumps({**config, "some_future_option": 1}))  # unknown keys are ignored
    load_adapter(fresh, tmp_path / "a")
    for bad in ({"use_dora": True}, {"bias": "all"}, {"modules_to_save": ["lm_head"]}):
        config_path.write_text(json.dumps({**config, **bad}))
        with pytest.raises(ValueError, match=next(iter(bad))):
            load_adapter(gencycle.Transformer(gencycle.preset("tiny-llama", num_layers=1)), tmp_path / "a")
    config_path.write_text(json.dumps({**config, "peft_type": "IA3"}))
    with pytest.raises(ValueError, match="unsupported peft_type 'IA3'"):
        load_adapter(fresh, tmp_path / "a")
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        load_adapter(fresh, tmp_path / "nowhere")
