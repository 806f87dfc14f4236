"""The app on a CLIP model and a folder of photos: ``--checkpoint`` a CLIP folder (a tiny one
built by the test) fits MEET's codes on the gallery on first use and reuses them; text ->
images, image -> captions and image -> images, with every Redundancy and Efficiency view, on
a captioned folder and an image-only one; the named endpoints through ``gradio_client``; and
"Your gallery" in a browser (Debian's Chromium): three uploads found by a search, and not
seen from a second browser context; uploads land in the app's cache only.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

import clip_fixtures as cf
from meet.errors import DataError

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FIT_STEPS = 60
"""Distillation steps of the app's fit here (the default 600 costs minutes on a busy 2-core CPU)."""


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return cf.tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip", projection_dim=64)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return cf.photo_folder(tmp_path_factory.mktemp("photos"), n_images=72)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("app-cache")


@pytest.fixture(scope="module")
def state(clip_dir, photos, cache):
    from app.settings import AppSettings
    from app.state import load_state

    lines: list[str] = []
    settings = AppSettings(checkpoint=str(clip_dir), data=str(photos[0]), captions=str(photos[1]),
                           cache_dir=str(cache), fit_steps=FIT_STEPS)
    loaded = load_state(settings, report=lines.append)
    loaded.caches["startup lines"] = lines
    return loaded


def test_the_codes_are_fitted_on_first_use_and_reused(state, clip_dir, photos, cache):
    from app.settings import AppSettings
    from app.state import load_state

    lines = state.caches["startup lines"]
    assert any(line.startswith("fitting MEET's codes on 72 images and 144 captions") for line in lines)
    assert any("encoding the gallery with the CLIP towers: 216 of 216" in line for line in lines)
    assert state.backbone == str(clip_dir) and state.model.cfg.model.image_encoder == "clip"
    assert state.model.folder.parent == cache / "fitted" and state.model.cfg.hash_refit.distill_steps == FIT_STEPS
    assert state.model.cfg.fit_codes.n_images == 72 and not state.model.cfg.fit_codes.pseudo_queries
    again: list[str] = []
    second = load_state(AppSettings(checkpoint=str(clip_dir), data=str(photos[0]), captions=str(photos[1]),
                                    cache_dir=str(cache), fit_steps=FIT_STEPS), report=again.append)
    assert second.model.folder == state.model.folder
    assert any("already fitted" in line for line in again) and not any("fitting" in line for line in again)
    from app.layout import header

    assert "fitted on this gallery for the CLIP model" in header(state)


def test_every_search_and_view_works_on_the_clip_gallery(state):
    from app import efficiency_tab, redundancy_tab
    from app.search import image_search, image_to_images, results_json, text_search

    text = text_search(state, "a red circle", k=5)
    assert (text.result.ids >= 0).all() and text.result.stage_counts["gallery"] == 72
    assert state.gallery.images.pq_space == "residual"  # 72 items: enough for the checkpoint's default
    captions = image_search(state, 4, k=5)
    assert captions.relevant is not None and captions.relevant.sum() == 2  # its own two captions
    similar = image_to_images(state, str(state.gallery.image_paths[4]), k=3)
    assert similar.direction == "i2i" and similar.gallery_side == "image" and 4 in similar.result.ids[0]
    answer = results_json(state, similar)
    assert len(answer["results"]) == 3 and all(r["id"].startswith("photo") for r in answer["results"])
    for figure_set in (redundancy_tab.codebook_figures(state), redundancy_tab.bit_figures(state),
                       redundancy_tab.aggregate_figure(state)):
        assert all(item is not None for item in figure_set)
    assert redundancy_tab.recall_cost(state, "t2i", progress=lambda *a, **k: None) is not None
    views = redundancy_tab.query_views(state, similar)
    assert views[0] is not None and "cascade" in views[-1]
    for direction in ("t2i", "i2t", "i2i"):
        rows = efficiency_tab.measure(state, direction, n_queries=8, repeats=1)
        assert {row["mode"] for row in rows} >= {"dense", "cascade", "meet"}


def test_an_image_only_folder(tmp_path_factory):
    from app import efficiency_tab, redundancy_tab
    from app.layout import build_demo
    from app.search import image_search, image_to_images, text_search
    from app.settings import AppSettings
    from app.state import load_state

    clip_dir = cf.tiny_clip(tmp_path_factory.mktemp("clip128") / "clip", projection_dim=128, seed=1)
    images, _ = cf.photo_folder(tmp_path_factory.mktemp("only-images"), n_images=72, captions=False, seed=9)
    lines: list[str] = []
    state = load_state(AppSettings(checkpoint=str(clip_dir), data=str(images), fit_steps=FIT_STEPS,
                                   cache_dir=str(tmp_path_factory.mktemp("cache"))), report=lines.append)
    assert state.model.cfg.fit_codes.pseudo_queries
    assert any("the quantization filter uses the model's own codebooks" in line for line in lines)  # 72 < 128
    assert state.gallery.images.pq_space == "hash"
    assert (text_search(state, "a blue square", k=4).result.ids >= 0).all()
    with pytest.raises(DataError, match="no captions to search"):
        image_search(state, 0)
    assert image_to_images(state, 0, k=4).result.ids[0][0] >= 0
    codebooks, bits, aggregate = (redundancy_tab.codebook_figures(state), redundancy_tab.bit_figures(state),
                                  redundancy_tab.aggregate_figure(state))
    assert codebooks[0] is not None and codebooks[1] is None and "no captions" in codebooks[-1]
    assert bits[0] is not None and "no captions" in bits[-1] and aggregate[0] is None
    assert efficiency_tab.measure(state, "i2i", n_queries=8, repeats=1)
    build_demo(state)


@pytest.fixture(scope="module")
def server(state, clip_dir, photos, cache, tmp_path_factory):
    """``python app.py`` on the same cache (the codes are fitted already), its system temp
    folder a fresh one, to see that uploads go to the app's cache instead."""
    from benchmarks.app_server import start_app

    system_tmp = tmp_path_factory.mktemp("system-tmp")
    log = cache / "server.log"
    process, url, _, _ = start_app(cache, log, timeout=180, env={"TMPDIR": str(system_tmp),
                                                                 "MEET_FIT_STEPS": str(FIT_STEPS)},
                                   args=["--checkpoint", str(clip_dir), "--data", str(photos[0]),
                                         "--captions", str(photos[1])])
    try:
        yield url, system_tmp
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_both_endpoints_through_gradio_client(server, photos):
    from gradio_client import Client, handle_file

    client = Client(server[0], verbose=False)
    answer = client.predict("a red circle", 5, api_name="/search_text")
    assert len(answer["results"]) == 5 and all(r["id"].startswith("photo") for r in answer["results"])
    image = handle_file(str(sorted(photos[0].iterdir())[2]))
    answer = client.predict(image, 4, api_name="/search_image")
    assert len(answer["results"]) == 4 and all("caption" in r for r in answer["results"])
    answer = client.predict(image, 3, "images", api_name="/search_image")
    assert answer["direction"] == "i2i" and all(r["id"].startswith("photo") for r in answer["results"])
    with pytest.raises(Exception, match="neither 'captions' nor 'images'"):
        client.predict(image, 3, "videos", api_name="/search_image")


@pytest.mark.skipif(CHROMIUM is None and os.environ.get("MEET_REQUIRE_BROWSER") != "1",
                    reason="Debian's chromium is not installed")
def test_your_gallery_in_a_browser_is_private_to_its_visitor(server, cache, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    url, system_tmp = server
    uploads = []
    for i, (colour, shape) in enumerate((("red", "circle"), ("blue", "square"), ("green", "circle"))):
        path = tmp_path / f"mine-{colour}-{shape}.png"
        cf.shape_image(colour, shape, (64, 48), seed=100 + i).save(path)
        uploads.append(str(path))
    shots = os.environ.get("MEET_SCREENSHOTS")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=["--no-sandbox", "--disable-gpu"])
        first = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
        first.goto(url, wait_until="load", timeout=60_000)
        first.get_by_role("tab", name="Your gallery").click()
        first.locator("#upload-files input[type=file]").set_input_files(uploads)
        first.locator("#upload-status").get_by_text("Added 3 image(s)").wait_for(timeout=60_000)
        assert first.locator("#my-gallery img").count() == 3
        first.locator("#my-query textarea").fill("a red circle")
        first.locator("#my-search").click()
        first.locator("#my-summary").get_by_text("over your 3 image(s)").wait_for(timeout=30_000)
        first.wait_for_function("sel => document.querySelectorAll(sel).length === 3", arg="#my-results img",
                                timeout=30_000)
        captions = first.locator("#my-results").inner_text()
        assert all(Path(p).name in captions for p in uploads), captions
        if shots:
            first.screenshot(path=str(Path(shots) / "your-gallery.png"), full_page=True)
        second = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
        second.goto(url, wait_until="load", timeout=60_000)
        second.get_by_role("tab", name="Your gallery").click()
        second.locator("#my-query textarea").fill("a red circle")
        second.locator("#my-search").click()
        second.get_by_text("your gallery is empty").first.wait_for(timeout=30_000)
        assert second.locator("#my-gallery img").count() == 0 and second.locator("#my-results img").count() == 0
        assert "mine-red-circle" not in second.content()
        browser.close()
    written = [p for p in system_tmp.rglob("*") if p.is_file()]
    assert not [p for p in written if p.suffix.lower() in (".png", ".webp", ".jpg", ".jpeg")], written
    upload_root = cache / "gradio"
    assert upload_root.is_dir()
    assert not [p for p in upload_root.rglob("mine-*.png")]  # decoded, then deleted


def test_uploads_are_read_within_the_limits(tmp_path):
    import io
    import zipfile

    from app.settings import AppSettings
    from app.uploads import read_uploads
    from meet.errors import ImageError

    settings = AppSettings(max_upload_mb=1, max_zip_mb=2, max_upload_pixels=1_000_000)
    pictures = []
    for i in range(3):
        path = tmp_path / f"p{i}.png"
        cf.shape_image("red", "circle", seed=i).save(path)
        pictures.append(path)
    assert [u.name for u in read_uploads(pictures, settings, room=10)] == ["p0.png", "p1.png", "p2.png"]

    def zipped(name: str, members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> Path:
        path = tmp_path / name
        with zipfile.ZipFile(path, "w", compression=method) as archive:
            for member, data in members.items():
                archive.writestr(member, data)
        return path

    png = pictures[0].read_bytes()
    good = zipped("good.zip", {"a/x.png": png, "__MACOSX/a/._x.png": b"junk", "a/.DS_Store": b"junk", "y.png": png})
    assert [u.name for u in read_uploads([good], settings, room=10)] == ["x.png", "y.png"]
    with pytest.raises(ImageError, match=r"notes.zip/notes.txt is not a usable image"):
        read_uploads([zipped("notes.zip", {"x.png": png, "notes.txt": b"hello"})], settings, room=10)
    with pytest.raises(DataError, match="expands .* times .*zip bomb"):
        read_uploads([zipped("bomb.zip", {"x.png": b"\0" * 900_000})], settings, room=10)
    with pytest.raises(DataError, match="expands to 3 MB; the limit is 2 MB"):
        read_uploads([zipped("big.zip", {f"{i}.png": os.urandom(900_000) for i in range(3)},
                             zipfile.ZIP_STORED)], AppSettings(max_upload_mb=5, max_zip_mb=2), room=10)
    with pytest.raises(ImageError, match="big.zip is 2.6 MB; the limit is 1 MB"):  # the upload limit, first
        read_uploads([tmp_path / "big.zip"], settings, room=10)
    with pytest.raises(DataError, match="room for 2 more"):
        read_uploads([good, pictures[1]], settings, room=2)
    with pytest.raises(DataError, match="not a readable zip"):
        read_uploads([tmp_path / "cut.zip"], settings, room=5) if (tmp_path / "cut.zip").write_bytes(
            good.read_bytes()[:60]) else None
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(png[:40])
    with pytest.raises(ImageError, match="corrupt.png is not a usable image"):
        read_uploads([corrupt], settings, room=5)
    huge = io.BytesIO()
    from PIL import Image

    Image.new("L", (2000, 1000)).save(huge, format="PNG")
    (tmp_path / "huge.png").write_bytes(huge.getvalue())
    with pytest.raises(ImageError, match="too large"):
        read_uploads([tmp_path / "huge.png"], settings, room=5)
    with pytest.raises(DataError, match="no file was uploaded"):
        read_uploads([], settings, room=5)


def test_the_session_gallery_searches_only_its_own_images(app_state, tmp_path):
    """Also with the bundled Shapes model: any model that encodes pixels."""
    from app.your_gallery import SessionGallery, add_images, search

    files = []
    for i, (colour, shape) in enumerate((("red", "circle"), ("blue", "square"), ("yellow", "circle"))):
        path = tmp_path / f"{colour}-{shape}.png"
        cf.shape_image(colour, shape, (64, 64), seed=i).save(path)
        files.append(str(path))
    gallery, note = add_images(app_state, None, files)
    assert len(gallery) == 3 and "holds 3" in note
    assert all(Path(f).exists() for f in files)  # outside gradio's upload folder: never deleted
    items, summary = search(app_state, gallery, "a red circle", 10, "text")
    assert len(items) == 3 and "Hamming kept 3" in summary
    assert {caption.split(" · ")[-1] for _, caption in items} == {Path(f).name for f in files}
    items, _ = search(app_state, gallery, files[1], 2, "image")
    assert items[0][1].endswith("blue-square.png")
    with pytest.raises(DataError, match="empty"):
        search(app_state, SessionGallery(), "a red circle", 5, "text")
