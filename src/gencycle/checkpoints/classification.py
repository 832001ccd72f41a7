"""Sequence classifiers (reward models) as Hugging Face `*ForSequenceClassification` folders.

    save_classifier(classifier, "runs/rm/model")        config.json + model.safetensors
    classifier = load_classifier("runs/rm/model")        a SequenceClassifier, labels in .id2label

A classifier whose pooling is the one transformers' class for its family uses is written in that
class's layout, so `transformers.AutoModelForSequenceClassification.from_pretrained` loads it and
computes the same logits:

    family          class                              pooling    head tensors
    llama, qwen2    Llama/Qwen2ForSequenceClassification  last     score.weight
    gpt2            GPT2ForSequenceClassification        last     score.weight
    bert            BertForSequenceClassification        pooler   classifier.weight, classifier.bias

config.json is the backbone's HF config plus `architectures`, `id2label` / `label2id` and
`pad_token_id` (transformers finds a decoder's last token as the last id that is not the pad
id, so the texts must not end in it). The backbone's weights go through the family's name table
(the HF base-model prefixes `model.`, `transformer.`, `bert.`); a decoder's LM head is not
written (the class has none), so a folder of an untied model has no `lm_head`, and one loads
without it (the classifier never reads it).

Every other pooling (mean or first-token over BERT, mean / last over a decoder, any pooling over
a T5 *encoder*) has no transformers class. Such a folder is gencycle's own layout:
`architectures: ["GencycleSequenceClassifier"]`, the head stored as `gencycle.score.weight`
(a name no transformers class reads, so transformers warns that its head is newly initialized
instead of computing other logits in silence), and a `gencycle_classifier` entry in config.json
with the pooling. The backbone is still in its HF layout: `BertModel.from_pretrained` /
`T5EncoderModel.from_pretrained` load it, and the head is `pooled @ score.weight.T`.
(transformers' `T5ForSequenceClassification` runs the decoder too and reads the state at the last
EOS; a T5 reward model here reads the encoder only, so it is written in gencycle's layout.)

Folders written by transformers load too (any of the classes above); a folder without a
classification head is refused with a message saying so.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from .. import assets
from ..model.config import ModelConfig
from ..model.heads import SequenceClassifier
from ..model.transformer import Transformer
from . import default_device, family_module, family_of, load_hf_state, read_json, read_weights, resolve_dtype
from .names import rename

HF_CLASSES = {"llama": "LlamaForSequenceClassification", "qwen2": "Qwen2ForSequenceClassification",
              "gpt2": "GPT2ForSequenceClassification", "bert": "BertForSequenceClassification"}
HF_POOLING = {"llama": "last", "qwen2": "last", "gpt2": "last", "bert": "pooler"}
BASE_PREFIX = {"bert": "bert."}  # BertForSequenceClassification keeps its base model under `bert.`
GENCYCLE_CLASS = "GencycleSequenceClassifier"
SECTION = "gencycle_classifier"
GENCYCLE_HEAD = "gencycle."  # prefix of a head that no transformers class reads


def hf_layout(config: ModelConfig, pooling: str) -> bool:
    """True when transformers has a class that pools this family's backbone this way."""
    return config.architecture != "encoder-decoder" and HF_POOLING.get(config.family) == pooling


def encoder_only(model: Transformer) -> Transformer:
    """The encoder of an encoder-decoder model (T5) as an encoder-only Transformer, weights shared.

    A classifier over T5 reads the encoder: this is the backbone to give `SequenceClassifier`.
    An encoder-only or decoder-only model is returned as it is.
    """
    if model.config.architecture != "encoder-decoder":
        return model
    config = encoder_config(model.config)
    with torch.device("meta"):
        encoder = Transformer(config)
    encoder.embed_tokens, encoder.encoder = model.embed_tokens, model.encoder
    encoder.dropout = model.dropout
    return encoder.to(model.device)


def encoder_config(config: ModelConfig) -> ModelConfig:
    """An encoder-decoder config's encoder as an encoder-only config (no LM head)."""
    return config.replace(architecture="encoder", num_layers=config.num_encoder_layers or config.num_layers,
                          num_encoder_layers=None, tie_embeddings=True, scale_tied_logits=False, mlm_head=False)


# ------------------------------------------------------------------ saving
def classifier_state_dict(classifier: SequenceClassifier) -> tuple[dict[str, torch.Tensor], bool]:
    """(the classifier's tensors under the folder's names, whether the layout is transformers')."""
    backbone, config = classifier.backbone, classifier.backbone.config
    family = family_module(config)
    table = family.table(config)
    plain = config.replace(mlm_head=False)  # the folder's backbone: no LM / MLM head
    state = {}
    adapters = [name for name in backbone.state_dict() if ".lora_" in name]
    if adapters:
        raise ValueError(f"the backbone has LoRA adapters ({adapters[0]}, ...): merge them into the weights "
                         "first (gencycle.adapters.merge_lora(classifier, unload=True))")
    for name, tensor in backbone.state_dict().items():
        if name.startswith(("lm_head.", "mlm_transform.")):
            continue  # the LM head: no *ForSequenceClassification class has one
        hf_name = rename(name, table, to_hf=True)
        if hf_name is None:
            raise ValueError(f"weight {name!r} of the backbone has no name in the {config.family} layout")
        state[hf_name] = tensor
    state = family.weights_to_hf(state, plain)
    prefix = BASE_PREFIX.get(config.family, "")
    state = {prefix + k if not k.startswith(prefix) else k: v for k, v in state.items()}
    native = hf_layout(config, classifier.pooling)
    for name, tensor in classifier.state_dict().items():
        if not name.startswith("backbone."):
            state[name if native else GENCYCLE_HEAD + name] = tensor
    return state, native


def classifier_hf_config(classifier: SequenceClassifier, id2label: dict[int, str] | None = None,
                         pad_token_id: int | None = None) -> dict:
    """config.json of a classification folder (see the module docstring)."""
    config = classifier.backbone.config
    family = family_module(config)
    if config.architecture == "encoder" and config.family == "t5":
        base = config.replace(architecture="encoder-decoder", num_encoder_layers=config.num_layers)
        hf = family.config_to_hf(base)
    else:
        hf = family.config_to_hf(config.replace(mlm_head=False))
    num_labels = classifier.num_labels
    labels = _labels(id2label, num_labels)
    pad = pad_token_id if pad_token_id is not None else config.pad_token_id
    if config.architecture == "decoder" and pad is None:
        raise ValueError("a decoder classifier needs a pad_token_id (transformers finds each row's last token "
                         "as the last id that is not the pad id): pass pad_token_id=, e.g. the tokenizer's")
    native = hf_layout(config, classifier.pooling)
    hf.update(architectures=[HF_CLASSES[config.family] if native else GENCYCLE_CLASS],
              id2label={str(i): name for i, name in labels.items()},
              label2id={name: i for i, name in labels.items()}, pad_token_id=pad)
    if num_labels > 1:
        hf["problem_type"] = "single_label_classification"
    hf[SECTION] = {"pooling": classifier.pooling, "layout": "transformers" if native else "gencycle",
                   "backbone": config.architecture, "pooler": bool(config.pooler)}
    hf["torch_dtype"] = str(classifier.backbone.dtype).removeprefix("torch.")
    return hf


def save_classifier(classifier: SequenceClassifier, directory: str | Path, id2label: dict[int, str] | None = None,
                    pad_token_id: int | None = None) -> Path:
    """Write `classifier` as a sequence-classification folder (config.json, model.safetensors).

    id2label: a name per label index (default: the classifier's `id2label` attribute, else LABEL_i);
    pad_token_id: written into config.json (default: the backbone's), required for decoders.
    """
    if not isinstance(classifier, SequenceClassifier):
        raise ValueError(f"save_classifier takes a SequenceClassifier, got {type(classifier).__name__}")
    if getattr(classifier.backbone, "quantization", None):
        raise ValueError("this classifier's backbone holds quantized weights for inference; save it before quantizing")
    id2label = id2label if id2label is not None else getattr(classifier, "id2label", None)
    hf = classifier_hf_config(classifier, id2label, pad_token_id)
    state, _ = classifier_state_dict(classifier)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return directory


def _labels(id2label, num_labels: int) -> dict[int, str]:
    if id2label is None:
        return {i: f"LABEL_{i}" for i in range(num_labels)}
    labels = {int(i): str(name) for i, name in dict(id2label).items()}
    if sorted(labels) != list(range(num_labels)):
        raise ValueError(f"id2label must name labels 0..{num_labels - 1}, got indices {sorted(labels)}")
    if len(set(labels.values())) != num_labels:
        raise ValueError(f"id2label names must be distinct, got {list(labels.values())}")
    return labels


# ------------------------------------------------------------------ loading
def read_classification_config(path: str | Path) -> dict:
    """config.json of a classification folder; a clear error when the folder has no classification head."""
    folder = assets.resolve(path)
    if folder.is_file():
        raise ValueError(f"{str(folder)!r} is a file; a classifier is a folder with config.json and weights")
    config_path = folder / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"no config.json in {str(folder)!r}")
    hf = read_json(config_path)  # names the file when it is not UTF-8, not JSON or not an object
    architectures = hf.get("architectures") or []
    if not (SECTION in hf or any(str(a).endswith("ForSequenceClassification") for a in architectures)):
        raise ValueError(f"{str(folder)!r} has no classification head: its config.json names "
                         f"architectures {architectures or 'none'}, not a *ForSequenceClassification class. "
                         "A reward model is a sequence-classification folder: train one with "
                         "`gencycle reward train BACKBONE --data FILE --out DIR`")
    if "T5ForSequenceClassification" in architectures and SECTION not in hf:
        raise ValueError("transformers' T5ForSequenceClassification (encoder and decoder, the decoder state at "
                         "the last EOS) is not supported; a gencycle T5 classifier reads the encoder "
                         "(train one with `gencycle reward train T5_FOLDER ...`)")
    return hf


def load_classifier(path: str | Path, dtype=None, device=None) -> SequenceClassifier:
    """A classification folder (gencycle's or transformers') as a SequenceClassifier in eval mode.

    The result has `id2label` ({index: name}) and `source` (the folder) attributes. An untied
    decoder's folder has no LM head: the backbone then has none either (`lm_head` is None).
    """
    folder = assets.resolve(path)
    hf = read_classification_config(folder)
    family = family_of(hf)
    section = hf.get(SECTION, {})
    config = family.config_from_hf(hf)
    if section.get("backbone") == "encoder" and config.architecture == "encoder-decoder":
        config = encoder_config(config)
    config = config.replace(mlm_head=False, pooler=section.get("pooler", config.pooler))
    if hf.get("pad_token_id") is not None:
        config = config.replace(pad_token_id=hf["pad_token_id"])
    pooling = section.get("pooling") or HF_POOLING.get(config.family)
    native = section.get("layout", "transformers") == "transformers"

    state = read_weights(folder)
    head_prefix = "" if native else GENCYCLE_HEAD
    head_names = ("classifier.", "score.") if native else (GENCYCLE_HEAD,)
    head = {k.removeprefix(head_prefix): v for k, v in state.items() if k.startswith(head_names)}
    if not head:
        raise ValueError(f"{str(folder)!r} has no classification head: its weights hold no "
                         f"{' / '.join(n + 'weight' for n in head_names)} tensor")
    body = {k: v for k, v in state.items() if not k.startswith(head_names)}
    weight = head.get("classifier.weight", head.get("score.weight"))
    if weight is None:
        raise ValueError(f"{str(folder)!r}: the classification head has no weight (found {sorted(head)})")
    num_labels = weight.shape[0]

    headless = config.has_decoder and not config.tie_embeddings and "lm_head.weight" not in body
    backbone = Transformer(config.replace(tie_embeddings=True) if headless else config)
    load_hf_state(backbone, family, body)
    if headless:  # the folder has no LM head (transformers' classes have none): neither has the backbone
        backbone.config, backbone.lm_head = config, None
    classifier = SequenceClassifier(backbone, num_labels, pooling)
    expected = {k: v for k, v in classifier.state_dict().items() if not k.startswith("backbone.")}
    if set(head) != set(expected):
        raise ValueError(f"{str(folder)!r}: the head holds {sorted(head)}, a {pooling!r}-pooled classifier "
                         f"needs {sorted(expected)}")
    for name, tensor in head.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise ValueError(f"{str(folder)!r}: head tensor {name!r} has shape {tuple(tensor.shape)}, "
                             f"expected {tuple(expected[name].shape)}")
    classifier.load_state_dict(head, strict=False)  # the backbone's are in place; the head's checked above
    names = {int(k): v for k, v in (hf.get("id2label") or {}).items()}
    classifier.id2label = _labels(names if len(names) == num_labels else None, num_labels)
    classifier.source = str(folder)
    return classifier.to(device=device or default_device(), dtype=resolve_dtype(dtype)).eval()
