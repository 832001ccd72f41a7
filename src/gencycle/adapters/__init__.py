"""Parameter-efficient adaptation: LoRA and prompt tuning, merged or saved in the PEFT format."""

from .lora import (LoRALinear, apply_lora, disable_adapters, find_targets, lora_layers, lora_state_dict,
                   merge_lora, trainable_parameters, unmerge_lora)
from .peft_format import load_adapter, read_adapter, save_adapter
from .prompt_tuning import PromptTuningModel, apply_prompt_tuning, init_prompt

__all__ = ["LoRALinear", "PromptTuningModel", "apply_lora", "apply_prompt_tuning", "disable_adapters", "find_targets",
           "init_prompt", "load_adapter", "lora_layers", "lora_state_dict", "merge_lora", "read_adapter", "save_adapter",
           "trainable_parameters", "unmerge_lora"]
