"""Tiny random models and tokenizers built offline from a config, for tests and benchmarks."""

from __future__ import annotations

import string
from typing import Any

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def tiny_tokenizer(*, chat_template: bool = True) -> Any:
    """A character-level fast tokenizer: every printable ASCII character is one token."""
    # heavy: imported on use, not at start-up
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
    vocab = {token: i for i, token in enumerate(specials + list(dict.fromkeys(string.printable)))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>",
                                        bos_token="<s>", eos_token="</s>",
                                        additional_special_tokens=specials[4:])
    if chat_template:
        tokenizer.chat_template = CHAT_TEMPLATE
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
