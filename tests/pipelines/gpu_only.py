import ciflow


@ciflow.module(requires=ciflow.Requires(tags=["gpu"]))
def train(ctx: ciflow.Context) -> None: ...
