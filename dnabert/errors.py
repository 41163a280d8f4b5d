"""One exception type for mistakes a user can fix, so every command prints one clear line, not a traceback."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import ParamSpec

P = ParamSpec("P")


class DnabertError(Exception):
    """A problem with the user's input or settings; the message names the file or setting and the fix."""


def user_message(err: DnabertError) -> str:
    """The message to print. torch re-raises an error of a DataLoader worker in the main process with the worker's
    traceback as its message ("Caught DnabertError in DataLoader worker process 0. Original Traceback ..."); its
    last line holds the original message."""
    text = str(err)
    marker = f"{DnabertError.__module__}.{DnabertError.__qualname__}: "
    if text.startswith("Caught ") and marker in text:
        return text.rsplit(marker, 1)[1].strip()
    return text


def command_line(main: Callable[P, int]) -> Callable[P, int]:
    """Wrap a command's main(): a DnabertError becomes `dnabert: error: ...` on stderr and exit code 2."""

    @functools.wraps(main)
    def run(*args: P.args, **kwargs: P.kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except DnabertError as err:
            sys.stdout.flush()
            print(f"dnabert: error: {user_message(err)}", file=sys.stderr)
            return 2

    return run
