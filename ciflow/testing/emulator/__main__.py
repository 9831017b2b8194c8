"""``python -m ciflow.testing.emulator``: serve the emulator (see `cli.main`)."""

from .cli import main

raise SystemExit(main())
