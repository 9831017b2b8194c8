import ciflow


@ciflow.module
def broken(ctx) -> None
    pass
