"""The memory-bandwidth bound of batch-1 decoding.

Generating one token at batch 1 reads every weight of the decoder and the LM head once, and does
little arithmetic per byte, so a token cannot take less than (weight bytes) / (memory bandwidth).
The bandwidth is measured here as a large tensor copy (bytes read + bytes written, per second).
"""

from __future__ import annotations

import torch

from .common import best_time


def copy_bandwidth(megabytes: int = 512, repeat: int = 5) -> float:
    """Bytes per second moved by `dst.copy_(src)` on tensors far larger than the CPU caches."""
    src = torch.ones(megabytes * 2**20 // 4)
    dst = torch.empty_like(src)
    seconds, _ = best_time(lambda: dst.copy_(src), repeat)
    return 2 * src.numel() * 4 / seconds


def weight_bytes_per_token(model) -> int:
    """Bytes of the tensors one decoding step reads: the decoder stack and the LM head (a tied
    head counted once; the embedding table is not, since a step reads a single row of it)."""
    tensors = {}
    for module in (model.decoder, model.lm_head):
        for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
            if name.rpartition(".")[2] == "weight_bf16":  # a quantized layer's prefill copy: not read by a step
                continue
            tensors[tensor.data_ptr()] = tensor.numel() * tensor.element_size()
    return sum(tensors.values())


def hf_weight_bytes_per_token(hf_model) -> int:
    """The same count for a transformers model: everything but the input embeddings (a tied
    head is still read in full)."""
    embeddings = hf_model.get_input_embeddings().weight
    head = hf_model.get_output_embeddings().weight
    total = sum(p.numel() * p.element_size() for p in hf_model.parameters())
    if embeddings.data_ptr() != head.data_ptr():
        total -= embeddings.numel() * embeddings.element_size()
    return total
