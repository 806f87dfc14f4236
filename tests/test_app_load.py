"""Ten users at once through ``gradio_client`` (the short form of ``benchmarks/app_load.py``):
no request may fail, and results must stay correct under concurrency."""

from __future__ import annotations

from benchmarks.app_load import gallery_queries, run_load


def test_ten_concurrent_clients_get_answers_without_errors(app_server, app_cache):
    url, _ = app_server
    captions, images = gallery_queries(app_cache)
    result = run_load(url, captions, images, clients=10, queries=4)
    assert result.errors == []
    assert result.requests == 40 and len(result.latencies) == 40
