"""A pipeline for the planner: capabilities, exclusive keys, limits, affinity and cost hints."""

import ciflow

DB = "database"
LIMIT = ciflow.ParallelLimit("browsers", 1)


@ciflow.module(cost=4)
def build(ctx: ciflow.Context) -> None: ...


@ciflow.module(cost=3, requires=ciflow.Requires(os="windows"))
def build_windows(ctx: ciflow.Context) -> None: ...


@ciflow.module(depends_on=[build], cost=5, not_in_parallel=DB)
def integration(ctx: ciflow.Context) -> None: ...


@ciflow.module(depends_on=[build], cost=5, not_in_parallel=DB)
def migrations(ctx: ciflow.Context) -> None: ...


@ciflow.module(depends_on=[build], cost=2, parallel_limit=LIMIT, affinity="ui")
def ui_a(ctx: ciflow.Context) -> None: ...


@ciflow.module(depends_on=[build], cost=2, parallel_limit=LIMIT, affinity="ui")
def ui_b(ctx: ciflow.Context) -> None: ...


@ciflow.module(depends_on=[build], requires=ciflow.Requires(tools=["docker"]))
def docker_image(ctx: ciflow.Context) -> None: ...


@ciflow.module(depends_on=[integration, migrations, ui_a, ui_b, docker_image, build_windows])
def publish(ctx: ciflow.Context) -> None: ...
