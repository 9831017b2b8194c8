"""A module whose declared outputs match a link to a file outside the workspace, and bystanders."""

import ciflow


@ciflow.module(outputs=["out/*"])
def packs_a_link(ctx: ciflow.Context) -> int:
    (ctx.workdir / "out").mkdir(exist_ok=True)
    link = ctx.workdir / "out" / "passwd"
    if not link.is_symlink():
        link.symlink_to("/etc/passwd")
    return 1


@ciflow.module(depends_on=[packs_a_link])
def needs_it(packs_a_link: int) -> int:
    return packs_a_link + 1


@ciflow.module
def bystander() -> str:
    return "fine"
