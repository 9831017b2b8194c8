"""Raises a BaseException subclass (not an Exception) while it is imported."""

import ciflow


class Abort(BaseException):
    """Not caught by `except Exception`."""


@ciflow.module
def never() -> None: ...


raise Abort("pipeline aborted")
