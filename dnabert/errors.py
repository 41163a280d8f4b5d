"""One exception type for mistakes a user can fix, so every command prints one clear line, not a traceback."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import ParamSpec

P = ParamSpec("P")


class DnabertError(Exception):
    """A problem with the user's input or settings; the message names the file or setting and the fix."""


def command_line(main: Callable[P, int]) -> Callable[P, int]:
    """Wrap a command's main(): a DnabertError becomes `dnabert: error: ...` on stderr and exit code 2."""

    @functools.wraps(main)
    def run(*args: P.args, **kwargs: P.kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except DnabertError as err:
            sys.stdout.flush()
            print(f"dnabert: error: {err}", file=sys.stderr)
            return 2

    return run
