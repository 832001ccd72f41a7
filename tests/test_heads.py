"""Heads: sequence classification against transformers' *ForSequenceClassification (Llama, Qwen2,
GPT-2, BERT) on tiny random models built here, padded on the right and on the left; the value head."""

from __future__ import annotations

import pytest
import torch

import gencycle
from gencycle.checkpoints import hf_state_dict
from gencycle.model.heads import SequenceClassifier, ValueHead, last_token_index, pool

hf = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")

V, PAD, LABELS, TOL = 64, 0, 3, 1e-4
FAMILIES = ["llama", "qwen2", "gpt2", "bert"]


def hf_classifier(family: str, num_labels: int = LABELS):
    common = dict(vocab_size=V, pad_token_id=PAD, num_labels=num_labels)
    if family == "llama":
        config = hf.LlamaConfig(**common, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64,
                                tie_word_embeddings=True)
        return hf.LlamaForSequenceClassification(config)
    if family == "qwen2":
        config = hf.Qwen2Config(**common, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64,
                                tie_word_embeddings=True)
        return hf.Qwen2ForSequenceClassification(config)
    if family == "gpt2":
        config = hf.GPT2Config(**common, n_embd=32, n_layer=2, n_head=4, n_positions=64)
        return hf.GPT2ForSequenceClassification(config)
    config = hf.BertConfig(**common, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64, max_position_embeddings=64)
    return hf.BertForSequenceClassification(config)


def head_names(family: str) -> list[str]:
    return ["classifier.weight", "classifier.bias"] if family == "bert" else ["score.weight"]


def reference_and_ours(family: str, folder, num_labels: int = LABELS):
    """The HF classifier, saved; ours: its backbone through gencycle's loader, the head copied by hand."""
    ref = hf_classifier(family, num_labels)
    with torch.no_grad():  # make norms and biases non-trivial, so a missed weight shows
        for param in ref.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    ref.eval().save_pretrained(folder)
    with pytest.warns(UserWarning, match="ignored .* unknown tensor"):  # the head: not the backbone's
        backbone = gencycle.load_model(folder, device="cpu")
    ours = SequenceClassifier(backbone, num_labels).eval()
    reference = dict(ref.named_parameters())
    with torch.no_grad():
        for name in head_names(family):
            ours.get_parameter(name).copy_(reference[name])
    return ref, ours


def padded_batch(side: str):
    ids = torch.randint(1, V, (3, 9))
    mask = torch.ones_like(ids)
    if side == "right":
        mask[1, 6:], mask[2, 3:] = 0, 0
    else:
        mask[1, :3], mask[2, :6] = 0, 0
    return ids.masked_fill(mask == 0, PAD), mask


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("family", FAMILIES)
def test_classification_logits_match_transformers(family, side, tmp_path):
    ref, ours = reference_and_ours(family, tmp_path)
    ids, mask = padded_batch(side)
    extra = {} if family == "bert" else {"position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}  # HF generate's
    with torch.no_grad():
        r = ref(input_ids=ids, attention_mask=mask, **extra).logits
        o = ours(ids, mask).logits
    assert o.shape == r.shape == (3, LABELS)
    assert (o - r).abs().max() < TOL


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_without_a_mask_the_last_token_is_found_by_pad_id_like_transformers(family, tmp_path):
    ref, ours = reference_and_ours(family, tmp_path)
    ids, _ = padded_batch("right")
    with torch.no_grad():
        assert (ours(ids).logits - ref(input_ids=ids).logits).abs().max() < TOL


@pytest.mark.parametrize("family", FAMILIES)
def test_names_map_to_the_hf_layout(family, tmp_path):
    """Head names are HF's; the backbone's are the family's table under `backbone.`."""
    ref, ours = reference_and_ours(family, tmp_path)
    prefix = ref.base_model_prefix + "."
    ref_names = set(ref.state_dict())
    ours_names = set(ours.state_dict())
    assert ref_names - {n for n in ref_names if n.startswith(prefix)} == set(head_names(family))
    assert ours_names - {n for n in ours_names if n.startswith("backbone.")} == set(head_names(family))
    backbone = {n if n.startswith(prefix) else prefix + n for n in hf_state_dict(ours.backbone)}
    assert backbone - {prefix + "lm_head.weight"} == {n for n in ref_names if n.startswith(prefix)}


def test_last_token_index_both_paddings():
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert last_token_index(mask, None, 5).tolist() == [2, 4, 4]
    ids = torch.tensor([[5, 6, 0, 0], [0, 7, 8, 9]])
    assert last_token_index(None, ids, 4, pad_token_id=0).tolist() == [1, 3]
    assert last_token_index(None, ids, 4).tolist() == [3]


def test_mean_and_cls_pooling():
    hidden = torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1]])
    pooled = pool(hidden, "mean", mask)
    assert torch.allclose(pooled[0], hidden[0, :2].mean(0)) and torch.allclose(pooled[1], hidden[1, 1:].mean(0))
    assert torch.equal(pool(hidden, "cls", mask), hidden[:, 0])
    model = SequenceClassifier(gencycle.Transformer(gencycle.preset("tiny-llama")), 2, pooling="mean")
    assert model(torch.randint(0, 512, (2, 4)), mask).logits.shape == (2, 2)


def test_bad_head_settings_have_clear_errors():
    backbone = gencycle.Transformer(gencycle.preset("tiny-llama"))
    with pytest.raises(ValueError, match="pooler"):
        SequenceClassifier(backbone, 2, pooling="pooler")
    with pytest.raises(ValueError, match="unknown pooling"):
        SequenceClassifier(backbone, 2, pooling="max")
    with pytest.raises(ValueError, match="num_labels"):
        SequenceClassifier(backbone, 0)
    with pytest.raises(ValueError, match="one-label"):
        ValueHead.from_classifier(SequenceClassifier(backbone, 2))


def test_value_head_per_token_values(tmp_path):
    """The critic: a one-label score on every position (what TRL's PPO reads from a reward model)."""
    ref, reward_model = reference_and_ours("llama", tmp_path, num_labels=1)
    critic = ValueHead.from_classifier(reward_model)
    ids, mask = padded_batch("left")
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        expected = ref.score(ref.model(input_ids=ids, attention_mask=mask, position_ids=positions)
                             .last_hidden_state).squeeze(-1)
        out = critic(ids, mask)
        both = critic(ids, mask, lm_logits=True)
        lm = reward_model.backbone(ids, mask).logits
    assert out.values.shape == (3, 9) and out.logits is None
    assert (out.values - expected)[mask.bool()].abs().max() < TOL
    assert torch.equal(both.values, out.values) and torch.allclose(both.logits, lm)
    # the reward model's last-token score is the critic's value there
    assert torch.allclose(reward_model(ids, mask).logits[:, 0], out.values[:, -1], atol=TOL)

    critic.train()
    critic(ids, mask).values[mask.bool()].sum().backward()
    assert critic.score.weight.grad is not None and reward_model.score.weight.grad is None  # copied, not shared
    with torch.no_grad():
        critic.score.weight.add_(1.0)
    assert not torch.equal(critic.score.weight, reward_model.score.weight)


def test_value_head_on_a_fresh_backbone_trains():
    critic = ValueHead(gencycle.Transformer(gencycle.preset("tiny-llama", num_layers=1)))
    ids = torch.randint(0, 512, (2, 6))
    target = torch.randn(2, 6)
    optimizer = torch.optim.AdamW(critic.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        loss = (critic(ids).values - target).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]  # fits the targets
