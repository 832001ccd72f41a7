"""gencycle vs Hugging Face transformers on tiny random models built here (no download).

Each reference model is saved in the HF layout, loaded through gencycle's own
converter, and compared on a padded batch: logits, per-layer attention weights, and
the round trip back through `save_pretrained`.
"""

import pytest
import torch
import transformers as hf

import gencycle

TOL = 1e-4
V = 96


def _tiny(name):
    if name == "gpt2":
        return hf.GPT2LMHeadModel(hf.GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                                bos_token_id=0, eos_token_id=0))
    if name.startswith("llama"):
        return hf.LlamaForCausalLM(hf.LlamaConfig(
            vocab_size=V, hidden_size=48, num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2,
            intermediate_size=80, max_position_embeddings=64, tie_word_embeddings=name == "llama-tied",
            rope_theta=500.0))
    if name == "qwen2":
        return hf.Qwen2ForCausalLM(hf.Qwen2Config(
            vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=64, max_position_embeddings=64, tie_word_embeddings=True))
    bert = dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                max_position_embeddings=64)
    if name == "bert-mlm":
        return hf.BertForMaskedLM(hf.BertConfig(**bert))
    if name == "bert":
        return hf.BertModel(hf.BertConfig(**bert))
    t5 = dict(vocab_size=V, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
              relative_attention_num_buckets=8, relative_attention_max_distance=20)
    if name == "t5":
        return hf.T5ForConditionalGeneration(hf.T5Config(**t5))
    if name == "t5-v1.1":
        return hf.T5ForConditionalGeneration(hf.T5Config(**t5, num_decoder_layers=3, feed_forward_proj="gated-gelu",
                                                         tie_word_embeddings=False))
    raise KeyError(name)


FAMILIES = ["gpt2", "llama", "llama-tied", "qwen2", "bert-mlm", "bert", "t5", "t5-v1.1"]


def _reference(name, tmp_path):
    model = _tiny(name)
    with torch.no_grad():  # make norms and biases non-trivial, so a missed weight shows
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    model.set_attn_implementation("eager")
    model.eval()
    model.save_pretrained(tmp_path / "hf")
    return model, gencycle.load_model(tmp_path / "hf", device="cpu")


def _batch():
    ids = torch.randint(3, V, (3, 11))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0  # right padding
    mask[2, 5:] = 0
    return ids, mask


def _run_both(name, ref, ours, ids, mask):
    with torch.no_grad():
        if name.startswith("t5"):
            dec = torch.randint(3, V, (3, 6), generator=torch.Generator().manual_seed(1))
            r = ref(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, output_attentions=True)
            o = ours(ids, mask, decoder_input_ids=dec, return_attentions=True)
            return r, o, r.logits, o.logits, torch.ones(dec.shape, dtype=torch.bool)
        r = ref(input_ids=ids, attention_mask=mask, output_attentions=True)
        o = ours(ids, mask, return_attentions=True)
        if name == "bert":
            return r, o, r.last_hidden_state, o.hidden_states, mask.bool()
        return r, o, r.logits, o.logits, mask.bool()


@pytest.mark.parametrize("name", FAMILIES)
def test_logits_match_transformers(name, tmp_path):
    ref, ours = _reference(name, tmp_path)
    ids, mask = _batch()
    _, _, r, o, valid = _run_both(name, ref, ours, ids, mask)
    assert r.shape == o.shape
    assert (r - o)[valid].abs().max() < TOL


@pytest.mark.parametrize("name", FAMILIES)
def test_attention_weights_match_eager_reference(name, tmp_path):
    ref, ours = _reference(name, tmp_path)
    ids, mask = _batch()
    r, o, *_ = _run_both(name, ref, ours, ids, mask)
    pairs = [(r.attentions if not name.startswith("t5") else r.decoder_attentions, o.attentions)]
    if name.startswith("t5"):
        pairs += [(r.encoder_attentions, o.encoder_attentions), (r.cross_attentions, o.cross_attentions)]
    for ref_layers, our_layers in pairs:
        assert len(ref_layers) == len(our_layers)
        for layer in (0, -1):
            a, b = ref_layers[layer], our_layers[layer]
            assert a.shape == b.shape  # (B, H, T, S)
            rows = mask.bool() if a.shape[2] == mask.shape[1] else torch.ones(a.shape[0], a.shape[2], dtype=torch.bool)
            assert (a - b).permute(0, 2, 1, 3)[rows].abs().max() < TOL


@pytest.mark.parametrize("name", FAMILIES)
def test_save_pretrained_round_trip(name, tmp_path):
    ref, ours = _reference(name, tmp_path)
    gencycle.save_pretrained(ours, tmp_path / "back")
    back = type(ref).from_pretrained(tmp_path / "back", attn_implementation="eager").eval()
    ids, mask = _batch()
    _, _, r, _, valid = _run_both(name, ref, ours, ids, mask)
    _, _, b, _, _ = _run_both(name, back, ours, ids, mask)
    assert (r - b)[valid].abs().max() < TOL


@pytest.mark.parametrize("name", ["llama", "gpt2", "qwen2"])
def test_left_padding_uses_positions_from_the_mask(name, tmp_path):
    """Left-padded rows give the same logits as the unpadded prompt (HF generate's convention)."""
    ref, ours = _reference(name, tmp_path)
    ids = torch.randint(3, V, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        r = ref(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits
        o = ours(ids, mask).logits
        alone = ours(ids[1:, 4:]).logits
    assert (r - o)[mask.bool()].abs().max() < TOL
    assert (o[1, 4:] - alone[0]).abs().max() < TOL


@pytest.mark.parametrize("name", ["llama", "gpt2", "t5"])
def test_kv_cache_matches_full_forward(name, tmp_path):
    _, ours = _reference(name, tmp_path)
    ids = torch.randint(3, V, (2, 10))
    with torch.no_grad():
        if name == "t5":
            memory, _ = ours.encode(ids)
            full = ours(decoder_input_ids=ids[:, :7], encoder_hidden_states=memory).logits
            cache = ours.new_cache(2, 16)
            steps = [ours(decoder_input_ids=ids[:, :4], encoder_hidden_states=memory, cache=cache).logits]
            for t in range(4, 7):
                steps.append(ours(decoder_input_ids=ids[:, t:t + 1], encoder_hidden_states=memory, cache=cache).logits)
        else:
            full = ours(ids).logits
            cache = ours.new_cache(2, 16)
            steps = [ours(ids[:, :6], cache=cache).logits]
            for t in range(6, 10):
                steps.append(ours(ids[:, t:t + 1], cache=cache).logits)
    assert (torch.cat(steps, dim=1) - full).abs().max() < TOL


def test_sinusoidal_model_from_scratch_trains():
    config = gencycle.preset("vaswani-base-decoder", hidden_size=32, num_layers=2, num_heads=4,
                             intermediate_size=64, vocab_size=50, max_position_embeddings=32)
    model = gencycle.Transformer(config)
    table = model.sinusoidal
    assert torch.allclose(table[3, 0], torch.sin(torch.tensor(3.0)))
    assert torch.allclose(table[3, 1], torch.cos(torch.tensor(3.0)))
    ids = torch.randint(0, 50, (2, 12))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        logits = model(ids[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 50), ids[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]  # memorizes two sequences


@pytest.mark.parametrize("name", list(gencycle.model.config.PRESETS))
def test_a_model_built_for_loading_has_the_real_buffers_and_the_same_weights(name):
    """Transformer.for_loading (what load_model builds: no random initialisation) holds the same
    parameters, ties and buffers as Transformer(config); only the parameters' values are left unset."""
    from gencycle.model.transformer import Transformer
    config = gencycle.preset(name, vocab_size=64, max_position_embeddings=32)
    built, empty = Transformer(config), Transformer.for_loading(config)
    assert {k: v.shape for k, v in built.state_dict().items()} == {k: v.shape for k, v in empty.state_dict().items()}
    assert dict(built.named_buffers()).keys() == dict(empty.named_buffers()).keys()
    assert all(torch.equal(b, dict(empty.named_buffers())[k]) for k, b in built.named_buffers())
    assert all(p.device.type == "cpu" for p in empty.parameters())
    if built.lm_head is not None:
        assert (built.lm_head.weight is built.embed_tokens.weight) == (empty.lm_head.weight is empty.embed_tokens.weight)


def test_building_for_loading_leaves_other_threads_initialising():
    """The initialisers are skipped only in the thread that builds for loading."""
    import threading
    from gencycle.model import transformer
    built = {}
    with transformer._uninitialised():
        worker = threading.Thread(target=lambda: built.setdefault("linear", torch.nn.Linear(64, 64)))
        worker.start()
        worker.join()
        skipped = torch.nn.init.ones_(torch.zeros(4))
    assert torch.equal(skipped, torch.zeros(4))  # skipped here
    assert 0.02 < built["linear"].weight.std().item() < 0.2  # kaiming-uniform in the other thread
    assert torch.equal(torch.nn.init.ones_(torch.zeros(4)), torch.ones(4))  # restored
