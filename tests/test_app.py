"""The app's logic without a server: settings, start-up, both searches against Shapes ground
truth, bad input, and every tab's handler on the default gallery."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from app import efficiency_tab, redundancy_tab, search_tab
from app.feedback import guarded, user_message
from app.search import cascade_from_controls, image_search, results_json, text_search
from app.settings import AppSettings, from_args, from_env
from app.state import load_state
from meet.data.shapes import parse_caption
from meet.errors import ConfigError, DataError, ImageError


def test_settings_come_from_env_then_flags(tmp_path):
    env = {"MEET_PORT": "8001", "GRADIO_SERVER_NAME": "0.0.0.0", "MEET_SHARE": "no"}
    assert (from_env(env).port, from_env(env).host, from_env(env).share) == (8001, "0.0.0.0", False)
    settings = from_args(["--port", "9000", "--share"], environ=env)
    assert (settings.port, settings.host, settings.share) == (9000, "0.0.0.0", True)
    assert AppSettings().share is False
    with pytest.raises(ConfigError):
        from_env({"MEET_PORT": "seventy"})
    with pytest.raises(SystemExit):
        from_args(["--port", "70000"], environ={})
    assert from_env({"MEET_HAMMING_INDEX": "ivf"}).hamming_index == "ivf"
    with pytest.raises(SystemExit):
        from_args(["--hamming-index", "hnsw"], environ={})


def test_default_state_is_the_shapes_test_split(app_state):
    gallery = app_state.gallery
    assert (gallery.dataset.n_images, gallery.dataset.n_captions) == (1000, 5000)
    assert gallery.images.ids[0] == "021000.png"  # same images as the benchmark's test split
    assert gallery.truth.captions(np.arange(5000)).shape == (5000, 1000) and app_state.device_label == "CPU"


def test_cached_index_is_reused_and_a_corrupt_one_rebuilt(app_state, app_cache):
    lines: list[str] = []
    again = load_state(AppSettings(cache_dir=str(app_cache)), report=lines.append)
    assert any("loaded the cached gallery index" in line for line in lines)
    assert np.array_equal(again.gallery.images.codes, app_state.gallery.images.codes)
    dense = next((app_cache / "indexes").glob("*/image/dense.npy"))
    dense.write_bytes(dense.read_bytes()[:-64])  # truncate: the checksum must catch it
    lines.clear()
    rebuilt = load_state(AppSettings(cache_dir=str(app_cache)), report=lines.append)
    assert any("unusable" in line and "rebuilding" in line for line in lines)
    assert np.array_equal(rebuilt.gallery.images.codes, app_state.gallery.images.codes)


def test_the_app_indexes_in_the_checkpoints_quantization_space(tiny_run, tiny_shapes, tmp_path):
    """The app builds its index with the checkpoint's own Stage II settings, and the cache
    tells them apart: the same weights with ``pq_space="residual"`` in config.json get a
    residual-space index, not the cached hash-space one (the app once built a hash-space
    index whatever the checkpoint said, keyed only by weights and data)."""
    from meet.checkpoint import resolve_checkpoint

    hashed = tmp_path / "hash-space"
    shutil.copytree(resolve_checkpoint(tiny_run), hashed)
    residual = tmp_path / "residual-space"
    shutil.copytree(hashed, residual)
    config = json.loads((residual / "config.json").read_text())
    config["cascade"]["pq_space"] = "residual"
    (residual / "config.json").write_text(json.dumps(config))
    cache = tmp_path / "cache"
    settings = dict(data=str(tiny_shapes), split="test", cache_dir=str(cache))
    first = load_state(AppSettings(checkpoint=str(hashed), **settings), report=lambda line: None)
    lines: list[str] = []
    second = load_state(AppSettings(checkpoint=str(residual), **settings), report=lines.append)
    assert first.gallery.images.pq_space == "hash" and second.gallery.images.pq_space == "residual"
    assert not any("loaded the cached" in line for line in lines)
    assert len(list((cache / "indexes").iterdir())) == 2
    assert second.gallery.texts.quantizer.codebooks.shape[2] == second.model.cfg.model.embed_dim
    # --hamming-index ivf: the inverted lists are built with (and cached in) a third index
    lists = load_state(AppSettings(checkpoint=str(hashed), hamming_index="ivf", **settings), report=lambda line: None)
    assert lists.cascade.hamming_index == "ivf" and len(list((cache / "indexes").iterdir())) == 3
    assert lists.gallery.images._inverted and lists.gallery.texts._inverted
    outcome = text_search(lists, "a red circle", k=3)
    assert outcome.result.ids.shape == (1, 3) and (outcome.result.ids >= 0).all()


def test_text_search_finds_relevant_images(app_state):
    outcome = text_search(app_state, "a red circle", k=10)
    relevant = outcome.relevant
    assert relevant is not None and relevant.sum() > 10
    top = outcome.result.ids[0]
    assert relevant[top].mean() >= 0.8  # the bundled model's single-object P@10 is ~0.92
    payload = results_json(app_state, outcome)
    assert [r["rank"] for r in payload["results"]] == list(range(1, 11))
    scores = [r["score"] for r in payload["results"]]
    assert scores == sorted(scores, reverse=True)
    assert payload["stages"] == {"gallery": 1000, "after_hamming": 600, "after_pq": 360, "reranked": 360}
    json.dumps(payload)


def test_image_search_from_the_gallery_uses_ground_truth(app_state):
    outcome = image_search(app_state, 0, k=5)
    assert outcome.relevant is not None and outcome.relevant[outcome.result.ids[0][0]]
    payload = results_json(app_state, outcome)
    captions = [r["caption"] for r in payload["results"]]
    scene = app_state.gallery.dataset.scenes[0]
    from meet.data.shapes import is_relevant
    assert all(is_relevant(parse_caption(c), scene) for c in captions[:3])


def test_uploaded_and_sketched_images_search_without_ground_truth(app_state, tmp_path):
    path = app_state.gallery.image_paths[3]
    upload = image_search(app_state, path, k=5)
    by_position = image_search(app_state, 3, k=5)
    assert upload.relevant is None
    assert list(upload.result.ids[0]) == list(by_position.result.ids[0])
    sketch = {"composite": np.full((64, 64, 4), 255, np.uint8)}
    assert image_search(app_state, sketch, k=3).result.ids.shape == (1, 3)


@pytest.mark.parametrize("query", ["", "   ", None])
def test_empty_queries_are_refused(app_state, query):
    with pytest.raises(DataError, match="empty"):
        text_search(app_state, query)


def test_bad_inputs_get_clear_errors(app_state, tmp_path):
    with pytest.raises(DataError, match="characters"):
        text_search(app_state, "a red circle " * 200)
    big = tmp_path / "big.png"
    Image.new("RGB", (5000, 4000)).save(big)  # 20 megapixels, over the app's 16 MP limit
    with pytest.raises(ImageError, match="too large"):
        image_search(app_state, str(big))
    not_image = tmp_path / "notes.png"
    not_image.write_text("this is not an image")
    with pytest.raises(ImageError, match="cannot decode"):
        image_search(app_state, str(not_image))
    with pytest.raises(ImageError, match="empty"):
        image_search(app_state, {"composite": None})
    with pytest.raises(DataError, match="does not exist"):
        image_search(app_state, 10**6)
    for bad in ({"hamming_rate": 7.0}, {"pq_rate": 0.0}, {"top_z": -3}, {"alpha": float("nan")}):
        with pytest.raises(ConfigError):
            cascade_from_controls(app_state.cascade, "t2i", **bad)
    with pytest.raises(ConfigError):
        text_search(app_state, "a red circle", k=10**9)


def test_guarded_handlers_turn_errors_into_messages():
    import gradio as gr

    def fails_for_user():
        raise DataError("the query is empty", fix="type a caption")

    def has_a_bug():
        raise KeyError("internal detail")
    with pytest.raises(gr.Error, match="the query is empty. What to do: type a caption"):
        guarded(fails_for_user, outputs=1, in_page=False)()
    with pytest.warns(UserWarning, match="the query is empty"):  # gr.Warning outside a request
        kept = guarded(fails_for_user, outputs=2)()  # in the page: a warning, the outputs unchanged
    assert kept == (gr.skip(), gr.skip())
    with pytest.raises(gr.Error) as info:
        guarded(has_a_bug, outputs=1)()
    assert "internal detail" not in str(info.value) and "KeyError" in str(info.value)
    assert "What to do" not in user_message(RuntimeError("x"))


def test_sliders_change_the_cascade(app_state):
    narrow = text_search(app_state, "a red circle", 10,
                         cascade_from_controls(app_state.cascade, "t2i", hamming_rate=0.1, pq_rate=0.5))
    assert narrow.result.stage_counts["after_hamming"] == 100 and narrow.result.stage_counts["after_pq"] == 50


def test_search_tab_handlers(app_state):
    controls = (10, "meet", 0.6, 0.6, 12, 0.1, 0.1)
    ranked, dense, funnel, text, outcome = search_tab.run_text(app_state, "a small blue star", *controls)
    assert len(ranked) == len(dense) == 10 and ranked[0][1][0] in "✓✗"
    assert funnel.data and "Hamming" in text and "a small blue star" in funnel.layout.title.text
    rows, dense_rows, funnel, text, outcome = search_tab.run_image(app_state, 5, *controls)
    assert len(rows) == 10 and rows[0][1][0] in "✓✗" and isinstance(rows[0][2], float)


def test_redundancy_tab_numbers(app_state):
    *codebook_figs, codebook_text = redundancy_tab.codebook_figures(app_state)
    assert all(fig.data for fig in codebook_figs) and "Dead codewords" in codebook_text
    *bit_figs, bit_text = redundancy_tab.bit_figures(app_state)
    assert all(fig.data for fig in bit_figs) and "Effective number of bits" in bit_text
    figure, text = redundancy_tab.aggregate_figure(app_state)
    assert figure.data and "t2i" in text
    outcome = text_search(app_state, "a red circle", 10)
    views = redundancy_tab.query_views(app_state, outcome)
    assert views[0].data and views[3].data and views[4].data
    assert len(views[1]) <= redundancy_tab.REMOVED_SHOWN


def test_efficiency_tab_measures_every_mode(app_state):
    rows = efficiency_tab.measure(app_state, "t2i", n_queries=64, repeats=1)
    assert [row["mode"] for row in rows] == list(efficiency_tab.MODES)
    assert rows[0]["speedup_batched"] == pytest.approx(1.0)
    assert all(row["batched_ms"] > 0 for row in rows)
    assert [r[1] for r in efficiency_tab.bytes_table(app_state)][:2] == [8, 8]


@pytest.mark.parametrize("mode", ["dense", "hash", "pq"])
def test_exhaustive_modes_have_no_funnel_but_still_answer(app_state, mode):
    controls = (5, mode, 0.6, 0.6, 12, 0.1, 0.1)
    ranked, dense, funnel, text, outcome = search_tab.run_text(app_state, "a red circle", *controls)
    assert len(ranked) == 5 and funnel is None and "Ground truth" in text
    views = redundancy_tab.query_views(app_state, outcome)
    assert views[0] is None and "no filters" in views[-1]


def test_a_plain_image_folder_with_captions_is_a_gallery(app_state, tmp_path):
    import shutil

    folder = tmp_path / "photos"
    folder.mkdir()
    names = []
    for position in range(6):
        source = app_state.gallery.image_paths[position]
        names.append(f"photo{position}.png")
        shutil.copy(source, folder / names[-1])
    captions = tmp_path / "captions.txt"
    lines = [f"{name}\t{app_state.gallery.dataset.captions[app_state.gallery.dataset.captions_of(i)[0]]}"
             for i, name in enumerate(names)]
    captions.write_text("\n".join(lines) + "\n", encoding="utf-8")
    state = load_state(AppSettings(data=str(folder), captions=str(captions), cache_dir=str(tmp_path / "cache")),
                       report=lambda line: None)
    assert not state.gallery.has_ground_truth and state.gallery.images.ids == names
    exact = text_search(state, lines[2].split("\t")[1], k=3)
    assert exact.relevant is not None and exact.relevant.sum() >= 1  # the caption's own image
    assert results_json(state, exact)["results"][0]["id"] in names
    assert text_search(state, "anything at all", k=2).relevant is None
    payload = results_json(state, image_search(state, 1, k=3))
    # fractional rates on 6 captions: R = 0.3 * 6 -> 2, q = 0.5 * 2 -> 1 survivor
    assert payload["stages"]["after_pq"] == len(payload["results"]) == 1


@pytest.mark.parametrize("settings", [dict(checkpoint="/no/such/checkpoint"), dict(data="/no/such/folder")])
def test_unusable_checkpoint_or_gallery_is_a_clear_error(settings, tmp_path):
    from meet.errors import MEETError

    with pytest.raises(MEETError) as info:
        load_state(AppSettings(cache_dir=str(tmp_path), **settings), report=lambda line: None)
    assert "/no/such" in str(info.value)


def test_the_error_page_says_why():
    from app.layout import build_error_demo

    demo = build_error_demo("checkpoint not found: /x (check the path)")
    texts = [block.value for block in demo.blocks.values() if hasattr(block, "value") and isinstance(block.value, str)]
    assert any("checkpoint not found: /x" in text for text in texts)


def test_cached_analyses_run_once_under_concurrent_first_requests(app_state):
    import threading
    import time

    calls = []

    def slow() -> int:
        calls.append(1)
        time.sleep(0.2)
        return 42
    threads = [threading.Thread(target=app_state.cached, args=("test-once", slow)) for _ in range(4)]
    for thread in threads:
        thread.start()
    assert app_state.cached("test-other", lambda: 7) == 7  # another key is not blocked meanwhile
    for thread in threads:
        thread.join()
    assert calls == [1] and app_state.cached("test-once", slow) == 42


def test_the_filter_and_reweighting_views_quote_the_committed_investigation(tmp_path):
    """Every number in the two texts comes from the committed ablation table."""
    from app import evidence

    table = evidence.load()
    assert table is not None, "assets/investigation/small/ablation.json is committed"
    filtering, reweighting = evidence.filtering_text(table), evidence.reweighting_text(table)
    full = next(row for row in table["rows"] if row["name"] == "full" and row["mode"] == "meet")
    assert f"{full['t2i_relevant_kept']:.3f} (t2i)" in filtering and f"{full['dense_rsum']:.1f}" in filtering
    paper = next(p for p in table["rerank"] if p["model"] == "full" and p["point"] == evidence.PAPER_POINT)
    assert f"rSum {paper['effects']['rsum']['mean']:+.1f}" in reweighting
    reweight = next(e for e in table["effects"] if e["name"] == "reweight")
    assert f"rSum {reweight['effects']['rsum']['mean']:+.1f}" in reweighting
    assert "AUC" in reweighting and "seed(s) " + ", ".join(map(str, table["seeds"])) in reweighting
    # a copy without the investigation (or a damaged file) says so instead of failing
    assert evidence.load(tmp_path / "missing.json") is None
    (tmp_path / "bad.json").write_text("{")
    assert evidence.load(tmp_path / "bad.json") is None
    assert "No committed investigation" in evidence.filtering_text(None)
    assert "No committed investigation" in evidence.reweighting_text(None)


def test_ground_truth_is_computed_per_query_and_equals_the_full_matrix(app_state):
    """The gallery keeps facts and scenes (linear), not the caption x image matrix; any
    rows it computes equal that matrix's rows and columns."""
    from meet.data.shapes import relevance_matrix

    gallery = app_state.gallery
    full = relevance_matrix(gallery.dataset.caption_facts, gallery.dataset.scenes)
    rows = np.array([0, 7, 4999, 7])
    np.testing.assert_array_equal(gallery.truth.captions(rows), full[rows])
    np.testing.assert_array_equal(gallery.truth.images([3, 999]), full[:, [3, 999]].T)
    assert not any(isinstance(v, np.ndarray) and v.ndim == 2 and v.shape == full.shape
                   for v in vars(gallery.truth).values())


def test_the_app_serves_its_index_memory_mapped_cold_and_warm(app_state, app_cache):
    """The gallery index is built once, then read from the cache's files (memory-mapped),
    also right after a cold build: the process holds the pages it touches, not the arrays."""
    for index in (app_state.gallery.images, app_state.gallery.texts):
        assert isinstance(index.dense, np.memmap) and not index.dense.flags.writeable
    again = load_state(AppSettings(cache_dir=str(app_cache)), report=lambda line: None)
    assert isinstance(again.gallery.texts.dense, np.memmap)


def test_typed_and_image_ground_truth_match_the_full_matrix(app_state):
    """Both per-query paths (scenes encoded once; the distinct facts' tables cached) agree
    with the relevance matrix computed from scratch."""
    from meet.data.shapes import parse_caption, relevance_matrix

    dataset, truth = app_state.gallery.dataset, app_state.gallery.truth
    queries = ["a red circle", "two shapes", "a small blue square above a green star"]
    np.testing.assert_array_equal(truth.of_facts([parse_caption(q) for q in queries]),
                                  relevance_matrix([parse_caption(q) for q in queries], dataset.scenes))
    rows = [0, 17, 999]
    np.testing.assert_array_equal(truth.images(rows), relevance_matrix(dataset.caption_facts,
                                                                       [dataset.scenes[r] for r in rows]).T)


def test_pairing_ground_truth_without_facts():
    from types import SimpleNamespace

    from app.ground_truth import GroundTruth

    dataset = SimpleNamespace(caption_image=np.array([0, 0, 1, 2, 2]), n_images=3, scenes=None, caption_facts=None)
    truth = GroundTruth.of(dataset)
    assert not truth.from_facts
    np.testing.assert_array_equal(truth.captions([1, 3]), [[True, False, False], [False, False, True]])
    np.testing.assert_array_equal(truth.images([2]), [[False, False, False, True, True]])


def test_the_all_query_views_sample_a_large_gallery(app_state, monkeypatch):
    """Above AGGREGATE_QUERIES the aggregate views use evenly spaced queries, with the
    ground truth of exactly those queries, and say so."""
    from app import redundancy_tab

    monkeypatch.setattr(redundancy_tab, "AGGREGATE_QUERIES", 600)
    rows = redundancy_tab.query_positions(app_state, "t2i")
    assert len(rows) == 600 and rows[0] == 0 and rows[-1] == 4999 and np.all(np.diff(rows) > 0)
    assert len(redundancy_tab.query_positions(app_state, "i2t")) == 600
    relevant = redundancy_tab.relevant_for(app_state, "t2i")
    np.testing.assert_array_equal(relevant, app_state.gallery.truth.captions(rows))
    queries = redundancy_tab.all_queries(app_state, "t2i")
    np.testing.assert_array_equal(queries.codes, app_state.gallery.texts.codes[rows])
    assert "t2i: 600 of 5,000" in redundancy_tab._queries_used(app_state)
    monkeypatch.setattr(redundancy_tab, "AGGREGATE_QUERIES", 5000)
    assert redundancy_tab._queries_used(app_state) == "every query of the gallery"


@pytest.mark.parametrize("panel", ["captions", "images"])
def test_a_picker_click_reaches_the_handler_with_the_clicked_image(app_state, panel):
    """gradio passes the click's SelectData only to an annotated parameter: the Image ->
    images picker once unpacked it from *args and never received it."""
    import gradio as gr
    from gradio.helpers import special_args

    from app.search_tab import picker_handler, run_image, run_similar

    handler = picker_handler(app_state, run_image if panel == "captions" else run_similar, outputs=6)
    controls = [5, "cascade", 0.6, 0.6, 12, 0.1, 0.1]
    inputs, *_ = special_args(handler, list(controls), None, gr.SelectData(None, {"index": 3, "value": None}))
    assert isinstance(inputs[-1], gr.SelectData)
    result = handler(*inputs)
    assert len(result) == 6 and result[-1] == 3
