"""Two modules whose results would both bind to the parameter ``a_b``."""

import ciflow


@ciflow.module
def a_b() -> int:
    return 1


@ciflow.module(name="a-b")
def other() -> int:
    return 2


@ciflow.module(depends_on=[a_b, other])
def uses(a_b: int) -> int:
    return a_b
