"""A tiny random BERT folder for RAG tests: `transformers` weights + a word-level tokenizer (no download).

Words outside VOCAB become [UNK]; the tokenizer lowercases and splits on whitespace and punctuation
(BERT's pre-tokenizer), so its offsets map every token back to the text, as a real one's do.
"""

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
VOCAB = SPECIAL + """the a an and or of to in on at is are was it this that with for you i we they he she
cat dog sat mat ran far pizza cheese rain sunny weather station bank left right keys coat pocket film ending sad
noon meet train book books read page pages apple apples box boxes blue red green one two three four five
person1 person2 # : . , ? ! like likes lost found hello hi yes no what where when who how""".split()


def save_tiny_encoder(folder, hidden_size=32, max_position_embeddings=128, seed=0):
    """Save a tiny random BertModel and its tokenizer into `folder`; returns the folder."""
    import torch
    import transformers
    vocab = {w: i for i, w in enumerate(dict.fromkeys(VOCAB))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]",
                                                cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                                model_max_length=max_position_embeddings)
    fast.save_pretrained(folder)
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=hidden_size, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=2 * hidden_size,
                                     max_position_embeddings=max_position_embeddings)
    transformers.BertModel(config).eval().save_pretrained(folder)
    return folder
