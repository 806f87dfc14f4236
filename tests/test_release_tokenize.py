"""The release's caption tokenisation, reproduced offline, against the release's own calls.

- BERT (``at_bert`` and ESA_BERT): the reference is the release's statements run on
  transformers' slow Python ``BertTokenizer`` (``basic_tokenizer.tokenize``, then
  ``wordpiece_tokenizer.tokenize`` per word, ``[CLS]``/``[SEP]``, ``convert_tokens_to_ids``),
  ours is :class:`meet.encoders.release_text.BertWordpiece` (the Rust ``tokenizers`` library).
- BiGRU (``at`` and ESA_BIGRU): the reference is the release's own call,
  ``nltk.tokenize.word_tokenize(str(caption).lower())``, with NLTK loading its English Punkt
  model from a ``punkt_tab`` folder the test writes from the tables we ship (through NLTK's
  own loader); ours calls NLTK's Punkt and word tokenizer directly. The tables themselves are
  checked against outputs NLTK documents for its real English model.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from release_fixtures import (nltk_with_punkt as punkt_data, release_bert_ids, release_esa_bigru_tokens,
                              release_meet_bigru_tokens, slow_bert_tokenizer, write_bert_folder, write_vocab)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

AWKWARD = [
    "A man riding a bike down the street.",
    "Two dogs' toys, aren't they? Yes!",
    "He said: \"don't\" -- (it's 20,000 $; 3.5%)...",
    "A man. A dog. Mr. Smith at St. Paul's on Jan. 5. at 3 p.m. in the U.S.",
    "Café naïve résumé façade Ångström ÉCOLE",
    "unknownword xxxxxxxxxxxx supercalifragilistic",
    "Greek ΟΔΟΣ and ΣΑΣ; İstanbul; straße; ﬁne",
    "中文 caption 汉字 and emoji 🙂🐕 ☃",
    "tabs\tand\nnewlines\r\nand\u00a0nbsp\u2003em space",
    "zero\u200bwidth soft\u00adhyphen \x00null \ufffdreplacement \x07bell",
    "[CLS] [SEP] [MASK] [PAD] <start> <end> <unk>",
    "'quoted' ``double'' \"quotes\" ''",
    "e-mail, self-driving; a/b; 1/2; #hashtag @user",
    "",
    "   ",
    ".",
    "lone \ud800 surrogate",
    "back\\slash and 'single' and \"double\" quotes in one",
    " ".join(["a very long caption with many words"] * 40),
    "an elderly woman , sitting on a bench , is feeding pigeons .",
]
"""Punctuation, contractions, numbers, accents, unknown words, multiple sentences and
abbreviations, CJK, emoji, control and zero-width characters, typed special tokens, quotes,
empty and very long captions."""


# --- BERT ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory) -> Path:
    return write_bert_folder(tmp_path_factory.mktemp("bert"))


def test_bert_ids_equal_the_releases(bert_folder):
    from meet.encoders.release_text import BertWordpiece

    slow = slow_bert_tokenizer(bert_folder)
    ours = BertWordpiece.from_bert_folder(bert_folder)
    ids = ours.encode(AWKWARD, max_len=10_000)
    for caption, got in zip(AWKWARD, ids):
        assert got == release_bert_ids(slow, caption), caption
    # the vocabulary is tiny on purpose: many words are [UNK]; the wordpieces must agree too
    for caption in AWKWARD:
        pieces = [p for w in slow.basic_tokenizer.tokenize(caption) for p in slow.wordpiece_tokenizer.tokenize(w)]
        assert ours.tokens(caption) == pieces, caption


def test_bert_basic_tokens_equal_the_releases_on_a_full_vocabulary(bert_folder, tmp_path):
    """With every word of the captions in the vocabulary nothing hides behind [UNK]."""
    from meet.encoders.release_text import BertWordpiece

    slow = slow_bert_tokenizer(bert_folder)
    words = sorted({w for c in AWKWARD for w in slow.basic_tokenizer.tokenize(c)})
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *words]) + "\n",
                                        encoding="utf-8")
    slow, ours = slow_bert_tokenizer(tmp_path), BertWordpiece.from_bert_folder(tmp_path)
    for caption in AWKWARD:
        assert ours.encode([caption], 10_000)[0] == release_bert_ids(slow, caption), caption
    assert "ς" in ours.tokens("ΟΔΟΣ")[0]  # final sigma, as Python's lower() makes it


def test_bert_captions_longer_than_the_position_table_are_cut(bert_folder):
    from meet.encoders.release_text import BertWordpiece

    ids = BertWordpiece.from_bert_folder(bert_folder).encode(["a man " * 100], max_len=40)[0]
    assert len(ids) == 40 and ids[0] == 2 and ids[-1] == 3  # [CLS] ... [SEP]


# --- BiGRU (NLTK) -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def nltk_with_punkt(tmp_path_factory):
    pytest.importorskip("nltk")
    with punkt_data(tmp_path_factory.mktemp("nltk_data")) as nltk:
        yield nltk


def test_the_punkt_tables_reproduce_nltks_documented_english_model():
    """The punkt module's doctest output (NLTK's real English model): abbreviations and
    initials do not end sentences, a lower-case word may start one. Without the tables
    Punkt splits after 'Mr.'."""
    from meet.encoders.release_text import sent_tokenize, word_tokenize

    text = ("Punkt knows that the periods in Mr. Smith and Johann S. Bach\ndo not mark sentence "
            "boundaries.  And sometimes sentences\ncan start with non-capitalized words.  i is a "
            "good variable\nname.")
    assert sent_tokenize(text) == [
        "Punkt knows that the periods in Mr. Smith and Johann S. Bach\ndo not mark sentence boundaries.",
        "And sometimes sentences\ncan start with non-capitalized words.", "i is a good variable\nname."]
    muffins = "Good muffins cost $3.88\nin New York.  Please buy me\ntwo of them.\n\nThanks."
    assert word_tokenize(muffins) == ["Good", "muffins", "cost", "$", "3.88", "in", "New", "York", ".",
                                      "Please", "buy", "me", "two", "of", "them", ".", "Thanks", "."]


def test_bigru_tokens_equal_the_releases(nltk_with_punkt):
    from meet.encoders.release_text import release_caption_text, word_tokenize

    captions = [c for c in AWKWARD if "\ud800" not in c]  # the release could not encode it either
    for caption in captions:
        assert word_tokenize(release_caption_text(caption, True).lower()) == \
            release_meet_bigru_tokens(nltk_with_punkt, caption), caption
        assert word_tokenize(release_caption_text(caption, False).lower()) == \
            release_esa_bigru_tokens(nltk_with_punkt, caption), caption
    # the binary-mode form really is what the release sees: its first word starts with b'
    assert release_meet_bigru_tokens(nltk_with_punkt, "A dog.")[0] == "b'a"


def test_bigru_ids_equal_the_releases(nltk_with_punkt, tmp_path):
    """``vocab('<start>')``, ``vocab(token)`` (unknown -> ``<unk>``), ``vocab('<end>')``."""
    import json

    from meet.encoders.release_text import WordVocab

    path = write_vocab(tmp_path / "vocab.json")
    word2idx = json.loads(path.read_text())["word2idx"]
    vocab = WordVocab.load(path)

    def release(tokens: list[str]) -> list[int]:
        return [word2idx["<start>"], *(word2idx.get(t, word2idx["<unk>"]) for t in tokens), word2idx["<end>"]]

    for caption in AWKWARD[:8]:
        assert vocab.encode(caption, True) == release(release_meet_bigru_tokens(nltk_with_punkt, caption))
        assert vocab.encode(caption, False) == release(release_esa_bigru_tokens(nltk_with_punkt, caption))
    assert vocab.encode("A man riding a bike down the street.", False)[1:4] == [
        word2idx["a"], word2idx["man"], word2idx["riding"]]
