"""The app's start-up and query latency, as a user meets them.

    python benchmarks/app_latency.py                 # cold start (empty cache), warm start, query latency
    python benchmarks/app_latency.py --queries 50    # fewer queries

1. **Cold start**: ``python app.py`` with an empty cache (the Shapes test split is rendered,
   encoded and indexed), timed from process start to the first HTTP answer; then a
   **warm start** with that cache. The app's own "cold start to ready" line is printed too.
2. **Server-side query time**: the ``/search_text`` handler called in-process on the loaded
   state (encode the query + cascade search + dense-only ranking + JSON), p50/p95/max over
   ``--queries`` Shapes captions, and ``/search_image`` on gallery image files.
3. **Round trip** through ``gradio_client`` against the running server (queue included).

Prints one markdown table; run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.app_server import start_app  # noqa: E402


def percentiles(samples: list[float]) -> str:
    ms = np.asarray(samples) * 1000
    return f"{np.percentile(ms, 50):.1f} / {np.percentile(ms, 95):.1f} / {ms.max():.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=200, help="text queries timed (and a quarter as many images)")
    args = parser.parse_args(argv)
    from app.api import search_image_json, search_text_json
    from app.settings import AppSettings
    from app.state import load_state

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        process, _, cold, cold_own = start_app(cache, Path(tmp) / "cold.log")
        process.terminate()
        process.wait()
        rows.append(("cold start, empty cache: process start -> first HTTP answer", f"{cold:.1f} s",
                     f"app's own figure {cold_own:.1f} s"))
        process, url, warm, warm_own = start_app(cache, Path(tmp) / "warm.log")
        rows.append(("warm start, cached gallery index", f"{warm:.1f} s", f"app's own figure {warm_own:.1f} s"))
        try:
            state = load_state(AppSettings(cache_dir=str(cache)), report=lambda line: None)
            captions = state.gallery.dataset.captions[:args.queries]
            search_text_json(state, captions[0], 10)  # warm-up
            text_times = []
            for caption in captions:
                t0 = time.perf_counter()
                search_text_json(state, caption, 10)
                text_times.append(time.perf_counter() - t0)
            paths = state.gallery.image_paths[:max(1, args.queries // 4)]
            image_times = []
            for path in paths:
                t0 = time.perf_counter()
                search_image_json(state, path, 10)
                image_times.append(time.perf_counter() - t0)
            rows.append((f"server side /search_text, {len(text_times)} captions, k=10 (p50 / p95 / max)",
                         f"{percentiles(text_times)} ms", "encode + cascade + dense-only ranking + JSON"))
            rows.append((f"server side /search_image, {len(image_times)} image files (p50 / p95 / max)",
                         f"{percentiles(image_times)} ms", "decode + encode + cascade + dense + JSON"))
            from gradio_client import Client
            client = Client(url, verbose=False)
            client.predict(captions[0], 10, api_name="/search_text")
            trips = []
            for caption in captions[:50]:
                t0 = time.perf_counter()
                client.predict(caption, 10, api_name="/search_text")
                trips.append(time.perf_counter() - t0)
            rows.append((f"round trip via gradio_client, {len(trips)} queries (p50 / p95 / max)",
                         f"{percentiles(trips)} ms", "queue + HTTP + handler"))
        finally:
            process.terminate()
            process.wait()
    print(f"\nmachine: {os.cpu_count()} CPUs, python {sys.version.split()[0]}\n")
    print("| measurement | value | note |\n|---|---|---|")
    for row in rows:
        print(f"| {row[0]} | {row[1]} | {row[2]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
