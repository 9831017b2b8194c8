"""Raises KeyboardInterrupt while it is imported (as a Ctrl-C during a slow import would)."""

import ciflow


@ciflow.module
def never() -> None: ...


raise KeyboardInterrupt
