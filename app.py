"""MEET Studio: ``python app.py`` opens the app on the bundled model and the Shapes test
split (generated into the cache on first start; no network needed). Also the entry of the
Hugging Face Space (README front-matter ``app_file: app.py``).

Flags and ``MEET_*`` environment variables: ``python app.py --help``. The model and the
gallery index load once, before the server starts (a CLIP ``--checkpoint`` first has MEET's
codes fitted on the gallery, once, into the cache); if either is unusable the page says why
instead of serving a traceback. Gradio's upload folder (``GRADIO_TEMP_DIR``) is set to
``CACHE/gradio``, so nothing a visitor uploads is written outside the app's cache.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    from app.settings import from_args
    settings = from_args(argv)
    # Uploads go into the app's cache, nowhere else (before gradio reads the setting).
    os.environ["GRADIO_TEMP_DIR"] = str(Path(settings.cache_dir).expanduser().resolve() / "gradio")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from meet.errors import MEETError

    from app.feedback import user_message
    from app.layout import build_demo, build_error_demo
    from app.state import load_state
    try:
        state = load_state(settings, report=lambda line: print(line, flush=True))
        demo = build_demo(state)
        allowed = sorted({str(Path(p).parent) for p in state.gallery.image_paths if p is not None}
                         | {str(state.gallery.placeholder_dir)})
    except MEETError as exc:
        print(f"error: {user_message(exc)}", file=sys.stderr)
        demo, allowed = build_error_demo(user_message(exc)), []
    demo.queue(default_concurrency_limit=settings.concurrency_limit, max_size=settings.queue_size)
    print(f"cold start to ready: {time.perf_counter() - started:.1f} s", flush=True)
    demo.launch(server_name=settings.host, server_port=settings.port, share=settings.share,
                max_file_size=f"{settings.max_upload_mb}mb", allowed_paths=allowed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
