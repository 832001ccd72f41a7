"""A tiny random chat model folder for fast tests: HF Llama weights + a byte-level BPE tokenizer.

Built with `transformers` / `tokenizers` (no download): `tokenizer.json`, `tokenizer_config.json`
(with a ChatML chat template, like SmolLM2's) and the model saved by `save_pretrained` next to it.
"""

import json

import torch

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# A small DialogSum-format set (dialogues and summaries written for these tests).
RECORDS = [
    ("t1", "#Person1#: Do you like pizza?\n#Person2#: Yes, with cheese.", "#Person2# likes pizza with cheese.", "food"),
    ("t2", "#Person1#: Is it raining?\n#Person2#: No, it is sunny today.", "#Person2# says it is sunny.", "weather"),
    ("t3", "#Person1#: Where is the station?\n#Person2#: Turn left at the bank.",
     "#Person2# gives #Person1# directions to the station.", "directions"),
    ("t4", "#Person1#: I lost my keys.\n#Person2#: Check your coat pocket.",
     "#Person1# lost the keys and #Person2# suggests the coat pocket.", "keys"),
    ("t5", "#Person1#: Can we meet at noon?\n#Person2#: Sure, see you then.", "They agree to meet at noon.", "meeting"),
    ("t6", "#Person1#: What a good film!\n#Person2#: The ending was sad though.",
     "#Person1# liked the film; #Person2# found the ending sad.", "film"),
]


def records(ids=None):
    return [{"id": i, "dialogue": d, "summary": s, "topic": t} for i, d, s, t in RECORDS if ids is None or i in ids]


def write_dialogsum(folder, splits={"train": ("t1", "t2", "t3"), "test": ("t4", "t5", "t6")}):
    """A folder of DialogSum-format JSONL split files."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, ids in splits.items():
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records(ids)))
    return folder


def save_tiny_chat_model(folder, context=512):
    """Save a tiny random Llama and its tokenizer into `folder`; returns the folder."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    texts = [f"Summarize the following conversation.\n\n{d}\n\nSummary: {s}" for _, d, s, _ in RECORDS]
    backend.train_from_iterator(texts * 5, trainer)
    folder.mkdir(parents=True, exist_ok=True)
    backend.save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
              "chat_template": CHATML, "model_max_length": context}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=backend.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=64, max_position_embeddings=context,
        eos_token_id=backend.token_to_id("<|im_end|>"), pad_token_id=backend.token_to_id("<|endoftext|>")))
    model.save_pretrained(folder)
    return folder
