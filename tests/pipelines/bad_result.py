import ciflow


@ciflow.module
def build(ctx) -> int:
    return "not a number"  # type: ignore[return-value]


@ciflow.module(depends_on=[build])
def test(ctx, build: int) -> None: ...
