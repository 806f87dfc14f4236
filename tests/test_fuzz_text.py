"""Fuzzed captions and queries: the BiGRU and BERT tokenisers, ``MEETModel.encode_texts``
and ``meet.data.shapes.parse_caption``.

Inputs: empty, whitespace only, ~10,000 characters, mixed scripts and emoji, control and
format characters, lone surrogates, only unknown words, word salads from the Shapes
grammar, and non-strings. Every case ends in a correct encoding (finite, unit-norm,
codes consistent with the hash features, batch-independent) or a clear ``MEETError``.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fuzzing
from meet.data.shapes import (COLOURS, NOUNS, SHAPES, is_relevant, parse_caption,
                              relevance_matrix)
from meet.data.shapes.vocab import FAMILIES, MAX_OBJECTS, SIZES
from meet.errors import MEETError
from meet.quantization import pack_codes

FUZZ = settings(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

GRAMMAR_WORDS = [*SHAPES, *COLOURS, *NOUNS, "a", "an", "the", "and", "with", "left", "right", "of",
                 "to", "on", "above", "below", "under", "over", "there", "is", "are", "only", "just",
                 "alone", "in", "scene", "image", "one", "two", "three", "single", "something",
                 "that", "which", "small", "large", "big", "little", "tiny", "grey", "shapes",
                 "circles", ",", "!", "?"]
UNKNOWN_WORDS = ["zebra", "quantum", "xylophone", "blorf", "naïve", "ünïcödé", "北京", "кошка",
                 "سلام", "🙂", "42", "qwertyuiop"]
MIXED = "aé日本語العربيةрусскийहिन्दी한국어😀🚀👩‍👩‍👧 ̃\u200d\u202e\ufeff"

texts = st.one_of(
    st.just(""),
    st.text(alphabet=" \t\n\r\x0b\x0c\u00a0\u2003\u3000", max_size=30),
    st.text(max_size=120),  # any code point but surrogates: scripts, symbols, controls
    st.text(alphabet=st.characters(categories=["Cc", "Cf", "Zl", "Zp", "Co"]), max_size=40),
    st.text(alphabet=MIXED, max_size=60),
    st.lists(st.sampled_from(UNKNOWN_WORDS), min_size=1, max_size=12).map(" ".join),
    st.lists(st.sampled_from(GRAMMAR_WORDS), max_size=14).map(" ".join),
    st.tuples(st.text(min_size=1, max_size=8), st.integers(1, 10_000)).map(
        lambda t: (t[0] * (10_000 // len(t[0]) + 1))[: t[1] if t[1] < 50 else 10_000]),
    st.sampled_from(["\ud800", "a red \udfff circle", "\x00" * 10, "a\x00red circle"]),
)
"""Captions and queries a user can type or paste (10,000 characters at most)."""


@pytest.fixture(scope="module", autouse=True)
def _tally(tmp_path_factory):
    yield from fuzzing.one_thread()
    fuzzing.flush(tmp_path_factory)


@pytest.fixture(scope="module")
def bigru(tiny_run):
    import meet

    return meet.load(tiny_run, device="cpu")


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    """A MEET model with a tiny local BERT text tower (no network)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers = pytest.importorskip("transformers")
    transformers.utils.logging.set_verbosity_error()
    from meet.config import MEETConfig, ModelConfig
    from meet.inference import MEETModel
    from meet.model import build_model

    folder = tmp_path_factory.mktemp("fuzz-bert")
    words = sorted({w for w in GRAMMAR_WORDS if w.isalpha()})
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=5 + len(words), hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32,
                                     max_position_embeddings=32)
    transformers.BertModel(config).save_pretrained(folder)
    transformers.BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    cfg = MEETConfig()
    cfg.model = ModelConfig(image_encoder="precomp", precomp_dim=8, text_encoder="bert",
                            bert_path=str(folder), embed_dim=16, n_bits=16, n_codebooks=4,
                            codebook_size=16, max_text_len=24)
    return MEETModel(build_model(cfg.model), cfg, torch.device("cpu"))


def _check_encoded(model, out, n: int) -> None:
    """The properties every encoding has, whatever the text."""
    m = model.cfg.model
    assert out.dense.shape == (n, m.embed_dim) and out.dense.dtype == np.float32
    assert out.hash.shape == (n, m.n_bits)
    assert np.isfinite(out.dense).all() and np.isfinite(out.hash).all()
    np.testing.assert_allclose(np.linalg.norm(out.dense, axis=1), 1.0, atol=1e-4)
    assert np.abs(out.hash).max(initial=0) <= 1.0
    assert np.array_equal(out.codes, pack_codes(out.hash))
    assert out.pq_codes.shape == (n, m.n_codebooks) and out.pq_codes.max(initial=0) < m.codebook_size


def _encode(category: str, model, batch: list[str]):
    try:
        out = model.encode_texts(batch)
    except MEETError as exc:  # no text is invalid, so this would be a bug; say which
        fuzzing.record(category, fuzzing.outcome_of(exc))
        raise AssertionError(f"valid text rejected: {exc}") from exc
    fuzzing.record(category, "ok")
    _check_encoded(model, out, len(batch))
    return out


@settings(FUZZ, max_examples=250)
@given(batch=st.lists(texts, min_size=1, max_size=4))
def test_bigru_encodes_any_text(bigru, batch):
    out = _encode("text: BiGRU encode_texts", bigru, batch)
    # Padding must not leak: each caption encodes the same alone as in the batch.
    for i, text in enumerate(batch):
        alone = bigru.encode_texts([text])
        np.testing.assert_allclose(alone.dense[0], out.dense[i], atol=2e-5)
    # Truncation at max_text_len: only the first tokens count, so long text is safe.
    tokens = bigru.model.text_encoder.tokenize(batch)
    assert tokens["input_ids"].shape[1] <= bigru.cfg.model.max_text_len
    assert (tokens["lengths"] >= 1).all()  # an empty caption becomes one <unk>


@settings(FUZZ, max_examples=100)
@given(batch=st.lists(texts, min_size=1, max_size=3))
def test_bert_encodes_any_text(bert, batch):
    _encode("text: BERT encode_texts", bert, batch)
    tokens = bert.model.text_encoder.tokenize(batch)
    assert tokens["input_ids"].shape[1] <= bert.cfg.model.max_text_len


NOT_TEXT = st.one_of(st.none(), st.integers(), st.floats(allow_nan=True), st.binary(max_size=10),
                     st.lists(st.text(max_size=3), max_size=2), st.dictionaries(st.text(max_size=2), st.integers(), max_size=1))


@settings(FUZZ, max_examples=60)
@given(before=st.lists(texts, max_size=2), item=NOT_TEXT, single=st.booleans())
def test_non_strings_are_named(bigru, before, item, single):
    batch = "a red circle" if single else [*before, item]
    with pytest.raises(MEETError) as info:
        bigru.encode_texts(batch)
    fuzzing.record("text: non-string input", fuzzing.outcome_of(info.value))
    fuzzing.assert_clear_error(info.value, *(() if single else (f"item {len(before)}",)))


@pytest.fixture(scope="module")
def scenes(tiny_shapes):
    data = json.loads((tiny_shapes / "dataset.json").read_text())
    return [image["scene"] for image in data["images"] if image["split"] == "test"]


ATTRIBUTES = {"shape": set(SHAPES), "colour": set(COLOURS), "size": set(SIZES)}

_noun_phrase = st.tuples(st.sampled_from(["a", "the", "one", "a single", ""]),
                         st.sampled_from(["", "small", "large", "big", "little", "tiny"]),
                         st.sampled_from(["", *COLOURS, "grey"]),
                         st.sampled_from([*SHAPES, *NOUNS])).map(lambda t: " ".join(w for w in t if w))
_relation = st.sampled_from(["to the left of", "left of", "on the right of", "above", "over", "below",
                             "under", "beneath", "underneath", "that is above", "is below"])
_caption = st.one_of(
    _noun_phrase,
    st.tuples(_noun_phrase, _relation, _noun_phrase).map(" ".join),
    st.lists(_noun_phrase, min_size=2, max_size=4).map(" and ".join),
    st.tuples(_noun_phrase, _noun_phrase).map(" with ".join),
    st.tuples(st.sampled_from(["there is", "there are", "only", "just", ""]), _noun_phrase,
              st.sampled_from(["", "alone", "only", "in the scene", "in the picture", "in the room"])).map(" ".join),
    st.tuples(st.sampled_from(["one", "two", "three", "a single", "only two"]),
              st.sampled_from(["shapes", "objects", "things", "shape", "red circles"])).map(" ".join),
    st.tuples(st.just("something"), st.sampled_from(["", *COLOURS]), st.sampled_from(["", "small", "big"]),
              st.sampled_from(["", "that is red", "which is small and blue"])).map(" ".join),
)
grammar_captions = st.tuples(_caption, st.sampled_from(["", ".", "!", ",", "  "]),
                             st.sampled_from([str, str.upper, str.title]),
                             st.one_of(st.none(), st.tuples(st.integers(0, 20), st.sampled_from(
                                 [*UNKNOWN_WORDS, *GRAMMAR_WORDS])))).map(
    lambda t: t[2](_insert(t[0], t[3]) + t[1]))
"""Captions in (or one word away from) the templates' grammar, in any case."""


def _insert(text: str, where_word) -> str:
    if where_word is None:
        return text
    words = text.split()
    at, word = where_word
    words.insert(at % (len(words) + 1), word)
    return " ".join(words)


@settings(FUZZ, max_examples=350)
@given(text=st.one_of(texts, grammar_captions, grammar_captions))
def test_parse_caption_gives_none_or_valid_facts(scenes, text):
    facts = parse_caption(text)
    fuzzing.record("text: parse_caption", "ok (facts)" if facts else "ok (None: outside the grammar)")
    if facts is None:
        return
    assert facts["family"] in FAMILIES
    assert 1 <= len(facts["objects"]) <= MAX_OBJECTS or facts["count"] is not None
    for pattern in facts["objects"]:
        assert set(pattern) == set(ATTRIBUTES)
        assert all(v is None or v in ATTRIBUTES[k] for k, v in pattern.items())
    if facts["relation"] is not None:
        assert len(facts["objects"]) == 2
    # The vectorised ground truth agrees with the obvious definition on real scenes.
    fast = relevance_matrix([facts], scenes)[0]
    assert fast.tolist() == [is_relevant(facts, scene) for scene in scenes]
