import ciflow


@ciflow.module(requires=ciflow.Requires(tools=["ciflow-no-such-tool"]))
def needs_tool(ctx) -> None: ...


@ciflow.module
def plain(ctx) -> None: ...
