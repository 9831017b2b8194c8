import ciflow


@ciflow.module
def build(ctx) -> None: ...


@ciflow.module(name="build")
def build_again(ctx) -> None: ...
