import ciflow

CONFIG = {"a": 1}
VALUE = CONFIG["missing"]


@ciflow.module
def never(ctx) -> None: ...
