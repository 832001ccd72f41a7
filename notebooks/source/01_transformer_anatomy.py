# %% [markdown]
# # Transformer anatomy, one part at a time
#
# This notebook follows a sentence through a real transformer, SmolLM2-135M-Instruct (a small
# Llama-style decoder that ships inside a Python package), and through a BERT encoder and a T5
# encoder-decoder built from scratch with random weights. Each section shows one part of the
# architecture the course draws: tokens, embeddings, positions, self-attention, the feed-forward
# block and the final softmax over the vocabulary. In the middle we compute one attention head by
# hand, with nothing but matrix products, and check that it gives exactly the model's own weights.
#
# Everything runs on a laptop CPU in a couple of minutes.

# %% [markdown]
# ## Settings
#
# The defaults keep the notebook short. **For a learner with more time**: change the values in
# this cell (another sentence, a deeper layer, more neighbours) and run the notebook again.

# %%
SENTENCE = "The cat sat on the mat because it was tired."
PROMPT = "The capital of France is"
LAYER = 3            # which of SmolLM2's 30 layers to open up (0..29)
HEAD = 4             # which of its 9 query heads (0..8)
WORDS = [" cat", " king", " Paris", " blue", " run"]
NEIGHBOURS = 6       # nearest neighbours listed per word
PROJECTED = 400      # how many vocabulary rows the 2-D projection plots
# More time? For example:
# SENTENCE = "When the trophy did not fit in the suitcase, we knew it was too big."
# LAYER, HEAD, NEIGHBOURS, PROJECTED = 20, 7, 12, 3000

# %%
import math
from pathlib import Path

import matplotlib.pyplot as plt
import torch

import gencycle
from gencycle.inspection import attention_maps, format_card, model_card, plot_attention
from gencycle.model.layers import apply_rotary, sinusoidal_table

torch.manual_seed(0)
torch.set_grad_enabled(False)
model = gencycle.load_model("smollm2-135m-instruct").eval()   # converted from GGUF once, then cached
tokenizer = gencycle.load_tokenizer("smollm2-135m-instruct")
cfg = model.config
print(format_card(model_card(model)))

# %% [markdown]
# ## 1. Text to tokens
#
# The model never sees letters. A byte-level BPE tokenizer cuts the text into pieces from a fixed
# vocabulary of 49,152 entries and gives each piece a number (its id). `Ġ` in a piece stands for
# the space in front of a word: " cat" and "cat" are different tokens.

# %%
ids = tokenizer.encode(SENTENCE)
pieces = tokenizer.convert_ids_to_tokens(ids)
for i, piece in zip(ids, pieces):
    print(f"{i:>6}  {piece!r}")
print(f"{len(SENTENCE)} characters -> {len(ids)} tokens")
assert tokenizer.decode(ids) == SENTENCE   # the pieces put back together give the text again

# %% [markdown]
# ## 2. Embeddings: one vector per token
#
# The first layer is a lookup table with one row of 576 numbers per vocabulary entry. Training
# moves tokens that are used alike close together, so the nearest rows (by cosine similarity)
# of a word are often related words.

# %%
table = model.embed_tokens.weight.float()                    # (vocabulary, hidden) = (49152, 576)
unit = table / table.norm(dim=-1, keepdim=True)
print("embedding table", tuple(table.shape))
for word in WORDS:
    (wid,) = tokenizer.encode(word)
    similarity = unit @ unit[wid]
    best = similarity.topk(NEIGHBOURS + 1).indices[1:]    # the first one is the word itself
    print(f"{word!r:>9} -> " + ", ".join(f"{tokenizer.decode([j])!r} {similarity[j]:.2f}" for j in best.tolist()))

# %% [markdown]
# A 2-D picture of the table: the two directions along which the rows vary most (a principal
# component projection) for the first word-like tokens, with our words marked.

# %%
word_ids = [tokenizer.encode(w)[0] for w in WORDS]
rows = torch.tensor([i for i in range(1000, 1000 + PROJECTED) if i not in word_ids] + word_ids)
centered = table[rows] - table[rows].mean(0)
_, _, v = torch.pca_lowrank(centered, q=2, center=False)
xy = centered @ v                                             # (rows, 2)
plt.figure(figsize=(6, 5))
plt.scatter(xy[:-len(WORDS), 0], xy[:-len(WORDS), 1], s=4, alpha=0.3, label="other tokens")
plt.scatter(xy[-len(WORDS):, 0], xy[-len(WORDS):, 1], c="red")
for (x, y), word in zip(xy[-len(WORDS):].tolist(), WORDS):
    plt.annotate(word, (x, y))
plt.title("SmolLM2 token embeddings, first two principal components")
plt.legend()
plt.show()

# %% [markdown]
# ## 3. Positions
#
# Attention by itself does not know the order of the tokens, so the model must be told where each
# token is. The original transformer adds a fixed table of sines and cosines to the embeddings:
# each position gets its own pattern, slow waves on the right, fast waves on the left.

# %%
pe = sinusoidal_table(64, 128)                                # 64 positions x 128 dimensions
plt.figure(figsize=(8, 3.5))
plt.imshow(pe, aspect="auto", cmap="RdBu")
plt.xlabel("dimension")
plt.ylabel("position")
plt.title("Sinusoidal positional encoding")
plt.colorbar()
plt.show()

# %% [markdown]
# SmolLM2 uses rotary position embedding (RoPE) instead: nothing is added to the embeddings; the
# query and key vectors of each head are rotated, pair of dimensions by pair, by an angle that grows
# with the position. Rotating both by their positions makes their dot product depend only on how
# far apart they are, which the cell checks: the same two vectors at positions (3, 1) and (12, 10)
# give the same score.

# %%
D = cfg.head_dim
q_vec, k_vec = torch.randn(D), torch.randn(D)


def rotate(vec, position):
    cos, sin = model.rotary(torch.tensor([[position]]), torch.float32)   # each (1, 1, 1, D)
    return apply_rotary(vec.view(1, 1, 1, D), cos, sin).view(D)


for pq, pk in [(3, 1), (12, 10), (105, 103), (3, 0)]:
    print(f"query at {pq:>3}, key at {pk:>3} (distance {pq - pk}): score {rotate(q_vec, pq) @ rotate(k_vec, pk):+.4f}")
assert torch.allclose(rotate(q_vec, 3) @ rotate(k_vec, 1), rotate(q_vec, 105) @ rotate(k_vec, 103), atol=1e-4)
turned = torch.stack([rotate(q_vec, p)[[0, D // 2]] for p in range(0, 40)])  # one pair of dimensions
plt.figure(figsize=(4, 4))
plt.plot(turned[:, 0], turned[:, 1], "o-", ms=3)
plt.gca().set_aspect("equal")
plt.title("RoPE turns one pair of dimensions\nof a query as its position grows")
plt.show()

# %% [markdown]
# ## 4. One attention head, by hand
#
# In each layer every token asks a question (its query), every token offers a label (its key) and
# some content (its value). The weights of one head are
#
#     softmax( q @ k.T / sqrt(d) + mask )
#
# where the mask forbids a decoder's token from looking at later tokens. We take the input of layer
# `LAYER` (caught with a hook), apply the layer's own norm and its query and key projection weights,
# split out head `HEAD`, rotate with RoPE, and compare with the weights the model returns when asked
# with `return_attentions=True`. SmolLM2 has 9 query heads but only 3 key/value heads
# (grouped-query attention): query heads 0-2 share key head 0, and so on.

# %%
block = model.decoder.layers[LAYER]
attn = block.self_attn
assert attn.qkv_proj is None, "this walk-through reads the separate q/k/v projections"
caught = {}
hook = block.register_forward_pre_hook(lambda module, args: caught.update(x=args[0]))
x_ids = torch.tensor([ids])
out = model(x_ids, return_attentions=True)
hook.remove()

T = len(ids)
h = block.attn_norm(caught["x"])[0]                                  # (T, 576): the layer's input, normed
kv_head = HEAD // (cfg.num_heads // cfg.num_kv_heads)
q = (h @ attn.q_proj.weight.T).view(T, cfg.num_heads, D)[:, HEAD]    # (T, D)
k = (h @ attn.k_proj.weight.T).view(T, cfg.num_kv_heads, D)[:, kv_head]
q = torch.stack([rotate(q[t], t) for t in range(T)])                 # position t: rotate by t
k = torch.stack([rotate(k[t], t) for t in range(T)])
scores = q @ k.T / math.sqrt(D)                                      # (T, T)
mask = torch.full((T, T), float("-inf")).triu(1)                     # no looking ahead
by_hand = torch.softmax(scores + mask, dim=-1)

theirs = out.attentions[LAYER][0, HEAD].float()
print(f"layer {LAYER}, head {HEAD} (key head {kv_head}): largest difference {(by_hand - theirs).abs().max():.2e}")
assert torch.allclose(by_hand, theirs, atol=1e-5), "the hand-computed head differs from the model's"
print("the hand-computed head equals the model's attention weights")

# %% [markdown]
# The same check on a BERT encoder built from scratch (random weights, learned positions, biases
# in the projections). An encoder has no causal mask: every token sees every other one, both ways.

# %%
bert = gencycle.Transformer(gencycle.ModelConfig(
    family="bert", architecture="encoder", vocab_size=len(tokenizer), hidden_size=64, num_layers=2, num_heads=4,
    intermediate_size=128, max_position_embeddings=128, pre_norm=False, embedding_norm=True, type_vocab_size=2,
    qkv_bias=True, attn_out_bias=True, mlp_bias=True, norm_eps=1e-12)).eval()
bert_out = bert(x_ids, return_attentions=True)
b_attn, bd = bert.encoder.layers[0].self_attn, bert.config.head_dim
x0 = bert.embed(x_ids, torch.arange(T)[None])[0]              # token + position + type embeddings, normed
bq = (x0 @ b_attn.q_proj.weight.T + b_attn.q_proj.bias).view(T, 4, bd)[:, 1]
bk = (x0 @ b_attn.k_proj.weight.T + b_attn.k_proj.bias).view(T, 4, bd)[:, 1]
bert_by_hand = torch.softmax(bq @ bk.T / math.sqrt(bd), dim=-1)    # no mask
assert torch.allclose(bert_by_hand, bert_out.attentions[0][0, 1], atol=1e-6)
print(f"BERT layer 0, head 1: largest difference {(bert_by_hand - bert_out.attentions[0][0, 1]).abs().max():.2e}")

# %% [markdown]
# ## 5. Attention maps, every head of one layer
#
# Each square is one head: rows are the tokens asking, columns the tokens they look at. Heads
# specialise: some look at the previous token, some at the first token (a resting place when
# nothing else matters), some at related words. The printout below leaves the first token aside.

# %%
from IPython.display import Image, display

tokens, weights = attention_maps(model, tokenizer, SENTENCE, layer=LAYER)
path = plot_attention(tokens, weights, Path("anatomy_attention.png"), title=f"SmolLM2, layer {LAYER}")
display(Image(filename=str(path)))
%matplotlib inline
# (plot_attention draws into a file with matplotlib's file-only "Agg" backend; the line above turns
# the notebook's own figures back on for the cells below)
# Most heads put much of their weight on the first token; which token does each one like best after it?
for head in range(weights.shape[0]):
    favourite = [0] + (weights[head, 1:, 1:].argmax(-1) + 1).tolist()
    print(f"head {head}: first-token share {weights[head, 1:, 0].mean():.2f}; favourite other key per token ->",
          " ".join(tokens[j].strip() or "␣" for j in favourite[1:]))

# %% [markdown]
# ## 6. The feed-forward block
#
# After attention has mixed information between tokens, each token goes alone through a small
# two-layer network. SmolLM2's is gated (SwiGLU): `down( silu(gate(x)) * up(x) )`, from 576 to 1536
# numbers and back. The layer adds its output to the token's vector (the residual connection).

# %%
mlp = block.mlp
hn = torch.randn(T, cfg.hidden_size)
ours = (torch.nn.functional.silu(hn @ mlp.gate_proj.weight.T) * (hn @ mlp.up_proj.weight.T)) @ mlp.down_proj.weight.T
assert torch.allclose(ours, mlp(hn), atol=1e-4)
print(f"gate {tuple(mlp.gate_proj.weight.shape)}, up {tuple(mlp.up_proj.weight.shape)}, "
      f"down {tuple(mlp.down_proj.weight.shape)}")
share = sum(p.numel() for p in mlp.parameters()) / sum(p.numel() for p in block.parameters())
print(f"the feed-forward block holds {share:.0%} of this layer's parameters")

# %% [markdown]
# ## 7. Logits, softmax, the next token
#
# The last hidden vector of the prompt is multiplied by the embedding table again (SmolLM2 ties
# the two), giving one score per vocabulary entry: the logits. Softmax turns them into a
# probability distribution over the next token. Greedy decoding would take the top one.

# %%
p_ids = torch.tensor([tokenizer.encode(PROMPT)])
logits = model(p_ids).logits[0, -1].float()                   # (49152,)
probs = torch.softmax(logits, dim=-1)
top = probs.topk(10)
labels = [repr(tokenizer.decode([i])) for i in top.indices.tolist()]
for label, p, l in zip(labels, top.values.tolist(), logits[top.indices].tolist()):
    print(f"{label:>12}  logit {l:6.2f}  probability {p:.3f}")
plt.figure(figsize=(7, 3))
plt.bar(labels, top.values)
plt.xticks(rotation=45)
plt.title(f"next token after {PROMPT!r}")
plt.show()

# %% [markdown]
# ## 8. Three architectures, side by side
#
# The same `Transformer` class builds all three; only the configuration differs. A decoder-only
# model (GPT, Llama, SmolLM2) has one causal stack and a language-model head. An encoder-only model
# (BERT) has one stack that sees both ways, and its outputs are used as features (or to fill in
# masked words). An encoder-decoder (T5) reads the input with a bidirectional encoder, and its
# causal decoder looks at the encoder's output through cross-attention.

# %%
t5 = gencycle.Transformer(gencycle.ModelConfig(
    family="t5", architecture="encoder-decoder", vocab_size=len(tokenizer), hidden_size=64, num_layers=2,
    num_encoder_layers=2, num_heads=4, head_dim=16, intermediate_size=128, position="relative", norm="rmsnorm",
    norm_eps=1e-6, norm_bias=False, activation="relu", scale_attention=False, scale_tied_logits=True,
    pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)).eval()
decoder_ids = torch.tensor([[0] + tokenizer.encode(" Le chat")])
t5_out = t5(x_ids, decoder_input_ids=decoder_ids, return_attentions=True)

rows = []
for name, m, o in [("SmolLM2 (decoder)", model, out), ("BERT (encoder)", bert, bert_out), ("T5 (encoder-decoder)", t5, t5_out)]:
    c = m.config
    stacks = " + ".join(s for s, there in [("encoder", m.encoder is not None), ("decoder", m.decoder is not None)] if there)
    head = "language model" if m.lm_head is not None else "none (features)"
    main = (o.encoder_attentions or o.attentions)[0][0, 0]
    causal = bool((main.triu(1) == 0).all())
    rows.append((name, stacks, "causal" if causal else "bidirectional", c.position, c.norm, head,
                 "yes" if o.cross_attentions and o.cross_attentions[0] is not None else "no"))
header = ("model", "stacks", "first stack's mask", "positions", "norm", "head", "cross-attention")
widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
for r in [header] + rows:
    print("  ".join(str(v).ljust(w) for v, w in zip(r, widths)))

fig, axes = plt.subplots(1, 3, figsize=(11, 3.5))
for ax, (title, w) in zip(axes, [("decoder self-attention (causal)", out.attentions[0][0, 0]),
                                 ("encoder self-attention (both ways)", bert_out.attentions[0][0, 0]),
                                 ("T5 cross-attention (decoder -> encoder)", t5_out.cross_attentions[0][0, 0])]):
    ax.imshow(w.float(), cmap="viridis")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("key")
    ax.set_ylabel("query")
plt.tight_layout()
plt.show()
