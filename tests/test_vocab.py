"""Vocabulary: tokenisation, deterministic build order, encode, JSON save/load errors."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meet.data.vocab import PAD_ID, UNK_ID, Vocabulary, tokenize_text
from meet.errors import ConfigError, DataError


def test_tokenize_text_lowercases_splits_punctuation_keeps_digits():
    assert tokenize_text("A Red circle, left of 2 squares!") == \
        ["a", "red", "circle", "left", "of", "2", "squares"]
    assert tokenize_text("snake_case -- x3") == ["snake", "case", "x3"]
    assert tokenize_text("Café crème") == ["café", "crème"]
    assert tokenize_text("") == []
    assert tokenize_text("?!.") == []


def test_build_orders_by_frequency_then_alphabet_after_specials():
    vocab = Vocabulary.build(["b a c", "a b", "a d", "c"])
    # counts: a 3, b 2, c 2, d 1
    assert vocab.words == ["<pad>", "<unk>", "a", "b", "c", "d"]
    assert len(vocab) == 6
    assert vocab.word_id("<pad>") == PAD_ID and vocab.word_id("<unk>") == UNK_ID


def test_build_min_count_drops_rare_words():
    vocab = Vocabulary.build(["b a c", "a b", "a d", "c"], min_count=2)
    assert vocab.words == ["<pad>", "<unk>", "a", "b", "c"]
    assert "d" not in vocab
    with pytest.raises(ConfigError, match="min_count"):
        Vocabulary.build(["a"], min_count=0)


def test_build_ignores_special_tokens_in_captions():
    vocab = Vocabulary.build(["<pad> <unk> a"])
    # tokenize_text splits "<pad>" into "pad": the specials stay unique
    assert vocab.words[:2] == ["<pad>", "<unk>"]
    assert len(set(vocab.words)) == len(vocab)


def test_encode_maps_unknown_words_to_unk_and_empty_to_nothing():
    vocab = Vocabulary.build(["a red circle", "a blue square"])
    ids = vocab.encode("A red hexagon!")
    assert ids == [vocab.word_id("a"), vocab.word_id("red"), UNK_ID]
    assert vocab.encode("") == []
    assert vocab.decode(ids + [PAD_ID, PAD_ID]) == ["a", "red", "<unk>"]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.text(alphabet="abcde 12,.", max_size=20), max_size=12),
       st.integers(min_value=1, max_value=3))
def test_build_matches_an_obvious_reference(captions, min_count):
    vocab = Vocabulary.build(captions, min_count=min_count)
    counts = Counter(word for caption in captions for word in tokenize_text(caption))
    expected = sorted((w for w, n in counts.items() if n >= min_count),
                      key=lambda w: (-counts[w], w))
    assert vocab.words == ["<pad>", "<unk>", *expected]
    for caption in captions:
        ids = vocab.encode(caption)
        words = tokenize_text(caption)
        assert ids == [expected.index(w) + 2 if w in expected else UNK_ID for w in words]


def test_save_load_round_trip(tmp_path):
    vocab = Vocabulary.build(["a red circle", "zwei Kreise", "2 circles"])
    path = tmp_path / "vocab.json"
    vocab.save(path)
    loaded = Vocabulary.load(path)
    assert loaded == vocab
    assert loaded.encode("a red circle") == vocab.encode("a red circle")


def test_load_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="not found"):
        Vocabulary.load(tmp_path / "nope.json")


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "not a MEET vocabulary"),
    (json.dumps({"format": "other", "words": []}), "not a MEET vocabulary"),
    (json.dumps({"format": "meet-vocab", "words": "abc"}), "list of strings"),
    (json.dumps({"format": "meet-vocab", "words": ["<pad>", "<unk>", 3]}), "list of strings"),
    (json.dumps({"format": "meet-vocab", "words": ["a", "<unk>"]}), "must start with"),
    (json.dumps({"format": "meet-vocab", "words": ["<pad>", "<unk>", "a", "a"]}), "duplicate"),
])
def test_load_malformed_file_is_rejected_clearly(tmp_path, content, message):
    path = tmp_path / "vocab.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message) as info:
        Vocabulary.load(path)
    assert str(path) in str(info.value)
