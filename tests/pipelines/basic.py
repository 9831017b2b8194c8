"""Three modules: a result handed from build to test; lint alone."""

from pydantic import BaseModel

import ciflow


class Wheel(BaseModel):
    path: str


@ciflow.module(category="check")
def lint(ctx: ciflow.Context) -> None:
    ctx.log("lint ok")


@ciflow.module(category="build", cost=2)
def build(ctx: ciflow.Context) -> Wheel:
    return Wheel(path="dist/app.whl")


@ciflow.module(depends_on=[build, lint], category="test")
def test(ctx: ciflow.Context, build: Wheel) -> str:
    ctx.log(f"testing {build.path}")
    return build.path
