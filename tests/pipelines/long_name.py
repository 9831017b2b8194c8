"""A module whose 300-character name no store could hold records for."""

import ciflow


@ciflow.module(name="x" * 300)
def too_long() -> None: ...
