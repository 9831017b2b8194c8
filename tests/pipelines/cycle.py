import ciflow


@ciflow.module(depends_on=["c"])
def a(ctx) -> None: ...


@ciflow.module(depends_on=[a])
def b(ctx) -> None: ...


@ciflow.module(depends_on=[b])
def c(ctx) -> None: ...
