"""Tests for the Shapes benchmark: determinism, layout, ground truth, parsing, CLI."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from meet.data import shapes
from meet.data.images import open_image
from meet.data.shapes import (COLOURS, FAMILIES, SHAPES, SIZES, encode_facts, encode_scenes,
                              ensure_shapes, generate, is_relevant, parse_caption,
                              relevance_matrix, single_object_queries, attribute_queries)
from meet.data.shapes import render, writer
from meet.errors import ConfigError, DataError

SMALL = dict(n_train=20, n_val=5, n_test=5, seed=3, image_size=48, progress=False)


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("one") / "shapes", **SMALL)


@pytest.fixture(scope="module")
def records() -> list[dict]:
    """300 records without pixels (captions and scenes only: fast)."""
    return [render.make_record(11, i, 64, "test", None) for i in range(300)]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _scene(*objects: tuple[str, str, str, float, float]) -> dict:
    return {"objects": [{"shape": s, "colour": c, "size": z, "x": x, "y": y}
                        for s, c, z, x, y in objects]}


def test_vocabulary_is_shared_by_renderer():
    assert set(render.COLOUR_RGB) == set(COLOURS)
    assert set(render.DRAWERS) == set(SHAPES)
    assert set(render.RADIUS_FRACTION) == set(SIZES) == set(shapes.SIZE_WORDS)
    assert set(shapes.FAMILY_WEIGHTS) == set(FAMILIES)


def test_generation_is_deterministic_and_independent_of_workers(small_set, tmp_path):
    again = generate(tmp_path / "again", **{**SMALL, "workers": 2})
    assert _files(small_set) == _files(again)
    other_seed = generate(tmp_path / "other", **{**SMALL, "seed": 4})
    assert _files(other_seed)["dataset.json"] != _files(small_set)["dataset.json"]


def test_dataset_json_layout(small_set):
    text = (small_set / "dataset.json").read_text()
    data = json.loads(text)
    assert text == json.dumps(data, sort_keys=True, separators=(",", ":"))
    assert (data["dataset"], data["seed"], data["image_size"]) == ("shapes", 3, 48)
    images = data["images"]
    assert [r["split"] for r in images] == ["train"] * 20 + ["val"] * 5 + ["test"] * 5
    for index, record in enumerate(images):
        assert set(record) == {"filename", "filepath", "split", "imgid", "sentids", "scene",
                               "sentences"}
        assert record["imgid"] == index and record["filename"] == f"{index:06d}.png"
        assert record["sentids"] == [5 * index + j for j in range(5)]
        assert 1 <= len(record["scene"]["objects"]) <= 3
        for sentence in record["sentences"]:
            assert set(sentence) == {"raw", "tokens", "sentid", "imgid", "facts"}
            assert sentence["imgid"] == index
            assert sentence["tokens"] == shapes.tokenize(sentence["raw"])
            assert all(t.isalpha() and t.islower() for t in sentence["tokens"])
            facts = sentence["facts"]
            assert set(facts) == {"family", "objects", "relation", "count", "exact"}
            assert facts["family"] in FAMILIES
        assert [s["sentid"] for s in record["sentences"]] == record["sentids"]
        image = open_image(small_set / record["filepath"] / record["filename"])
        assert image.mode == "RGB" and image.size == (48, 48)
    assert not any(p.name.startswith(".") for p in small_set.parent.iterdir())


def test_object_centre_pixels_have_the_object_colour(small_set):
    data = json.loads((small_set / "dataset.json").read_text())
    palette = np.array([render.COLOUR_RGB[c] for c in COLOURS], dtype=float)
    for record in data["images"]:
        pixels = np.asarray(open_image(small_set / "images" / record["filename"]), dtype=float)
        for obj in record["scene"]["objects"]:
            centre = pixels[int(obj["y"]), int(obj["x"])]
            nearest = COLOURS[int(np.argmin(((palette - centre) ** 2).sum(axis=1)))]
            assert nearest == obj["colour"], (record["filename"], obj)


def test_every_caption_fits_its_own_image(records):
    for record in records:
        for sentence in record["sentences"]:
            assert is_relevant(sentence["facts"], record["scene"]), sentence["raw"]


def test_families_cover_all_templates(records):
    seen = {s["facts"]["family"] for r in records for s in r["sentences"]}
    assert seen == set(FAMILIES)
    assert all(r["sentences"][0]["facts"]["family"] == "all_objects" for r in records)


def test_objects_differ_clearly_in_x_and_y(records):
    cell = 64 / 3
    for record in records:
        objects = record["scene"]["objects"]
        for obj in objects:
            assert 0 < obj["x"] < 64 and 0 < obj["y"] < 64
        for a, b in itertools.combinations(objects, 2):
            assert abs(a["x"] - b["x"]) > 0.8 * cell and abs(a["y"] - b["y"]) > 0.8 * cell


def _tricky_facts() -> list[dict]:
    red_circle = {"shape": "circle", "colour": "red", "size": None}
    anything = {"shape": None, "colour": None, "size": None}
    return [
        {"family": "relation", "objects": [red_circle, anything], "count": None, "exact": False,
         "relation": {"subject": 1, "object": 0, "relation": "above"}},
        {"family": "all_objects", "objects": [anything, anything], "relation": None, "count": 3,
         "exact": True},  # contradictory: never relevant
        {"family": "one_object", "objects": [anything] * 3, "relation": None, "count": None,
         "exact": False},
        {"family": "count", "objects": [], "relation": None, "count": 1, "exact": False},
    ]


def test_relevance_matrix_matches_reference(records):
    subset = records[:100]
    facts = [s["facts"] for r in subset for s in r["sentences"]] + _tricky_facts()
    scenes = [r["scene"] for r in subset]
    expected = np.array([[is_relevant(f, s) for s in scenes] for f in facts])
    fast = relevance_matrix(facts, scenes)
    assert fast.dtype == bool and fast.shape == (len(facts), len(scenes))
    np.testing.assert_array_equal(fast, expected)
    tiny_blocks = relevance_matrix(encode_facts(facts), encode_scenes(scenes), block_elements=7)
    np.testing.assert_array_equal(tiny_blocks, expected)
    assert not fast[-3].any() and fast[-2].any()


def _random_facts(rng: np.random.Generator, n: int) -> list[dict]:
    """Arbitrary facts, not only template ones: nulls anywhere, any relation slots."""
    facts = []
    for _ in range(n):
        n_patterns = int(rng.integers(0, 4))
        patterns = [{key: (None if rng.random() < 0.5 else str(rng.choice(vocab)))
                     for key, vocab in (("shape", SHAPES[:2]), ("colour", COLOURS[:2]),
                                        ("size", SIZES))} for _ in range(n_patterns)]
        relation = None
        if n_patterns >= 2 and rng.random() < 0.5:
            subject, other = (int(i) for i in rng.choice(n_patterns, size=2, replace=False))
            relation = {"subject": subject, "object": other,
                        "relation": str(rng.choice(shapes.RELATIONS))}
        count = int(rng.integers(1, 4)) if rng.random() < 0.2 else None
        facts.append({"family": "one_object", "objects": patterns, "relation": relation,
                      "count": count, "exact": bool(rng.random() < 0.2)})
    return facts


def test_relevance_matrix_matches_reference_on_arbitrary_facts():
    rng = np.random.default_rng(0)
    facts = _random_facts(rng, 400)
    scenes = []
    for _ in range(80):  # a small vocabulary makes repeated objects (injectivity) common
        n_objects = int(rng.integers(1, 4))
        cells = rng.permutation(3)[:n_objects], rng.permutation(3)[:n_objects]
        scenes.append(_scene(*[(str(rng.choice(SHAPES[:2])), str(rng.choice(COLOURS[:2])),
                                str(rng.choice(SIZES)), 10.0 + 20 * cx, 10.0 + 20 * cy)
                               for cx, cy in zip(*cells)]))
    expected = np.array([[is_relevant(f, s) for s in scenes] for f in facts])
    assert 0.05 < expected.mean() < 0.95
    np.testing.assert_array_equal(relevance_matrix(facts, scenes, block_elements=1000), expected)


def test_encoding_rejects_malformed_facts_and_scenes():
    bad_colour = {"objects": [{"shape": "circle", "colour": "teal", "size": None}],
                  "relation": None, "count": None, "exact": False}
    bad_slots = {"objects": [{"shape": "circle", "colour": None, "size": None}],
                 "relation": {"subject": 0, "object": 1, "relation": "above"},
                 "count": None, "exact": False}
    for facts in (bad_colour, bad_slots):
        with pytest.raises(DataError):
            encode_facts([facts])
    with pytest.raises(DataError):
        encode_scenes([{"objects": []}])


def test_parsed_captions_have_the_stored_relevance(records):
    facts = [s["facts"] for r in records for s in r["sentences"]]
    parsed = [parse_caption(s["raw"]) for r in records for s in r["sentences"]]
    assert all(p is not None for p in parsed)
    for stored, found in zip(facts, parsed):
        assert {k: v for k, v in found.items() if k != "family"} == \
            {k: v for k, v in stored.items() if k != "family"}
        assert found["family"] == stored["family"] or (
            stored["family"] == "rephrased" and found["family"] == "one_object")
    scenes = [r["scene"] for r in records]
    np.testing.assert_array_equal(relevance_matrix(parsed, scenes), relevance_matrix(facts, scenes))


@pytest.mark.parametrize("text", ["hello", "", "two red circles", "a red blue circle",
                                  "a red circle above", "a red circle in the garden"])
def test_parse_rejects_text_outside_the_grammar(text):
    assert parse_caption(text) is None


def test_parse_handles_case_punctuation_and_synonyms():
    facts = parse_caption("There is a BIG, grey Hexagon!")
    assert facts["objects"] == [{"shape": "hexagon", "colour": "gray", "size": "large"}]
    assert parse_caption("Something purple.")["objects"] == [
        {"shape": None, "colour": "purple", "size": None}]
    assert parse_caption("a star that is tiny and blue")["objects"] == [
        {"shape": "star", "colour": "blue", "size": "small"}]
    assert parse_caption("three things")["count"] == 3
    only_two = parse_caption("only two shapes")
    assert only_two["count"] == 2 and not only_two["exact"]


def test_left_of_and_above_semantics():
    # red circle bottom-left, blue star top-right (y grows downwards)
    scene = _scene(("circle", "red", "large", 10.0, 50.0), ("star", "blue", "small", 50.0, 10.0))
    truth = {"a red circle to the left of a blue star": True,
             "a red circle left of a star": True,
             "a red circle to the right of a blue star": False,
             "a red circle below a blue star": True,
             "a red circle above a blue star": False,
             "a blue star above a red circle": True,
             "a blue star to the left of a red circle": False,
             "a red circle to the left of a red circle": False}
    facts = [parse_caption(text) for text in truth]
    assert [is_relevant(f, scene) for f in facts] == list(truth.values())
    assert relevance_matrix(facts, [scene])[:, 0].tolist() == list(truth.values())
    # hand-built ties (never generated): equal x is neither left nor right
    tied = _scene(("circle", "red", "large", 30.0, 50.0), ("star", "blue", "small", 30.0, 10.0))
    sideways = [parse_caption("a red circle left of a blue star"),
                parse_caption("a red circle right of a blue star")]
    assert [is_relevant(f, tied) for f in sideways] == [False, False]
    assert not relevance_matrix(sideways, [tied]).any()


def test_count_exact_and_injectivity_semantics():
    one = _scene(("circle", "red", "small", 10.0, 10.0))
    two = _scene(("circle", "red", "small", 10.0, 10.0), ("star", "blue", "large", 50.0, 50.0))
    three = _scene(("circle", "red", "small", 10.0, 10.0), ("star", "blue", "large", 50.0, 50.0),
                   ("circle", "red", "large", 30.0, 30.0))
    scenes = [one, two, three]
    truth = {"a single shape": [True, False, False],
             "two objects": [False, True, False],
             "there are three things": [False, False, True],
             "a red circle": [True, True, True],
             "only a red circle": [True, False, False],
             "a red circle and a blue star": [False, True, False],
             "a red circle with a blue star": [False, True, True],
             "a red circle, a red circle and a blue star": [False, False, True],
             "a small red circle and a large red circle": [False, False, False],
             "a large red circle to the right of a small red circle": [False, False, True]}
    facts = [parse_caption(text) for text in truth]
    expected = np.array(list(truth.values()))
    reference = np.array([[is_relevant(f, s) for s in scenes] for f in facts])
    np.testing.assert_array_equal(reference, expected)
    np.testing.assert_array_equal(relevance_matrix(facts, scenes), expected)


def test_single_object_queries_parse():
    queries = single_object_queries()
    assert len(queries) == len(set(queries)) == len(COLOURS) * len(SHAPES) * (1 + len(SIZES))
    assert "a red circle" in queries and "a small blue star" in queries
    assert "an orange circle" in queries
    for query in queries:
        facts = parse_caption(query)
        assert facts is not None and len(facts["objects"]) == 1 and facts["objects"][0]["shape"]


def test_attribute_queries_each_name_one_attribute_and_match_its_images():
    """"something red" is relevant exactly to the scenes with a red object, and so on."""
    groups = attribute_queries()
    assert [len(groups[a]) for a in ("colour", "shape", "size")] == [len(COLOURS), len(SHAPES), len(SIZES)]
    scenes = [{"objects": [{"shape": "circle", "colour": "red", "size": "small", "x": 10.0, "y": 10.0}]},
              {"objects": [{"shape": "star", "colour": "blue", "size": "large", "x": 10.0, "y": 10.0}]}]
    queries = ["something red", "a star", "something small"]
    assert all(q in groups["colour"] + groups["shape"] + groups["size"] for q in queries)
    relevance = relevance_matrix([parse_caption(q) for q in queries], scenes)
    np.testing.assert_array_equal(relevance, [[True, False], [False, True], [True, False]])


@pytest.mark.parametrize("bad", [["--image-size", "16"], ["--n-train", "-1"], ["--workers", "0"],
                                 ["--n-train", "0", "--n-val", "0", "--n-test", "0"],
                                 ["--seed", "-2"], ["--n-test", "many"]])
def test_cli_rejects_bad_arguments_and_writes_nothing(tmp_path, bad, capsys):
    with pytest.raises(SystemExit) as exit_info:
        shapes.main(["--out", str(tmp_path / "out"), *bad])
    assert exit_info.value.code == 2
    assert "error" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_python_dash_m_entry_point(tmp_path):
    """``python -m meet.data.shapes`` runs the package's CLI (exit 2 on a bad argument)."""
    done = subprocess.run([sys.executable, "-m", "meet.data.shapes", "--out", str(tmp_path / "out"),
                           "--image-size", "16"], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 2 and "image_size" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_cli_refuses_non_empty_folder_unless_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    args = ["--out", str(out), "--n-train", "4", "--n-val", "1", "--n-test", "1", "--quiet"]
    with pytest.raises(SystemExit) as exit_info:
        shapes.main(args)
    assert exit_info.value.code == 2
    assert _files(out) == {"keep.txt": b"mine"}
    assert shapes.main(args + ["--overwrite"]) == 0
    assert (out / "dataset.json").is_file() and not (out / "keep.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging left over


def test_crash_leaves_no_half_written_data_set(tmp_path, monkeypatch):
    def explode(task):
        raise RuntimeError("disk full")
    monkeypatch.setattr(render, "render_chunk", explode)
    with pytest.raises(RuntimeError):
        generate(tmp_path / "out", n_train=3, n_val=0, n_test=0, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_ensure_shapes_reuses_and_checks(small_set, monkeypatch):
    def must_not_run(*args, **kwargs):
        raise AssertionError("regenerated a cached data set")
    monkeypatch.setattr(writer, "generate", must_not_run)
    assert ensure_shapes(small_set, **SMALL) == small_set
    with pytest.raises(DataError):
        ensure_shapes(small_set, **{**SMALL, "seed": 5})


def test_generate_validates_arguments(tmp_path):
    with pytest.raises(ConfigError):
        generate(tmp_path / "x", n_train=5, image_size=31, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_one_split_alone_equals_that_split_of_the_full_set(small_set, tmp_path):
    """The app's default gallery renders only the test split: same images, same records."""
    only_test = generate(tmp_path / "test-only", **SMALL, splits=("test",))
    full, part = (json.loads((root / "dataset.json").read_text()) for root in (small_set, only_test))
    full_test = [r for r in full["images"] if r["split"] == "test"]
    assert part["images"] == full_test and part["split_sizes"] == [20, 5, 5]
    images = _files(only_test / "images")
    assert images == {name: data for name, data in _files(small_set / "images").items()
                      if name in {r["filename"] for r in full_test}}
    assert ensure_shapes(only_test, **SMALL, splits=("test",)) == only_test
    with pytest.raises(DataError):
        ensure_shapes(only_test, **SMALL)  # the full set was asked for: not this cache
    with pytest.raises(ConfigError):
        generate(tmp_path / "bad", **SMALL, splits=("tset",))


def test_cli_writes_only_the_asked_splits(tmp_path):
    assert shapes.main(["--out", str(tmp_path / "s"), "--n-train", "4", "--n-val", "2", "--n-test", "3",
                        "--splits", "val,test", "--quiet"]) == 0
    splits = [r["split"] for r in json.loads((tmp_path / "s" / "dataset.json").read_text())["images"]]
    assert splits == ["val"] * 2 + ["test"] * 3
