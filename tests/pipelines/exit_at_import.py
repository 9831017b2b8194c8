"""Calls sys.exit(7) while it is imported, after defining a module."""

import sys

import ciflow


@ciflow.module
def never() -> None: ...


sys.exit(7)
