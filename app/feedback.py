"""How the app answers failures: a message in the page, never a traceback, and the server
keeps serving.

A :class:`~meet.errors.MEETError` is the user's input or files (its text says what was
wrong and what to do) and becomes a ``gr.Error`` shown as is. Anything else is our bug:
the traceback goes to the server log and the user gets a short apology naming the error
type, so nothing internal (paths, code) leaks into the page.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Callable

import gradio as gr

from meet.errors import MEETError

log = logging.getLogger("meet.app")


def user_message(exc: BaseException) -> str:
    """One line for the page."""
    if isinstance(exc, MEETError):
        return exc.message + (f". What to do: {exc.fix}." if exc.fix else "")
    return f"Something went wrong on the server ({type(exc).__name__}); it was logged, and the app is still running."


def guarded(fn: Callable[..., Any], outputs: int, skip_if_empty: bool = False,
            in_page: bool = True) -> Callable[..., Any]:
    """Wrap a handler so every failure reaches the user as a message.

    ``in_page``: a user error (:class:`~meet.errors.MEETError`) shows as a warning toast
    and leaves the outputs as they were (the last good results stay on screen); False (the
    API endpoints) raises ``gr.Error``, which a client receives as an error. Bugs always
    raise ``gr.Error``. ``skip_if_empty``: when the first input (the query) is empty,
    change nothing, for handlers fired by sliders before any query was made."""
    def unchanged() -> Any:
        return tuple(gr.skip() for _ in range(outputs)) if outputs > 1 else gr.skip()

    @functools.wraps(fn)
    def handler(*args: Any, **kwargs: Any) -> Any:
        if skip_if_empty and (not args or args[0] is None or (isinstance(args[0], str) and not args[0].strip())):
            return unchanged()
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except MEETError as exc:
            if in_page:
                gr.Warning(user_message(exc))
                return unchanged()
            raise gr.Error(user_message(exc), print_exception=False) from None
        except Exception as exc:  # noqa: BLE001 - the page must get a message, the log the traceback
            log.exception("handler %s failed", getattr(fn, "__name__", fn))
            raise gr.Error(user_message(exc), print_exception=False) from None
    return handler
