"""Tiny random models and tokenizers built offline from a config, for tests and benchmarks."""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def tiny_tokenizer(*, chat_template: bool = True, adds_bos: bool = False) -> Any:
    """A character-level fast tokenizer: every printable ASCII character is one token.

    `adds_bos` makes it behave as Llama's, Mistral's and Gemma's do: the tokenizer puts BOS
    before any text tokenized with special tokens, and the chat template opens with BOS too.
    """
    # heavy: imported on use, not at start-up
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
    vocab = {token: i for i, token in enumerate(specials + list(dict.fromkeys(string.printable)))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    backend.decoder = decoders.Fuse()
    if adds_bos:
        backend.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                               special_tokens=[("<s>", vocab["<s>"])])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>",
                                        bos_token="<s>", eos_token="</s>",
                                        additional_special_tokens=specials[4:])
    if chat_template:
        tokenizer.chat_template = ("{{ bos_token }}" if adds_bos else "") + CHAT_TEMPLATE
    return tokenizer


def tiny_llama(vocab_size: int = 128, *, layers: int = 2, hidden: int = 32, heads: int = 4, seed: int = 0) -> Any:
    """A randomly initialised Llama small enough to run a step in milliseconds."""
    # heavy: imported on use, not at start-up
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads // 2,
                         max_position_embeddings=512, pad_token_id=1, bos_token_id=2, eos_token_id=3,
                         tie_word_embeddings=False)
    return LlamaForCausalLM(config).eval()


def tiny_model_and_tokenizer(**kwargs: Any) -> tuple[Any, Any]:
    tokenizer = tiny_tokenizer(chat_template=kwargs.pop("chat_template", True))
    return tiny_llama(len(tokenizer), **kwargs), tokenizer


def tiny_sentence_encoder(path: Any, *, hidden: int = 32, seed: int = 0) -> Any:
    """Save a randomly initialised one-layer BERT with mean pooling as a sentence-transformers
    directory at `path` (what --embed-model takes); returns the path."""
    # heavy: imported on use, not at start-up
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path = Path(path)
    base = path.with_name(path.name + "-bert")
    base.mkdir(parents=True, exist_ok=True)
    characters = list(dict.fromkeys(string.ascii_lowercase + string.digits + string.punctuation))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + characters + [f"##{c}" for c in characters]
    tokenizer = BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=True)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=hidden * 2, max_position_embeddings=256)
    model = BertModel(config)
    with torch.no_grad():  # let the words, not the positions every text shares, decide the embedding
        model.embeddings.word_embeddings.weight.normal_(0.0, 1.0)
        model.embeddings.position_embeddings.weight.zero_()
        model.embeddings.token_type_embeddings.weight.zero_()
    model.save_pretrained(base)
    tokenizer.save_pretrained(base)
    word = models.Transformer(str(base), max_seq_length=128)
    SentenceTransformer(modules=[word, models.Pooling(hidden, pooling_mode="mean")], device="cpu").save(str(path))
    return path
