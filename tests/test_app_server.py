"""The app as users and scripts meet it: ``python app.py`` on a free port, driven through
``gradio_client``'s named endpoints, checked against Shapes ground truth."""

from __future__ import annotations

import json
import re

import pytest

pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402

from meet.data.shapes import is_relevant, parse_caption  # noqa: E402


@pytest.fixture(scope="module")
def client(app_server) -> Client:
    url, _ = app_server
    return Client(url, verbose=False)


@pytest.fixture(scope="module")
def gallery(app_cache) -> dict:
    folder = next(app_cache.glob("shapes-test-*"))
    records = json.loads((folder / "dataset.json").read_text())["images"]
    return {"folder": folder, "scenes": {r["filename"]: r["scene"] for r in records}}


def test_startup_reports_its_cold_start(app_server):
    _, log = app_server
    match = re.search(r"cold start to ready: ([\d.]+) s", log.read_text())
    assert match, log.read_text()
    assert float(match.group(1)) < 120  # the 60 s target is measured alone, not under pytest


def test_search_text_endpoint_matches_ground_truth(client, gallery):
    answer = client.predict("a red circle", 10, api_name="/search_text")
    results = answer["results"]
    assert [r["rank"] for r in results] == list(range(1, 11))
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)
    facts = parse_caption("a red circle")
    hits = sum(is_relevant(facts, gallery["scenes"][r["id"]]) for r in results)
    assert hits >= 8, results
    assert answer["stages"]["gallery"] == 1000 and answer["stages"]["after_hamming"] == 600


def test_search_image_endpoint_matches_ground_truth(client, gallery):
    name = "021007.png"
    answer = client.predict(handle_file(str(gallery["folder"] / "images" / name)), 5, api_name="/search_image")
    results = answer["results"]
    assert len(results) == 5 and all(r["id"].isdigit() for r in results)
    scene = gallery["scenes"][name]
    assert sum(is_relevant(parse_caption(r["caption"]), scene) for r in results) >= 4, results


def test_bad_input_gets_a_message_and_the_app_keeps_serving(client, tmp_path):
    with pytest.raises(Exception, match="empty"):
        client.predict("   ", 5, api_name="/search_text")
    not_image = tmp_path / "notes.txt"
    not_image.write_text("plain text, not a picture")
    with pytest.raises(Exception, match="cannot decode|not a readable"):
        client.predict(handle_file(str(not_image)), 5, api_name="/search_image")
    with pytest.raises(Exception, match="k="):
        client.predict("a red circle", -4, api_name="/search_text")
    assert len(client.predict("a blue star", 3, api_name="/search_text")["results"]) == 3


def _status(url: str) -> int:
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_the_server_serves_only_gallery_files(app_server, app_cache, gallery):
    url, _ = app_server
    image = gallery["folder"] / "images" / "021000.png"
    assert _status(f"{url}gradio_api/file={image}") == 200
    index_file = next(app_cache.glob("indexes/*/image/index.json"))
    for path in ("/etc/passwd", str(index_file), f"{gallery['folder']}/dataset.json",
                 f"{image.parent}/../../server.log", f"{image.parent}/..%2F..%2Fserver.log"):
        assert _status(f"{url}gradio_api/file={path}") in (403, 404), path


def test_oversized_uploads_are_refused(client, tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(11 * 1024 * 1024))  # 11 MB, over the 10 MB limit
    with pytest.raises(Exception, match="(?i)size|large"):
        client.predict(handle_file(str(big)), 5, api_name="/search_image")
    assert client.predict("a red circle", 2, api_name="/search_text")["results"]
