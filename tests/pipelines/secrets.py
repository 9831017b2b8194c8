"""Modules that print, write to stderr, fail with and return the secret in CIFLOW_TEST_SECRET."""

import sys

import ciflow

SECRET = ciflow.secret("CIFLOW_TEST_SECRET")


@ciflow.module
def prints() -> None:
    print("printed", SECRET)
    print("to stderr", SECRET, file=sys.stderr)
    sys.stdout.write(f"partial {SECRET}")  # no newline: flushed when the module ends


@ciflow.module
def closes() -> None:
    sys.stdout.close()  # ignored: the run's later lines must still reach the log
    print("after close")


@ciflow.module
def returns() -> dict[str, str]:
    return {"header": f"Bearer {SECRET}"}


@ciflow.module(depends_on=["returns"])
def reads(returns: dict[str, str]) -> str:
    return returns["header"]


@ciflow.module
def masks_and_fails(ctx: ciflow.Context) -> None:
    password = ctx.mask("pw-only-this-worker-knows")
    raise RuntimeError(f"login failed with {password}")
