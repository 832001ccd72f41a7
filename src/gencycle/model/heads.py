"""Heads on a backbone's hidden states: sequence classification (reward models) and per-token values
(the PPO critic).

    reward_model = SequenceClassifier(load_model("smollm2-135m"), num_labels=1)   # logits (B, 1)
    critic = ValueHead(load_model("smollm2-135m"))                                 # values (B, T)

A head wraps any backbone with the Transformer's call signature (a Transformer, one with LoRA
adapters, a PromptTuningModel) and reads its `hidden_states` (B, T, C) after the final norm. The
backbone keeps its LM head; it is asked for the last position's logits only, a small cost.

Names follow Hugging Face's `*ForSequenceClassification` layouts, so a checkpoint writer maps
the state dict by stripping `backbone.` (renamed through the family's table) and keeping the
head's names as they are:

    decoders (Llama, Qwen2, GPT-2): hidden state of the last token -> `score` (Linear, no bias)
    BERT:                           tanh pooler (the backbone's `pooler`) -> dropout -> `classifier`

T5's `T5ForSequenceClassification` (decoder state at the last EOS -> `classification_head`
dense / tanh / out_proj) would be one more pooling and head layout here.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

POOLINGS = ("last", "mean", "cls", "pooler")


@dataclass
class ClassifierOutput:
    logits: torch.Tensor          # (B, num_labels)
    pooled: torch.Tensor          # (B, C): what the classifier read
    hidden_states: torch.Tensor   # (B, T, C): the backbone's, after its final norm


@dataclass
class ValueOutput:
    values: torch.Tensor               # (B, T): one scalar per position
    hidden_states: torch.Tensor        # (B, T, C)
    logits: torch.Tensor | None = None  # (B, T, V) when asked for (a policy and its value in one pass)


def _new_linear(backbone: nn.Module, in_features: int, out_features: int, bias: bool) -> nn.Linear:
    weight = backbone.embed_tokens.weight
    linear = nn.Linear(in_features, out_features, bias=bias, device=weight.device, dtype=weight.dtype)
    nn.init.normal_(linear.weight, std=0.02)  # the Transformer's initialisation
    if bias:
        nn.init.zeros_(linear.bias)
    return linear


def last_token_index(attention_mask: torch.Tensor | None, input_ids: torch.Tensor | None, length: int,
                     pad_token_id: int | None = None) -> torch.Tensor:
    """(B,) index of each row's last real token; left and right padding alike.

    From the attention mask (B, T) when given; else, like transformers, the last id that is not
    `pad_token_id`; else the last position.
    """
    if attention_mask is None and input_ids is not None and pad_token_id is not None:
        attention_mask = input_ids != pad_token_id
    if attention_mask is None:
        device = input_ids.device if input_ids is not None else None
        return torch.full((1,), length - 1, dtype=torch.long, device=device)
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (positions * (attention_mask != 0)).argmax(dim=1)


def pool(hidden: torch.Tensor, how: str, attention_mask: torch.Tensor | None = None, input_ids=None,
         pad_token_id: int | None = None) -> torch.Tensor:
    """(B, T, C) -> (B, C): the last real token, the mean over real tokens, or the first position."""
    if how == "last":
        index = last_token_index(attention_mask, input_ids, hidden.shape[1], pad_token_id)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), index.to(hidden.device)]
    if how == "mean":
        if attention_mask is None:
            return hidden.mean(dim=1)
        weights = (attention_mask != 0).to(hidden.dtype)[..., None]         # (B, T, 1)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)
    if how == "cls":
        return hidden[:, 0]
    raise ValueError(f"unknown pooling {how!r}; supported: {', '.join(POOLINGS)}")


class SequenceClassifier(nn.Module):
    """A backbone plus a classification head: (B, T) ids -> logits (B, num_labels).

    pooling: "last" (the last real token, decoders' default: Llama / GPT-2 / Qwen2
    `ForSequenceClassification`), "pooler" (BERT's tanh pooler, the default when the backbone has
    one: `BertForSequenceClassification`), "mean" (over real tokens) or "cls" (the first position,
    other encoders' default). The head is `classifier` (with bias) after the pooler and `score`
    (no bias) otherwise, the Hugging Face names. A reward model is `num_labels=1`.
    """

    def __init__(self, backbone: nn.Module, num_labels: int, pooling: str | None = None):
        super().__init__()
        config = backbone.config
        if not isinstance(num_labels, int) or num_labels <= 0:
            raise ValueError(f"num_labels must be a positive integer, got {num_labels!r}")
        if pooling is None:
            pooling = "pooler" if config.pooler else "last" if config.has_decoder else "cls"
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; supported: {', '.join(POOLINGS)}")
        if pooling == "pooler" and not config.pooler:
            raise ValueError("pooling='pooler' needs a backbone with a pooler (BERT); "
                             "use 'last', 'mean' or 'cls'")
        self.backbone, self.num_labels, self.pooling = backbone, num_labels, pooling
        C = config.hidden_size
        if pooling == "pooler":
            self.dropout = nn.Dropout(config.dropout)
            self.classifier = _new_linear(backbone, C, num_labels, bias=True)
        else:
            self.score = _new_linear(backbone, C, num_labels, bias=False)

    @property
    def config(self):
        return self.backbone.config

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                **backbone_kwargs) -> ClassifierOutput:
        """input_ids, attention_mask: (B, T), padded on either side. Other keywords (token_type_ids,
        decoder_input_ids, ...) go to the backbone."""
        out = self.backbone(input_ids, attention_mask, logits_to_keep=1, **backbone_kwargs)
        if self.pooling == "pooler":
            pooled = out.pooled_output
            return ClassifierOutput(self.classifier(self.dropout(pooled)), pooled, out.hidden_states)
        pooled = pool(out.hidden_states, self.pooling, attention_mask, input_ids, self.config.pad_token_id)
        return ClassifierOutput(self.score(pooled), pooled, out.hidden_states)


class ValueHead(nn.Module):
    """A backbone plus `score`, a Linear(C, 1) on every position: the PPO critic's values (B, T).

    No bias by default, so the head is a one-label `score` and a reward model's weights can start
    the critic (`ValueHead.from_classifier`). lm_logits=True in forward also returns the backbone's
    LM logits from the same pass (a policy sharing its trunk with the critic).
    """

    def __init__(self, backbone: nn.Module, bias: bool = False):
        super().__init__()
        self.backbone = backbone
        self.score = _new_linear(backbone, backbone.config.hidden_size, 1, bias=bias)

    @property
    def config(self):
        return self.backbone.config

    @classmethod
    def from_classifier(cls, model: SequenceClassifier) -> "ValueHead":
        """A critic that starts as a copy of a one-label classifier (the reward model): its backbone
        and `score`, deep-copied, so training the critic leaves the reward model as it was."""
        if model.num_labels != 1 or not hasattr(model, "score"):
            raise ValueError("a value head starts from a one-label classifier with a `score` layer "
                             f"(got num_labels={model.num_labels}, pooling={model.pooling!r})")
        head = cls(copy.deepcopy(model.backbone))
        head.score = copy.deepcopy(model.score)
        return head

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None, *,
                lm_logits: bool = False, **backbone_kwargs) -> ValueOutput:
        """input_ids, attention_mask: (B, T) -> values (B, T); padded positions' values are there
        too: the caller masks them."""
        out = self.backbone(input_ids, attention_mask, logits_to_keep=0 if lm_logits else 1, **backbone_kwargs)
        values = self.score(out.hidden_states).squeeze(-1)
        return ValueOutput(values, out.hidden_states, out.logits if lm_logits else None)
