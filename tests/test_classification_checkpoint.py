"""Sequence-classification folders: gencycle writes what transformers' *ForSequenceClassification
loads with the same logits, and reads transformers' folders back (untied Llama without lm_head too);
gencycle's own layout (mean pooling, T5 encoder) loads back and never passes for transformers'."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

import gencycle
from gencycle.checkpoints import FAMILIES
from gencycle.checkpoints.classification import encoder_only, load_classifier, save_classifier
from gencycle.model.heads import SequenceClassifier

hf = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")

V, PAD, TOL = 64, 0, 1e-4


def hf_config(family: str, tied: bool = True, num_labels: int = 3):
    common = dict(vocab_size=V, pad_token_id=PAD, num_labels=num_labels)
    if family in ("llama", "qwen2"):
        cls = hf.LlamaConfig if family == "llama" else hf.Qwen2Config
        return cls(**common, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                   intermediate_size=64, max_position_embeddings=64, tie_word_embeddings=tied)
    if family == "gpt2":
        return hf.GPT2Config(**common, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    if family == "t5":
        return hf.T5Config(**common, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                           feed_forward_proj="gated-gelu", tie_word_embeddings=False)
    return hf.BertConfig(**common, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=64)


def our_backbone(family: str, tied: bool = True) -> gencycle.Transformer:
    """A gencycle model of the family, with random weights (norms and biases perturbed too)."""
    config = FAMILIES[family].config_from_hf(hf_config(family, tied).to_dict())
    model = gencycle.Transformer(config)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return model.eval()


def batch(rows: int = 3, length: int = 9):
    """Right-padded ids (the layout transformers' default positions agree with)."""
    ids = torch.randint(1, V, (rows, length))
    mask = torch.ones_like(ids)
    mask[1, 6:], mask[2, 3:] = 0, 0
    return ids.masked_fill(mask == 0, PAD), mask


def hf_load(folder):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return hf.AutoModelForSequenceClassification.from_pretrained(folder, output_loading_info=True)


CASES = [("llama", True), ("llama", False), ("qwen2", True), ("gpt2", True), ("bert", True)]


@pytest.mark.parametrize("family,tied", CASES)
def test_saved_classifier_loads_in_transformers_with_equal_logits(family, tied, tmp_path):
    ours = SequenceClassifier(our_backbone(family, tied), 3).eval()
    with torch.no_grad():
        for param in ours.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    save_classifier(ours, tmp_path, id2label={0: "neg", 1: "neutral", 2: "pos"}, pad_token_id=PAD)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["architectures"][0].endswith("ForSequenceClassification")
    assert written["id2label"] == {"0": "neg", "1": "neutral", "2": "pos"} and written["pad_token_id"] == PAD
    ref, info = hf_load(tmp_path)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert ref.config.id2label == {0: "neg", 1: "neutral", 2: "pos"}
    ids, mask = batch()
    with torch.no_grad():
        expected = ref.eval()(input_ids=ids, attention_mask=mask).logits
        got = ours(ids, mask).logits
        back = load_classifier(tmp_path, device="cpu")(ids, mask).logits
    assert (got - expected).abs().max() < TOL
    assert torch.equal(back, got)


@pytest.mark.parametrize("family,tied", CASES)
def test_transformers_classification_folders_load(family, tied, tmp_path):
    cls = {"llama": hf.LlamaForSequenceClassification, "qwen2": hf.Qwen2ForSequenceClassification,
           "gpt2": hf.GPT2ForSequenceClassification, "bert": hf.BertForSequenceClassification}[family]
    ref = cls(hf_config(family, tied))
    with torch.no_grad():
        for param in ref.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    ref.eval().save_pretrained(tmp_path)
    ours = load_classifier(tmp_path, device="cpu")
    assert ours.id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}
    if not tied:  # transformers writes no lm_head; the backbone has none
        assert ours.backbone.lm_head is None
    ids, mask = batch()
    with torch.no_grad():
        assert (ours(ids, mask).logits - ref(input_ids=ids, attention_mask=mask).logits).abs().max() < TOL


@pytest.mark.parametrize("family,pooling", [("bert", "mean"), ("bert", "cls"), ("llama", "mean"), ("t5", "mean")])
def test_gencycle_layout_round_trips_and_never_passes_for_transformers(family, pooling, tmp_path):
    backbone = encoder_only(our_backbone(family)) if family == "t5" else our_backbone(family)
    ours = SequenceClassifier(backbone, 2, pooling=pooling).eval()
    save_classifier(ours, tmp_path, pad_token_id=PAD)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["architectures"] == ["GencycleSequenceClassifier"]
    assert written["gencycle_classifier"]["pooling"] == pooling
    ids, mask = batch()
    with torch.no_grad():
        got = ours(ids, mask).logits
        back = load_classifier(tmp_path, device="cpu")
        assert torch.equal(back(ids, mask).logits, got) and back.pooling == pooling
    if family != "t5":
        _, info = hf_load(tmp_path)  # transformers' class finds no head of its own: it says so
        assert {"score.weight", "classifier.weight"} & set(info["missing_keys"])
    # the backbone is in the HF layout: transformers' base model + the head by hand give the logits
    base_cls = {"bert": hf.BertModel, "llama": hf.LlamaModel, "t5": hf.T5EncoderModel}[family]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = base_cls.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        hidden = base(input_ids=ids, attention_mask=mask).last_hidden_state
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True) if pooling == "mean" else hidden[:, 0]
        assert (pooled @ ours.score.weight.T - got).abs().max() < TOL


def test_t5_encoder_classifier_reads_the_encoder_only():
    model = our_backbone("t5")
    encoder = encoder_only(model)
    assert encoder.config.architecture == "encoder" and encoder.decoder is None and encoder.lm_head is None
    assert encoder.embed_tokens is model.embed_tokens  # shared, not copied
    ids, mask = batch()
    with torch.no_grad():
        assert torch.equal(encoder(ids, mask).hidden_states, model.encode(ids, mask)[0])


def test_a_folder_without_a_classification_head_is_refused(tmp_path):
    gencycle.save_pretrained(our_backbone("llama"), tmp_path / "lm")
    with pytest.raises(ValueError, match="has no classification head: its config.json names architectures "
                                         r"\['LlamaForCausalLM'\]"):
        load_classifier(tmp_path / "lm")
    ours = SequenceClassifier(our_backbone("llama"), 1)
    save_classifier(ours, tmp_path / "rm", pad_token_id=PAD)
    from safetensors.torch import load_file, save_file
    state = load_file(tmp_path / "rm" / "model.safetensors")
    del state["score.weight"]
    save_file(state, tmp_path / "rm" / "model.safetensors")
    with pytest.raises(ValueError, match="has no classification head: its weights hold no"):
        load_classifier(tmp_path / "rm")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_classifier(tmp_path)


def test_bad_saves_are_refused(tmp_path):
    ours = SequenceClassifier(our_backbone("llama"), 2)
    ours.backbone.config.pad_token_id = None
    with pytest.raises(ValueError, match="needs a pad_token_id"):
        save_classifier(ours, tmp_path)
    with pytest.raises(ValueError, match="id2label must name labels 0..1"):
        save_classifier(ours, tmp_path, id2label={0: "a", 2: "b"}, pad_token_id=PAD)
    from gencycle.adapters import apply_lora
    apply_lora(ours, rank=2, target_modules=["q_proj"])
    with pytest.raises(ValueError, match="LoRA adapters"):
        save_classifier(ours, tmp_path, pad_token_id=PAD)
