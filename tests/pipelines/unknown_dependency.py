import ciflow


@ciflow.module
def build(ctx) -> None: ...


@ciflow.module(depends_on=["biuld"])
def test(ctx) -> None: ...
