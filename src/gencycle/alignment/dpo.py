"""Direct preference optimization (Rafailov et al. 2023): the policy learns from (prompt, chosen,
rejected) pairs directly, against a frozen reference, with no reward model and no sampling.

    examples = tokenize_preference_pairs(pairs, tokenizer, "decoder", max_length=512)
    step = DPOStep(beta=0.1, reference="adapters-off")        # LoRA: the reference is the adapters off
    trainer = MetricsTrainer(policy, TrainConfig(...), examples, collate_fn=DPOCollator(pad),
                             step_fn=step, weight_fn=rows_in)
    precompute_reference(trainer, examples)                   # or: reference log-probs once, up front

One step (`DPOStep`):
    rows [prompt + chosen_1 .. chosen_B, prompt + rejected_1 .. rejected_B]      one batch of 2B rows
    policy log p(completion | prompt), summed over completion tokens only        one batched forward
    reference log-probs                   precomputed (in the batch), or the adapters-off / frozen model
    loss, rewards = dpo_loss(...)         (gencycle.alignment.losses; beta x log-ratio per side)
    stats: rewards/chosen, rewards/rejected, rewards/accuracies, rewards/margins, logps/chosen, logps/rejected

The LM head runs on the completion tokens alone, in chunks whose (tokens, vocabulary) logits are
recomputed in the backward pass (`completion_logprobs`): neither the prompt positions' logits nor
a (2B, T, V) tensor is ever held. At the first step the policy is the reference, so the loss is
ln 2 = 0.6931 and every reward 0 (`rewards/accuracies` counts chosen > rejected strictly, so 0).
Decoder-only and encoder-decoder models (the encoder reads the prompt, the decoder the completion).
"""

from __future__ import annotations

import copy
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Literal, Sequence, get_args

import torch
from torch.utils.checkpoint import checkpoint

from gencycle.errors import UserError
from gencycle.training.data import IGNORE_INDEX, shift_right

from .losses import DPO_LOSS_TYPES, dpo_loss
from .preferences import PreferencePair

Reference = Literal["precomputed", "adapters-off", "model"]
_CHUNK_ELEMENTS = 1 << 23  # logits (tokens x vocabulary) computed at once by the chunked head: 32 MiB in fp32


@dataclass
class DPOExample:
    prompt_ids: list[int]       # decoder: the prompt (at least one token); encoder-decoder: the encoder input
    chosen_ids: list[int]       # completion tokens + EOS
    rejected_ids: list[int]
    ref_chosen_logp: float | None = None   # the reference's log-probabilities, once precomputed
    ref_rejected_logp: float | None = None

    def __len__(self) -> int:
        return len(self.prompt_ids) + max(len(self.chosen_ids), len(self.rejected_ids))


def tokenize_preference_pairs(pairs: Sequence[PreferencePair], tokenizer, architecture: str = "decoder",
                              max_length: int = 512, add_special_tokens: bool = True,
                              eos_token_id: int | None = None) -> list[DPOExample]:
    """Token ids of each pair: the prompt (special tokens added, unless the text holds them, as a
    chat-templated prompt does) and each completion + EOS, tokenized apart so both share the prompt.

    Decoder: prompt + the longer completion fit in max_length, the prompt losing its start (a
    completion longer than max_length - 1 loses its end); an empty prompt becomes the BOS (or EOS)
    token, so the first completion token has a position that predicts it. Encoder-decoder: prompt and
    completions are each cut to max_length.
    """
    eos = eos_token_id if eos_token_id is not None else tokenizer.eos_token_id
    if eos is None:
        raise UserError("the tokenizer names no EOS token, which ends every completion: pass eos_token_id=")
    if not pairs:
        raise UserError("no preference pairs to tokenize")
    out, cut = [], 0
    for pair in pairs:
        completions = [tokenizer.encode(text, add_special_tokens=False) + [eos] for text in (pair.chosen, pair.rejected)]
        prompt = tokenizer.encode(pair.prompt, add_special_tokens=add_special_tokens) if pair.prompt else []
        if architecture == "encoder-decoder":
            cut += len(prompt) > max_length or any(len(c) > max_length for c in completions)
            prompt = prompt[:max_length] or [eos]
            completions = [c[:max_length] for c in completions]
        else:
            if not prompt:
                start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos
                prompt = [start]
            if any(len(c) > max_length - 1 for c in completions):
                cut += 1
                completions = [c[:max_length - 1] for c in completions]
            room = max_length - max(map(len, completions))
            if len(prompt) > room:
                cut += 1
                prompt = prompt[len(prompt) - room:]
        out.append(DPOExample(prompt, completions[0], completions[1]))
    if cut:
        warnings.warn(f"{cut} of {len(pairs)} preference pairs were longer than max_length={max_length} and were cut",
                      stacklevel=2)
    return out


class DPOCollator:
    """DPOExamples -> one batch of 2B right-padded rows: the B chosen sequences, then the B rejected.

    Decoder: input_ids, attention_mask, completion_mask (2B, T), 1 on completion tokens.
    Encoder-decoder: input_ids, attention_mask (2B, S) (each prompt twice), labels (2B, L)
    (completion ids, -100 as padding) and decoder_input_ids (the labels shifted right behind
    decoder_start_token_id). Both: ref_logps (2B,) when every example has precomputed ones.
    """

    def __init__(self, pad_token_id: int, decoder_start_token_id: int | None = None):
        self.pad_token_id, self.decoder_start_token_id = pad_token_id, decoder_start_token_id

    def _pad(self, rows: list[list[int]], value: int) -> torch.Tensor:
        out = torch.full((len(rows), max(map(len, rows))), value, dtype=torch.long)
        for i, row in enumerate(rows):
            out[i, :len(row)] = torch.tensor(row, dtype=torch.long)
        return out

    def __call__(self, examples: list[DPOExample]) -> dict[str, torch.Tensor]:
        sides = [e.chosen_ids for e in examples] + [e.rejected_ids for e in examples]
        prompts = [e.prompt_ids for e in examples] * 2
        if self.decoder_start_token_id is not None:
            input_ids = self._pad(prompts, self.pad_token_id)
            labels = self._pad(sides, IGNORE_INDEX)
            batch = {"input_ids": input_ids, "attention_mask": self._pad([[1] * len(p) for p in prompts], 0),
                     "labels": labels,
                     "decoder_input_ids": shift_right(labels, self.decoder_start_token_id, self.pad_token_id)}
        else:
            rows = [p + c for p, c in zip(prompts, sides)]
            batch = {"input_ids": self._pad(rows, self.pad_token_id),
                     "attention_mask": self._pad([[1] * len(r) for r in rows], 0),
                     "completion_mask": self._pad([[0] * len(p) + [1] * len(c) for p, c in zip(prompts, sides)], 0)}
        if all(e.ref_chosen_logp is not None for e in examples):
            batch["ref_logps"] = torch.tensor([e.ref_chosen_logp for e in examples]
                                              + [e.ref_rejected_logp for e in examples], dtype=torch.float32)
        return batch


# ------------------------------------------------------------------ log-probabilities of completions
def head_logprobs(head, hidden: torch.Tensor, targets: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """log softmax(head(hidden))[targets] for hidden (N, C), targets (N,) -> (N,) fp32.

    In chunks of rows; with gradients each chunk is checkpointed, so its (rows, V) logits exist only
    while that chunk is computed, in the forward pass and again in the backward pass.
    """
    rows = max(1, _CHUNK_ELEMENTS // max(vocab_size, 1))
    pieces = []
    for start in range(0, hidden.shape[0], rows):
        h, y = hidden[start:start + rows], targets[start:start + rows]
        if torch.is_grad_enabled() and h.requires_grad:
            pieces.append(checkpoint(_token_logprobs, head, h, y, use_reentrant=False))
        else:
            pieces.append(_token_logprobs(head, h, y))
    return torch.cat(pieces) if pieces else hidden.new_zeros(0, dtype=torch.float32)


def _token_logprobs(head, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = head(hidden).float()                                          # (n, V)
    return logits.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(logits, -1)


def _transformer(model):
    module = getattr(model, "module", model)  # under DDP, the model itself
    if not hasattr(module, "head") or not hasattr(module, "config"):
        raise UserError(f"DPO trains a gencycle Transformer (full or with LoRA adapters), not a {type(module).__name__}")
    return module


def completion_logprobs(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(completion | prompt) summed over each row's completion tokens (R,) fp32, tokens per row (R,)).

    One forward over all R rows of a `DPOCollator` batch (the transformer returns hidden states; the
    LM head then runs on the completion positions only, see `head_logprobs`).
    """
    module = _transformer(model)
    if "decoder_input_ids" in batch:
        out = model(batch["input_ids"], batch["attention_mask"], decoder_input_ids=batch["decoder_input_ids"],
                    logits_to_keep=1)
        hidden, targets = out.hidden_states, batch["labels"]             # (R, L, C), (R, L)
        mask = targets != IGNORE_INDEX
    else:
        out = model(batch["input_ids"], batch["attention_mask"], logits_to_keep=1)
        hidden, targets = out.hidden_states[:, :-1], batch["input_ids"][:, 1:]  # position t predicts token t + 1
        mask = batch["completion_mask"][:, 1:].bool()
    row_of = mask.nonzero()[:, 0]                                          # (N,) the row of each scored token
    token_logps = head_logprobs(module.head, hidden[mask], targets[mask], module.config.vocab_size)
    rows = hidden.shape[0]
    logps = torch.zeros(rows, dtype=token_logps.dtype, device=token_logps.device).index_add(0, row_of, token_logps)
    return logps, mask.sum(-1)


def reference_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A frozen deep copy of the policy (full training's reference): it shares nothing mutable with it."""
    reference = copy.deepcopy(getattr(model, "module", model))
    return reference.requires_grad_(False).eval()


# ------------------------------------------------------------------ the step
class DPOStep:
    """(policy, batch) -> the DPO loss of a `DPOCollator` batch; its figures are kept in `stats`.

    reference: "precomputed" (the batch carries ref_logps: `precompute_reference` filled them),
    "adapters-off" (the policy with its LoRA adapters switched off: no second model in memory) or
    "model" (`reference_model`, a frozen copy: full training). Reference passes run in eval mode
    under no_grad. loss_type "ipo" divides each side's log-ratio by its completion tokens (as the
    IPO paper and TRL do).
    """

    def __init__(self, beta: float = 0.1, label_smoothing: float = 0.0, loss_type: str = "sigmoid",
                 reference: Reference = "precomputed", reference_model: torch.nn.Module | None = None):
        if reference not in get_args(Reference):
            raise UserError(f"unknown reference {reference!r}; use one of {', '.join(get_args(Reference))}")
        if loss_type not in DPO_LOSS_TYPES:
            raise UserError(f"unknown DPO loss_type {loss_type!r}; use one of {', '.join(DPO_LOSS_TYPES)}")
        if reference == "model" and reference_model is None:
            raise UserError("reference='model' needs reference_model= (a frozen copy of the policy: reference_copy)")
        if not beta > 0:
            raise UserError(f"beta must be > 0, got {beta}")
        self.beta, self.label_smoothing, self.loss_type = beta, label_smoothing, loss_type
        self.reference, self.reference_model = reference, reference_model
        self.stats: list[tuple[int, dict[str, float]]] = []

    @torch.no_grad()
    def reference_logps(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if "ref_logps" in batch:
            return batch["ref_logps"]
        if self.reference == "precomputed":
            raise UserError("reference='precomputed' but the batch has no ref_logps: call precompute_reference "
                            "on the examples first")
        if self.reference == "model":
            return completion_logprobs(self.reference_model, batch)[0]
        from gencycle.adapters import disable_adapters
        module = _transformer(model)
        was_training = module.training
        module.eval()
        try:
            with disable_adapters(module):
                return completion_logprobs(module, batch)[0]
        finally:
            module.train(was_training)

    def __call__(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logps, tokens = completion_logprobs(model, batch)
        reference = self.reference_logps(model, batch).to(logps.device, logps.dtype)
        if self.loss_type == "ipo":
            logps, reference = logps / tokens.clamp(min=1), reference / tokens.clamp(min=1)
        policy_chosen, policy_rejected = logps.chunk(2)
        ref_chosen, ref_rejected = reference.chunk(2)
        loss, chosen, rejected = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected,
                                          self.beta, self.label_smoothing, self.loss_type)
        with torch.no_grad():
            self.stats.append((len(chosen), {
                "rewards/chosen": chosen.mean().item(), "rewards/rejected": rejected.mean().item(),
                "rewards/accuracies": (chosen > rejected).float().mean().item(),
                "rewards/margins": (chosen - rejected).mean().item(),
                "logps/chosen": policy_chosen.mean().item(), "logps/rejected": policy_rejected.mean().item()}))
        return loss


@torch.no_grad()
def precompute_reference(trainer, examples: Sequence[DPOExample], batch_size: int | None = None,
                         progress: bool = True) -> None:
    """Fill each example's reference log-probabilities, once, with the trainer's model as it is now
    (before training: the policy equals the reference), adapters switched off when it has LoRA
    adapters; in eval mode, under the trainer's autocast. Call it before `trainer.train()` (and before
    any resume, which loads trained weights)."""
    from tqdm.auto import tqdm
    from gencycle.adapters import disable_adapters, lora_layers
    module = _transformer(trainer.module)
    size = batch_size or trainer.config.eval_batch_size or trainer.config.batch_size
    starts = range(0, len(examples), size)
    was_training = module.training
    module.eval()
    adapters = disable_adapters(module) if lora_layers(module) else nullcontext()
    try:
        with adapters:
            for start in tqdm(starts, desc="reference log-probs", unit="batch",
                              disable=not (progress and trainer.config.progress) or len(starts) < 2):
                chunk = list(examples[start:start + size])
                batch = {k: v.to(trainer.dist.device) for k, v in trainer.collate_fn(chunk).items()
                         if k != "ref_logps"}
                with trainer.autocast():
                    logps = completion_logprobs(module, batch)[0].float().cpu()
                for example, chosen, rejected in zip(chunk, *logps.chunk(2)):
                    example.ref_chosen_logp, example.ref_rejected_logp = float(chosen), float(rejected)
    finally:
        module.train(was_training)
