"""A byte-level BPE tokenizer trained locally, carrying GLM-4.6's special tokens.

Nothing is downloaded: the training text is generated from a seed, and the vocabulary
is trained to exactly the model's `vocab_size`, so every id the model can sample
decodes to text (a smaller tokenizer on a larger vocabulary decodes most ids to nothing).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from glmserve.common.catalogue import PAD_TOKEN, SPECIAL_TOKENS

_ONSETS = ("", "b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "st", "tr", "ch")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ea", "ou")
_CODAS = ("", "", "n", "r", "s", "t", "l", "nd", "ng", "ck")
# Text the platform itself produces or parses, so that JSON, tool arguments and code
# tokenize into reasonably short sequences.
_FRAGMENTS = (
    '{"',
    '": "',
    '", "',
    '"}',
    "[",
    "]",
    "{",
    "}",
    ":",
    ",",
    ".",
    "?",
    "!",
    "\n",
    "  ",
    "    ",
    "true",
    "false",
    "null",
    "def ",
    "return ",
    "import ",
    "class ",
    "self",
    "()",
    "=",
    "==",
    "+",
    "-",
    "*",
    "/",
    "_",
    "#",
    "'",
    "(",
    ")",
    "<",
    ">",
    "0",
    "1",
    "2",
    "3",
    "4",
    "5",
    "6",
    "7",
    "8",
    "9",
    "10",
    "100",
    "celsius",
    "fahrenheit",
    "city",
    "location",
    "weather",
)


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(rng.randint(1, 3)))


def training_text(seed: int, lines: int = 20_000) -> Iterator[str]:
    rng = random.Random(seed)
    for _ in range(lines):
        parts = []
        for _ in range(rng.randint(4, 16)):
            parts.append(rng.choice(_FRAGMENTS) if rng.random() < 0.2 else _word(rng))
        line = " ".join(parts)
        yield line.capitalize() if rng.random() < 0.3 else line


def train_tokenizer(vocab_size: int, seed: int) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(training_text(seed), trainer=trainer)
    learned = tokenizer.get_vocab_size()
    if learned != vocab_size - len(SPECIAL_TOKENS):
        raise RuntimeError(
            f"BPE training learned {learned} tokens, expected {vocab_size - len(SPECIAL_TOKENS)}; "
            "the generated corpus is too small for this vocabulary"
        )
    # Special tokens go last, as in GLM-4.6 (its specials start at id 151329).
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    if tokenizer.get_vocab_size() != vocab_size:
        raise RuntimeError(f"tokenizer has {tokenizer.get_vocab_size()} tokens, model has {vocab_size}")
    return tokenizer


def write_tokenizer(out: Path, vocab_size: int, seed: int, chat_template: str) -> dict[str, int]:
    """Writes tokenizer.json, tokenizer_config.json and chat_template.jinja; returns special ids."""
    tokenizer = train_tokenizer(vocab_size, seed)
    tokenizer.save(str(out / "tokenizer.json"))
    ids: dict[str, int] = {}
    for tok in SPECIAL_TOKENS:
        token_id = tokenizer.token_to_id(tok)
        assert token_id is not None, tok
        ids[tok] = token_id
    added = {
        str(ids[tok]): {
            "content": tok,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for tok in SPECIAL_TOKENS
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": added,
        "additional_special_tokens": [t for t in SPECIAL_TOKENS if t != PAD_TOKEN],
        "eos_token": PAD_TOKEN,
        "pad_token": PAD_TOKEN,
        "clean_up_tokenization_spaces": False,
        "do_lower_case": False,
        "model_max_length": 1_000_000_000,
        "padding_side": "left",
        "remove_space": False,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "chat_template.jinja").write_text(chat_template)
    return ids
