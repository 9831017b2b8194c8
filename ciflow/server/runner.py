"""Running `StoreApp` under uvicorn: the listening socket, TLS, signals and graceful shutdown.

Imported only by ``ciflow serve`` (uvicorn is the ``ciflow[server]`` extra). SIGTERM or SIGINT
starts a graceful shutdown: no new connections, every long poll answered at once, requests in
flight finished (for at most `GRACE` seconds), then the command exits 0. A second SIGINT stops
at once.
"""

from __future__ import annotations

import signal
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import uvicorn

from ..errors import UsageError
from .app import StoreApp

__all__ = ["GRACE", "bind", "serve"]

#: seconds in-flight requests get to finish after SIGTERM
GRACE = 30
#: connections the listening socket queues until they are accepted (uvicorn's default)
BACKLOG = 2048
#: seconds an idle keep-alive connection stays open (above the clients' pauses between calls)
KEEP_ALIVE = 75


class _Server(uvicorn.Server):
    """uvicorn's server, telling the app when a shutdown starts; it exits 0 after a signal."""

    def __init__(self, config: uvicorn.Config, app: StoreApp) -> None:
        super().__init__(config)
        self.store_app = app
        self.stop_signal: int | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # uvicorn's own handler would raise the signal again once it shut down (exit -15)
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        else:
            self.should_exit = True
        self.stop_signal = self.stop_signal or sig
        loop = self.store_app.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.store_app.stop)


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket listening on ``host:port`` (port 0: a free one), `UsageError` if it cannot be.

    It listens at once, before "listening on" is said: clients that connect while uvicorn is
    still starting wait in the backlog instead of being refused.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP: asyncio sets TCP_NODELAY on the accepted sockets only then; without it an
    # answer's body waits for the client's delayed ACK of its headers (~40 ms a call)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def serve(
    app: StoreApp,
    host: str,
    port: int,
    *,
    cert: Path | None,
    key: Path | None,
    say: Callable[[str], None],
) -> None:
    """Serve ``app`` until SIGTERM or SIGINT; ``say`` gets the lines meant for the operator."""
    if (cert is None) != (key is None):
        raise UsageError("--cert and --key go together (a certificate and its private key)")
    config = uvicorn.Config(
        app, lifespan="on", log_level="warning", access_log=False, server_header=False,
        timeout_keep_alive=KEEP_ALIVE, timeout_graceful_shutdown=GRACE,
        ssl_certfile=cert, ssl_keyfile=key,
    )  # fmt: skip
    try:
        config.load()
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"cannot use --cert {cert} / --key {key}: {exc}") from None
    sock = bind(host, port)
    bound = sock.getsockname()[1]
    scheme = "https" if cert else "http"
    shown = f"[{host}]" if ":" in host else host
    server = _Server(config, app)
    say(f"ciflow serve: listening on {scheme}://{shown}:{bound} (data {app.data})")
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    if server.stop_signal is not None:
        name = signal.Signals(server.stop_signal).name
        say(f"ciflow serve: stopped ({name}): in-flight requests finished")
