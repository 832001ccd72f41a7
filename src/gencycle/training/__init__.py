"""Training: one loop (optimizer, schedule, accumulation, bf16, checkpoint/resume, DDP/FSDP),
instruction data, objectives, and the fine-tuning workflow."""

from gencycle.training.data import (
    IGNORE_INDEX, Collator, DataError, EpochSampler, Example, Pair, chat_pairs, collator_for, load_pairs, pack,
    read_records, to_pairs, tokenize,
)
from gencycle.training.loop import TrainConfig, Trainer, seed_everything
from gencycle.training.objectives import causal_lm_loss, lm_step, seq2seq_loss
from gencycle.training.report import MemoryMonitor, ParameterCount, count_parameters, plot_loss_curve

__all__ = ["IGNORE_INDEX", "Collator", "DataError", "EpochSampler", "Example", "MemoryMonitor", "Pair",
           "ParameterCount", "TrainConfig", "Trainer", "causal_lm_loss", "chat_pairs", "collator_for", "count_parameters",
           "lm_step", "load_pairs", "pack", "plot_loss_curve", "read_records", "seed_everything",
           "seq2seq_loss", "to_pairs", "tokenize"]
