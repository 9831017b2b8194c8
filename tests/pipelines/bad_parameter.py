import ciflow


@ciflow.module
def build(ctx) -> str:
    return "wheel"


@ciflow.module(depends_on=[build])
def test(ctx, wheel: str) -> None: ...
