"""The app on the MEET release's model over a precomputed-feature gallery: a release file
converted on the fly (``--checkpoint model_best.pth.tar --vocab ...`` / ``--bert``), a precomp
split as the gallery, thumbnails from raw images through the split's id file (a placeholder
naming the id where an image is missing), image queries from the gallery only (the page says
why: region features cannot be computed from an upload), and every Redundancy and Efficiency
view. A browser test drives the page (Debian's Chromium), with screenshots to
``MEET_SCREENSHOTS`` when set.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import release_fixtures as rf
from test_release import CAPTIONS, files  # noqa: F401  (fixture: release-format checkpoint files)

N_IMAGES = 40


@pytest.fixture(scope="module")
def gallery(files, tmp_path_factory):  # noqa: F811
    """A precomp split, raw images for every other id (Flickr30K-style ``{id}.jpg``) and the
    split's id file with one line per caption (five per image, as SCAN ships it)."""
    root = tmp_path_factory.mktemp("precomp-gallery")
    data = root / "f30k_precomp"
    data.mkdir()
    regions = rf.REGIONS  # the BiGRU variant's VisualSA has one BatchNorm channel per region slot
    np.save(data / "test_ims.npy", np.random.default_rng(7).standard_normal((N_IMAGES, regions, rf.IMG_DIM)).astype(np.float32))
    captions = [f"{CAPTIONS[i % 4]} {rf.WORDS[i % len(rf.WORDS)]} {i}" for i in range(5 * N_IMAGES)]
    (data / "test_caps.txt").write_text("\n".join(captions) + "\n")
    ids = [str(1000000 + 17 * i) for i in range(N_IMAGES)]
    (data / "test_ids.txt").write_text("".join(f"{image_id}\n" * 5 for image_id in ids))
    images = root / "flickr30k-images"
    images.mkdir()
    rng = np.random.default_rng(8)
    for image_id in ids[::2]:
        colour = tuple(int(c) for c in rng.integers(40, 255, 3))
        Image.new("RGB", (96, 72), colour).save(images / f"{image_id}.jpg")
    return {"data": data, "images": images, "ids": data / "test_ids.txt", "id_list": ids}


@pytest.fixture(scope="module")
def settings(files, gallery, tmp_path_factory):  # noqa: F811
    from app.settings import AppSettings

    return AppSettings(checkpoint=str(files["meet_bigru"]), vocab=str(files["vocab"]), data=str(gallery["data"]),
                       images=str(gallery["images"]), image_ids=str(gallery["ids"]),
                       cache_dir=str(tmp_path_factory.mktemp("app-cache")))


@pytest.fixture(scope="module")
def state(settings):
    from app.state import load_state

    return load_state(settings, report=lambda line: None)


def test_the_release_file_is_converted_and_the_precomp_gallery_indexed(state, gallery):
    assert state.model.cfg.model.image_encoder == "release_bigru" and state.model.kind == "precomp"
    assert (state.gallery.dataset.n_images, state.gallery.dataset.n_captions) == (N_IMAGES, 5 * N_IMAGES)
    assert state.gallery.reads_region_features and state.gallery.image_labels == gallery["id_list"]
    for position in (0, 1):  # an image that exists, and one the folder lacks: a placeholder naming its id
        path = Path(state.gallery.thumbnail(position))
        assert path.is_file()
        if position % 2 == 0:
            assert path.parent == gallery["images"]
        else:
            assert path.parent == state.gallery.placeholder_dir and Image.open(path).size == (128, 128)


def test_searches_and_every_view_work_on_the_precomp_gallery(state):
    from app import efficiency_tab, redundancy_tab
    from app.search import image_search, text_search
    from meet.errors import ImageError

    text = text_search(state, "a man riding a bike", k=5)
    assert (text.result.ids >= 0).all() and text.relevant is None
    image = image_search(state, 3, k=5)
    assert image.relevant is not None and image.relevant.sum() == 5  # the protocol's own five captions
    with pytest.raises(ImageError, match="region features"):
        image_search(state, Image.new("RGB", (32, 32)))
    release = text_search(state, "a dog", k=5, mode="release")
    assert "release re-sort" in release.trace.notes[0]
    for figure_set in (redundancy_tab.codebook_figures(state), redundancy_tab.bit_figures(state),
                       redundancy_tab.aggregate_figure(state)):
        assert all(item is not None for item in figure_set)
    assert redundancy_tab.recall_cost(state, "t2i", progress=lambda *a, **k: None) is not None
    views = redundancy_tab.query_views(state, image)
    assert len(views[1]) > 0 or len(views[2]) > 0  # what the filters removed, with thumbnails
    rows = efficiency_tab.measure(state, "t2i", n_queries=32, repeats=1)
    assert {row["mode"] for row in rows} >= {"dense", "cascade", "meet", "release"}


def test_the_page_offers_gallery_image_queries_only(state):
    from app.layout import build_demo

    demo = build_demo(state)
    config = demo.get_config_file()
    kinds = {component["type"] for component in config["components"]}
    assert "image" not in kinds and "sketchpad" not in kinds  # no upload, no sketch
    notes = [c["props"].get("value", "") for c in config["components"] if c["type"] == "markdown"]
    assert any("region features" in str(value) for value in notes)
    assert any("Your gallery is not available with this model" in str(value) for value in notes)
    assert "file" not in kinds  # no upload field in Your gallery either


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None and os.environ.get("MEET_REQUIRE_BROWSER") != "1",
                    reason="Debian's chromium is not installed")
def test_the_page_in_a_browser(settings, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    from benchmarks.app_server import start_app

    log = tmp_path / "server.log"
    args = ["--checkpoint", settings.checkpoint, "--vocab", settings.vocab, "--data", settings.data,
            "--images", settings.images, "--image-ids", settings.image_ids]
    process, url, _, _ = start_app(Path(settings.cache_dir), log, timeout=180, args=args)
    shots = os.environ.get("MEET_SCREENSHOTS")
    shot = (lambda page, name: page.screenshot(path=str(Path(shots) / f"release-{name}.png"), full_page=True)
            ) if shots else (lambda page, name: None)
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                                 args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url, wait_until="load", timeout=60_000)
            page.locator("#header").wait_for(timeout=30_000)
            assert "release_bigru" in page.locator("#header").inner_text()
            page.locator("#text-query textarea").fill("a man riding a bike")
            page.locator("#text-search").click()
            page.locator("#text-summary").get_by_text("a man riding a bike").wait_for(timeout=30_000)
            page.wait_for_function("""sel => { const i = [...document.querySelectorAll(sel)];
                return i.length > 0 && i.every(x => x.complete && x.naturalWidth > 0); }""",
                                   arg="#text-results img", timeout=30_000)
            assert page.locator("#text-results img").count() == 10
            page.locator("#text-funnel .js-plotly-plot").wait_for(timeout=30_000)
            shot(page, "1-text-query")
            page.get_by_role("tab", name="Image → captions", exact=True).click()
            page.locator("#no-upload-note").get_by_text("region features").wait_for(timeout=30_000)
            page.locator("#image-picker img").nth(2).click()
            page.locator("#image-summary").wait_for(timeout=30_000)
            page.locator("#image-funnel .js-plotly-plot").wait_for(timeout=30_000)
            shot(page, "2-image-query")
            browser.close()
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_the_redundancy_notebook_runs_on_the_release_model(settings, monkeypatch):
    """The notebook's parameters: a release file (converted on the fly), a precomp split."""
    from test_notebooks import NOTEBOOK, _run

    for name, value in (("MEET_CHECKPOINT", settings.checkpoint), ("MEET_VOCAB", settings.vocab),
                        ("MEET_DATA", settings.data), ("MEET_SPLIT", "test"), ("MEET_CACHE", settings.cache_dir)):
        monkeypatch.setenv(name, value)
    for name in ("MEET_BERT", "MEET_RERANKER"):
        monkeypatch.delenv(name, raising=False)
    markdown, summary = _run(NOTEBOOK)
    assert summary["data"] == "f30k_precomp/test" and summary["ground_truth"] == "the data set's own pairs"
    assert summary["misleading_negatives"] is None and "Skipped" in markdown
    assert set(summary["modes"]) == {"dense", "hash", "pq", "cascade", "meet"}
