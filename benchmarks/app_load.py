"""Many users at once: concurrent ``gradio_client`` clients against ``python app.py``.

    python benchmarks/app_load.py                      # 50 clients x 20 mixed queries
    python benchmarks/app_load.py --clients 10 --queries 5

Each client (a thread with its own ``gradio_client.Client``) sends its queries one after
another, alternating text queries (``/search_text``, Shapes captions) and image queries
(``/search_image``, gallery image files), so up to ``--clients`` requests are in flight.
The server runs with the app's own queue settings (``AppSettings.concurrency_limit``
searches at once, at most ``queue_size`` waiting), which bound its memory.

Reports errors, latency per request (p50 / p95 / max, queueing included) and the server
process's peak resident memory (``VmHWM``). :func:`run_load` is also what
``tests/test_app_load.py`` calls with 10 clients.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.app_server import peak_rss_mb, start_app  # noqa: E402


CLIENT_TIMEOUT = 120.0
"""Seconds a client waits for any HTTP answer (gradio_client's default is a few seconds,
which 50 simultaneous first connections to a busy 2-core server can exceed)."""


@dataclass
class LoadResult:
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def requests(self) -> int:
        return len(self.latencies) + len(self.errors)

    def summary(self) -> dict[str, float]:
        ms = np.asarray(self.latencies) * 1000 if self.latencies else np.zeros(1)
        return {"requests": self.requests, "errors": len(self.errors), "p50_ms": float(np.percentile(ms, 50)),
                "p95_ms": float(np.percentile(ms, 95)), "max_ms": float(ms.max()),
                "throughput_per_s": len(self.latencies) / max(self.seconds, 1e-9)}


def run_load(url: str, captions: list[str], image_files: list[str], clients: int, queries: int,
             k: int = 10) -> LoadResult:
    """``clients`` threads x ``queries`` requests, alternating text and image queries."""
    from gradio_client import Client, handle_file

    result = LoadResult()
    lock = threading.Lock()
    start_together = threading.Barrier(clients)

    def one_client(index: int) -> None:
        try:
            client = Client(url, verbose=False, httpx_kwargs={"timeout": CLIENT_TIMEOUT})
        except Exception as exc:  # noqa: BLE001 - counted, not raised
            with lock:
                result.errors.extend([f"client {index} could not connect: {exc}"] * queries)
            start_together.abort()
            return
        try:
            start_together.wait(timeout=120)
        except threading.BrokenBarrierError:
            pass
        for q in range(queries):
            n = index * queries + q
            started = time.perf_counter()
            try:
                if q % 2 == 0:
                    answer = client.predict(captions[n % len(captions)], k, api_name="/search_text")
                else:
                    answer = client.predict(handle_file(image_files[n % len(image_files)]), k,
                                            api_name="/search_image")
                if not answer.get("results"):
                    raise ValueError(f"no results in {answer!r:.200}")
                with lock:
                    result.latencies.append(time.perf_counter() - started)
            except Exception as exc:  # noqa: BLE001 - counted, not raised
                with lock:
                    result.errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=one_client, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result.seconds = time.perf_counter() - started
    return result


def gallery_queries(cache: Path) -> tuple[list[str], list[str]]:
    """Captions and image files of the app's default gallery in ``cache``."""
    import json
    folder = next(cache.glob("shapes-test-*"))
    records = json.loads((folder / "dataset.json").read_text())["images"]
    captions = [s["raw"] for r in records for s in r["sentences"]]
    return captions, [str(folder / "images" / r["filename"]) for r in records]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--queries", type=int, default=20, help="requests per client")
    parser.add_argument("--cache-dir", type=Path, help="app cache to reuse (default: a fresh temporary one)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache_dir or Path(tmp) / "cache"
        process, url, startup, _ = start_app(cache, Path(tmp) / "server.log")
        try:
            captions, images = gallery_queries(cache)
            idle_mb = peak_rss_mb(process.pid)
            result = run_load(url, captions, images, args.clients, args.queries)
            peak_mb = peak_rss_mb(process.pid)
        finally:
            process.terminate()
            process.wait()
    summary = result.summary()
    print(f"\nmachine: {os.cpu_count()} CPUs; server ready in {startup:.1f} s; "
          f"{args.clients} clients x {args.queries} requests (text and image alternating)\n")
    print("| requests | errors | p50 ms | p95 ms | max ms | requests/s | server peak RSS before | after |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {summary['requests']} | {summary['errors']} | {summary['p50_ms']:.0f} | {summary['p95_ms']:.0f} | "
          f"{summary['max_ms']:.0f} | {summary['throughput_per_s']:.1f} | {idle_mb:.0f} MB | {peak_mb:.0f} MB |")
    for error in result.errors[:5]:
        print(f"error: {error}")
    return 1 if result.errors else 0


if __name__ == "__main__":
    sys.exit(main())
