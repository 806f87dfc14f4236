"""``python -m meet.data.shapes --out DIR [...]``: generate the Shapes benchmark.

The guard matters: rendering workers use the "spawn" start method, which re-runs this
module as ``__mp_main__`` in every worker; only the real entry may call :func:`main`.
"""

from meet.data.shapes.writer import main

if __name__ == "__main__":
    raise SystemExit(main())
