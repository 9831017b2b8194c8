"""``python -m ciflow.testing.emulator``: serve the emulator (see `service.main`)."""

from .service import main

raise SystemExit(main())
