"""Beam search, step for step as `transformers` runs it (so the outputs match token for token).

Each prompt keeps K = num_beams running hypotheses and K finished ones. A step:

  1. scores = log_softmax(logits) -> processors -> + the beam's running score     (A, K*V)
  2. keep the W = max(2, 1 + #eos) * K best candidates (enough that K of them are not finished)
  3. running beams: the best K candidates that did not just finish
  4. finished beams: the best K of (finished so far, candidates among the top K that just finished),
     scored by sum of log-probs / new_length ** length_penalty
  5. a prompt is done when no running beam can beat its worst finished one (early_stopping=False:
     judged at the current length; "never": at the longest length when length_penalty > 0), or
     when it has K finished beams and early_stopping=True. A done prompt leaves the batch.

A = prompts still running, V = vocabulary, L = T + max_new_tokens (the longest sequence).
"""

from __future__ import annotations

import torch

from .config import GenerationConfig
from .processors import process
from .state import DecodeState

NEG = -1.0e9  # "never pick this": large but finite, as transformers uses


def _take(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (A, W, ...) -> (A, K, ...) rows picked along dim 1 by index (A, K)."""
    while index.dim() < x.dim():
        index = index.unsqueeze(-1)
    return torch.take_along_dim(x, index, dim=1)


def beam_search(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, config: GenerationConfig,
                stop=None) -> torch.Tensor:
    """input_ids (B, T) -> the best num_return_sequences sequences per prompt, (B * n, T' + new)."""
    K, lp, early, max_new = config.num_beams, config.length_penalty, config.early_stopping, config.max_new_tokens
    eos_ids = config.eos_token_ids
    state = DecodeState(model, input_ids, attention_mask, max_new)
    B, T = state.start.shape
    L, W, device = T + max_new, max(2, 1 + len(eos_ids)) * K, input_ids.device
    eos = torch.tensor(eos_ids, dtype=torch.long, device=device)
    top_k_mask = torch.arange(W, device=device) < K              # only the top K candidates may finish

    logits = state(state.start)                                  # prefill once per prompt, then copy K times
    state.select(torch.arange(B, device=device).repeat_interleave(K))
    logits = logits.repeat_interleave(K, dim=0)                  # (A*K, V)

    running = torch.full((B, K, L), config.pad_token_id, dtype=torch.long, device=device)
    running[:, :, :T] = state.start[:, None]
    running_scores = torch.zeros(B, K, device=device)
    running_scores[:, 1:] = NEG                                  # step 1 expands the first beam only
    finished, finished_scores = running.clone(), torch.full((B, K), NEG, device=device)
    is_finished = torch.zeros(B, K, dtype=torch.bool, device=device)
    finished_len = torch.zeros(B, K, dtype=torch.long, device=device)  # new tokens of each finished beam
    improvable = torch.ones(B, 1, dtype=torch.bool, device=device)
    prompts = torch.arange(B, device=device)                     # which prompt each running row serves
    padding = None if state.padding is None else state.padding[:, None].expand(B, K)  # (A, K) left padding
    result, result_len = finished.clone(), finished_len.clone()

    def retire(which: torch.Tensor) -> None:
        result[prompts[which]], result_len[prompts[which]] = finished[which], finished_len[which]

    for step in range(max_new):
        cur, A = T + step, running.shape[0]
        # 1-2. every beam's continuations, best W per prompt
        log_probs = torch.log_softmax(logits, dim=-1)
        log_probs = process(log_probs, running[:, :, :cur].reshape(A * K, cur), config, step, eos_ids,
                            None if padding is None else padding.reshape(A * K), warp=False)
        V = log_probs.shape[-1]
        log_probs = (log_probs.view(A, K, V) + running_scores[:, :, None]).view(A, K * V)
        top_scores, top_index = log_probs.topk(W, dim=1)         # (A, W)
        parent, token = top_index // V, top_index % V
        candidates = _take(running, parent)                      # (A, W, L)
        candidates[:, :, cur] = token
        hits = torch.isin(token, eos) | (step + 1 == max_new)     # (A, W) candidate ends here
        if stop is not None:
            hits |= stop(candidates[:, :, T:cur + 1].reshape(A * W, -1)).view(A, W)

        # 3. running beams for the next step
        run_scores = top_scores + hits.float() * NEG
        keep = run_scores.topk(K, dim=1).indices                  # (A, K)
        running, running_scores, parent = _take(candidates, keep), _take(run_scores, keep), _take(parent, keep)

        # 4. finished beams
        scores = top_scores / (step + 1) ** lp
        scores += (is_finished.all(-1, keepdim=True) & (early is True)).float() * NEG
        scores += (~improvable).float() * NEG
        just_finished = hits & top_k_mask
        scores += (~just_finished).float() * NEG
        merged = torch.cat([finished_scores, scores], dim=1).topk(K, dim=1).indices
        finished = _take(torch.cat([finished, candidates], dim=1), merged)
        finished_scores = _take(torch.cat([finished_scores, scores], dim=1), merged)
        is_finished = _take(torch.cat([is_finished, just_finished], dim=1), merged)
        finished_len = _take(torch.cat([finished_len, finished_len.new_full((A, W), step + 1)], dim=1), merged)

        # 5. which prompts are done
        best_length = max_new if early == "never" and lp > 0 else step + 1
        best_running = running_scores[:, :1] / best_length ** lp
        worst_finished = torch.where(is_finished, finished_scores.min(dim=1, keepdim=True).values, NEG)
        improvable = improvable & (best_running > worst_finished).any(dim=-1, keepdim=True)
        done = ~improvable[:, 0] | (is_finished.all(-1) & (early is True))
        if step + 1 == max_new or bool(done.all()) or bool(hits.all()):
            break
        rows = (parent + torch.arange(A, device=device)[:, None] * K)  # (A, K) cache row of each beam's parent
        if bool(done.any()):                                     # done prompts leave the batch
            retire(done)
            live = (~done).nonzero().squeeze(1)
            running, running_scores, rows = running[live], running_scores[live], rows[live]
            finished, finished_scores, is_finished = finished[live], finished_scores[live], is_finished[live]
            finished_len, improvable, prompts = finished_len[live], improvable[live], prompts[live]
            padding = None if padding is None else padding[live]
        state.select(rows.flatten())
        logits = state(running[:, :, cur].reshape(-1, 1))
    retire(torch.ones(len(prompts), dtype=torch.bool, device=device))

    n = config.num_return_sequences
    width = T + int(result_len[:, :n].max())
    return result[:, :n, :width].reshape(B * n, width)
