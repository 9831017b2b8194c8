"""``ciflow serve``: the coordinator, a store over HTTP for fleets that can reach one host.

Imported only when it runs (see ``cli._Group``); uvicorn (the ``ciflow[server]`` extra) only
inside the command.
"""

import re
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from ..errors import UsageError
from .options import DebugOption

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)

DEFAULT_PORT = 8470
_SIZE = re.compile(r"(\d+)\s*([KMG]?)i?B?", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


@app.callback()
def _group() -> None:
    """Makes this app a group, as `cli._Group` looks commands up in one."""


def parse_size(text: str) -> int:
    """Bytes of ``2G``, ``512M``, ``64KiB`` or ``1000`` (binary units)."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise UsageError(f"--max-body {text!r}: give bytes, e.g. 2G, 512M or 1048576")
    return int(match.group(1)) * _UNITS[match.group(2).upper()]


def _say(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _access(line: str) -> None:
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
    _say(f"{stamp} {line}")


@app.command("serve")
def serve(
    data: Annotated[
        Path,
        typer.Option("--data", metavar="DIR", help="The folder holding the stores (created).",
                     file_okay=False),
    ],
    token_file: Annotated[
        Path,
        typer.Option("--token-file", metavar="FILE", dir_okay=False,
                     help="Bearer tokens: lines `rw TOKEN [NAMESPACE]` or `ro TOKEN [NAMESPACE]`."),
    ],
    host: Annotated[
        str, typer.Option("--host", metavar="HOST", help="The address to listen on.")
    ] = "127.0.0.1",
    port: Annotated[
        int,
        typer.Option("--port", metavar="PORT", min=0, max=65535,
                     help="The port to listen on (0: a free one, printed at start)."),
    ] = DEFAULT_PORT,
    cert: Annotated[
        Path | None,
        typer.Option("--cert", metavar="PEM", dir_okay=False, help="TLS certificate (chain)."),
    ] = None,
    key: Annotated[
        Path | None,
        typer.Option("--key", metavar="PEM", dir_okay=False, help="TLS private key."),
    ] = None,
    max_body: Annotated[
        str, typer.Option("--max-body", metavar="SIZE", help="Largest value a client may store.")
    ] = "2G",
    max_wait: Annotated[
        float,
        typer.Option("--max-wait", metavar="SECONDS", min=0.1, max=300,
                     help="Longest a long poll is held."),
    ] = 30.0,
    access_log: Annotated[
        bool, typer.Option("--access-log/--no-access-log", help="One line a request on stderr.")
    ] = True,
    debug: DebugOption = False,
) -> None:  # fmt: skip
    """Serve a store over HTTP: the coordinator for workers that can reach this host.

    Workers use --store http://HOST:PORT (https:// with --cert/--key) and give a token of
    --token-file in CIFLOW_STORE_TOKEN. SIGTERM or SIGINT stops it gracefully (exit 0).
    """
    try:
        import uvicorn  # noqa: F401 - the extra's one dependency
    except ImportError:
        raise UsageError("ciflow serve needs uvicorn: install ciflow[server]") from None
    from ..server.app import StoreApp
    from ..server.auth import Tokens
    from ..server.runner import serve as run_server

    tokens = Tokens.load(token_file)
    limit = parse_size(max_body)
    store_app = StoreApp(data, tokens, max_body=limit, max_wait=max_wait,
                         log=_access if access_log else None)  # fmt: skip
    run_server(store_app, host, port, cert=cert, key=key, say=_say)
