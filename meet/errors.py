"""One small error hierarchy: every failure a user can cause ends in a ``MEETError``.

Each error names what was wrong and, where we know it, what to do (``fix``), so a CLI
or the app can print one clear line instead of a traceback.
"""

from __future__ import annotations


class MEETError(Exception):
    """Base class: a problem with the user's input, files or settings."""

    def __init__(self, message: str, fix: str | None = None):
        self.message = message
        self.fix = fix
        super().__init__(message if not fix else f"{message} ({fix})")


class ConfigError(MEETError):
    """A setting, preset or command-line value is invalid."""


class DataError(MEETError):
    """A data set is missing, malformed, or inconsistent (files, JSON, array shapes)."""


class ImageError(DataError):
    """An image cannot be read or decoded."""


class CheckpointError(MEETError):
    """A checkpoint is missing, truncated, or does not match its config."""


class HubError(MEETError):
    """The Hugging Face Hub refused a request (token, permission) or could not be reached."""
