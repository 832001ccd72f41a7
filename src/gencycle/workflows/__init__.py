"""Workflows: plain functions over small config dataclasses; the CLI is generated from the configs.

    finetune(model, data, FinetuneConfig(...))    full / LoRA / prompt-tuning instruction fine-tuning
    prompt(model, PromptConfig(...))              one zero/one/few-shot prompt and its completion
    evaluate(model, EvaluateConfig(...))          (shots x generation config) variants scored, a report

Their shared pieces: `config` (options of a config tree, overrides by name, `RunConfig`) and
`steps` (load, measure, train, gather, save), which the later workflows (reward model, PPO,
DPO, pretraining) reuse.
"""

from gencycle.training.loop import TrainConfig
from gencycle.workflows.config import RunConfig, options, override
from gencycle.workflows.evaluate import (
    EvaluateConfig, EvaluateResult, PromptConfig, PromptingConfig, PromptResult, evaluate, prompt,
)
from gencycle.workflows.finetune import (
    DataConfig, FinetuneConfig, FinetuneResult, LoraConfig, MeasureConfig, PromptTuningConfig, finetune,
)

__all__ = ["DataConfig", "EvaluateConfig", "EvaluateResult", "FinetuneConfig", "FinetuneResult", "LoraConfig",
           "MeasureConfig", "PromptConfig", "PromptResult", "PromptTuningConfig", "PromptingConfig", "RunConfig",
           "TrainConfig", "evaluate", "finetune", "options", "override", "prompt"]
