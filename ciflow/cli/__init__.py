"""The ``ciflow`` command line (see `ciflow.cli.app`)."""

from .app import app, main

__all__ = ["app", "main"]
