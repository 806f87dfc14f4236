"""The app on a large gallery, in one process: load time, resident memory, query latency.

    python -m meet.data.shapes --out data/shapes100k --n-train 0 --n-val 0 --n-test 100000 --seed 1 --workers 2
    python benchmarks/app_gallery.py --data data/shapes100k [--checkpoint assets/shapes-demo] \
        [--cache-dir CACHE] [--queries 20]

Loads the app's state as ``python app.py --data DIR`` does (``app.state.load_state``: the
gallery index from ``--cache-dir``, built there on the first run, and the ground truth),
then times what the page runs per query, server side: ``app.search.text_search`` on
typed Shapes captions and ``app.search.image_search`` on gallery images, each with the
trace and the dense-only ranking shown beside MEET's (``explain=True``). Prints the load
time, the process's RSS after loading and after the queries, its peak (``VmHWM``), and
p50 / max latency per kind. Run the first time once to build the cache (the cold start,
timed too), then again for the warm figures; on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.app_server import status_kib  # noqa: E402

TYPED = ("a red circle", "a small blue square above a green star", "two purple triangles", "something red",
         "a large gray hexagon", "a green star to the left of a yellow cross", "three shapes",
         "only a tiny orange triangle", "a big pink circle and a blue square", "something small")
"""Typed queries in the Shapes caption grammar (each has ground truth), cycled."""


def memory_mb() -> dict[str, float]:
    """This process's current (VmRSS) and peak (VmHWM) resident memory, in MB (10^6 bytes)."""
    return {key: status_kib(os.getpid(), key) * 1024 / 1e6 for key in ("VmRSS", "VmHWM")}


def timed(call, *args) -> float:
    start = time.perf_counter()
    call(*args)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="a Shapes (or Karpathy-JSON) data set folder")
    parser.add_argument("--split", default="test")
    parser.add_argument("--checkpoint", default=str(ROOT / "assets" / "shapes-demo"))
    parser.add_argument("--cache-dir", default=str(ROOT / ".cache" / "app-gallery"))
    parser.add_argument("--queries", type=int, default=20, help="typed queries timed, and half as many images")
    args = parser.parse_args(argv)
    from app import search
    from app.settings import AppSettings
    from app.state import load_state

    lines: list[str] = []
    start = time.perf_counter()
    state = load_state(AppSettings(checkpoint=args.checkpoint, data=args.data, split=args.split,
                                   cache_dir=args.cache_dir), report=lines.append)
    load_s = time.perf_counter() - start
    loaded = memory_mb()
    gallery = state.gallery
    texts = [TYPED[i % len(TYPED)] for i in range(args.queries)]
    images = np.linspace(0, gallery.dataset.n_images - 1, max(1, args.queries // 2)).astype(int).tolist()
    search.text_search(state, texts[0], 10)  # warm-up: first-call allocations
    text_s = [timed(search.text_search, state, q, 10) for q in texts]
    image_s = [timed(search.image_search, state, i, 10) for i in images] if gallery.texts.n_items else []
    after = memory_mb()
    ms = lambda s: f"{1000 * np.median(s):.0f} / {1000 * np.max(s):.0f} ms" if s else "-"
    print(f"app on {args.data} ({args.split}: {gallery.images.n_items:,} images, {gallery.texts.n_items:,} captions), "
          f"checkpoint {args.checkpoint}")
    print("| measure | value |\n|---|---|")
    warm = any("loaded the cached gallery index" in line for line in lines)
    print(f"| {'warm start (index from the cache)' if warm else 'cold start (index built)'} | {load_s:.1f} s |")
    print(f"| RSS after load | {loaded['VmRSS']:,.0f} MB |")
    print(f"| text query, p50 / max ({len(text_s)}) | {ms(text_s)} |")
    print(f"| image query, p50 / max ({len(image_s)}) | {ms(image_s)} |")
    print(f"| RSS after the queries | {after['VmRSS']:,.0f} MB |")
    print(f"| peak RSS (VmHWM) | {after['VmHWM']:,.0f} MB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
