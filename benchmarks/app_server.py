"""Start ``python app.py`` as a user would, for the app benchmarks (and their tests)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_app(cache: Path, log: Path, timeout: float = 300, args: list[str] = (),
              env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str, float, float | None]:
    """(process, url, seconds to first HTTP answer, the app's own cold-start figure);
    ``args``: more ``app.py`` flags (``--checkpoint``, ``--data``, ...); ``env``: more
    environment variables."""
    port = free_port()
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--port", str(port), "--cache-dir", str(cache),
                                *args],
                               cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT,
                               env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", **(env or {})})
    url = f"http://127.0.0.1:{port}/"
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"app.py exited with {process.returncode}:\n{log.read_text()}")
        try:
            urllib.request.urlopen(url, timeout=2).read()
            break
        except OSError:
            if time.perf_counter() - started > timeout:
                process.kill()
                raise RuntimeError(f"app.py did not answer in {timeout} s")
            time.sleep(0.1)
    seconds = time.perf_counter() - started
    match = re.search(r"cold start to ready: ([\d.]+) s", log.read_text())
    return process, url, seconds, float(match.group(1)) if match else None


def status_kib(pid: int, key: str) -> int:
    """One memory line of a process's Linux ``/proc/PID/status`` (``VmRSS``, ``VmHWM``...), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise OSError(f"no {key} for process {pid}")


def peak_rss_mb(pid: int) -> float:
    """Peak resident memory of a process (Linux ``VmHWM``), in MB."""
    return status_kib(pid, "VmHWM") / 1024
