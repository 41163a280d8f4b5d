"""One exception type for mistakes a user can fix, so the entry point prints one clear line, not a traceback."""


class DnabertError(Exception):
    """A problem with the user's input or settings; the message names the file or setting and the fix."""
