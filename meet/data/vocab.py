"""Word vocabulary for the BiGRU text encoder, built from the training captions.

The order is deterministic (frequency descending, then alphabetical), so two builds from
the same captions give the same ids and a checkpoint's ``vocab.json`` can be compared by
eye. Ids 0 and 1 are reserved: ``<pad>`` (the embedding's ``padding_idx``) and ``<unk>``.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from meet.errors import ConfigError, DataError

PAD_TOKEN = "<pad>"
UNK_TOKEN = "<unk>"
PAD_ID = 0
UNK_ID = 1
SPECIAL_TOKENS = (PAD_TOKEN, UNK_TOKEN)

VOCAB_FORMAT = "meet-vocab"
"""Tag stored in ``vocab.json`` so a foreign JSON file is rejected with a clear error."""

_WORD = re.compile(r"[^\W_]+")
"""Runs of letters or digits (Unicode aware): punctuation and underscores split words,
digits are kept ("2 circles" keeps its count)."""


def tokenize_text(text: str) -> list[str]:
    """Lowercase ``text`` and split it into words (letters/digits runs).

    >>> tokenize_text("A red circle, left of 2 squares!")
    ['a', 'red', 'circle', 'left', 'of', '2', 'squares']
    """
    return _WORD.findall(text.lower())


class Vocabulary:
    """Map words to ids and back; ``<pad>`` = 0, ``<unk>`` = 1."""

    def __init__(self, words: Sequence[str]):
        """``words`` in id order, starting with the special tokens."""
        words = list(words)
        if tuple(words[:2]) != SPECIAL_TOKENS:
            raise DataError(f"vocabulary must start with {list(SPECIAL_TOKENS)}, "
                            f"got {words[:2]}")
        if len(set(words)) != len(words):
            duplicates = sorted(w for w, n in Counter(words).items() if n > 1)
            raise DataError(f"vocabulary has duplicate words {duplicates[:10]}")
        self._words = words
        self._ids = {word: index for index, word in enumerate(words)}

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int = 1) -> "Vocabulary":
        """Words seen at least ``min_count`` times, most frequent first, ties alphabetical."""
        if min_count < 1:
            raise ConfigError(f"min_count must be >= 1, got {min_count}")
        counts: Counter[str] = Counter()
        for caption in captions:
            counts.update(tokenize_text(caption))
        for special in SPECIAL_TOKENS:
            counts.pop(special, None)
        kept = sorted((w for w, n in counts.items() if n >= min_count),
                      key=lambda w: (-counts[w], w))
        return cls([*SPECIAL_TOKENS, *kept])

    def __len__(self) -> int:
        return len(self._words)

    def __contains__(self, word: str) -> bool:
        return word in self._ids

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self._words == other._words

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} words)"

    @property
    def words(self) -> list[str]:
        """All words in id order (a copy)."""
        return list(self._words)

    def word_id(self, word: str) -> int:
        return self._ids.get(word, UNK_ID)

    def encode(self, text: str) -> list[int]:
        """Ids of ``tokenize_text(text)``; unknown words map to ``<unk>``, "" to []."""
        return [self._ids.get(word, UNK_ID) for word in tokenize_text(text)]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Words for ``ids`` (padding dropped); for showing what the model saw."""
        return [self._words[i] for i in ids if i != PAD_ID]

    def save(self, path: str | Path) -> None:
        """Write ``{"format": "meet-vocab", "version": 1, "words": [...]}`` as JSON."""
        payload = {"format": VOCAB_FORMAT, "version": 1, "words": self._words}
        Path(path).write_text(json.dumps(payload, ensure_ascii=False, indent=0) + "\n",
                              encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "Vocabulary":
        """Read a file written by :meth:`save`; :class:`DataError` if missing or malformed."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"vocabulary file not found: {path}",
                            fix="a BiGRU checkpoint needs its vocab.json next to the weights")
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"vocabulary file {path} is not valid JSON: {exc}",
                            fix="rebuild it from the training captions") from exc
        if not isinstance(payload, dict) or payload.get("format") != VOCAB_FORMAT:
            raise DataError(f"{path} is not a MEET vocabulary (missing format tag)",
                            fix="rebuild it from the training captions")
        words = payload.get("words")
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise DataError(f"vocabulary file {path}: 'words' must be a list of strings",
                            fix="rebuild it from the training captions")
        try:
            return cls(words)
        except DataError as exc:
            raise DataError(f"vocabulary file {path}: {exc.message}",
                            fix="rebuild it from the training captions") from exc
