"""MEET: redundancy-mitigated image-text retrieval (hashing + quantization + cascade).

The public entry point is :func:`load`::

    import meet
    model = meet.load("assets/shapes-demo")          # or a run folder, a MEET release file, or "org/name[@rev]" on the Hub
    out = model.encode_texts(["a red circle"])        # .dense .hash .codes .pq_codes
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["load", "__version__"]

if TYPE_CHECKING:
    from meet.inference import MEETModel


def load(path: Any, device: str | None = None, **release_files: Any) -> "MEETModel":
    """Load a checkpoint or run folder, a MEET release file (``bert=``, ``vocab=``,
    ``reranker=``) or a Hub repo id; see :func:`meet.inference.load`.

    Imported lazily so ``import meet`` stays cheap and has no side effects.
    """
    from meet.inference import load as _load

    return _load(path, device=device, **release_files)
