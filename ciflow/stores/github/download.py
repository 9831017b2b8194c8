"""The shared base of the stores on the GitHub results service (artifacts and cache).

It reads the runner's configuration (`runtime_from_env`), opens one retrying `Transport` that
the service's `Twirp` calls and the signed-URL `Blobs` share (and that counts every HTTP
attempt in ``stats``), and implements `get` and `get_to_file` on a subclass's ``_download``.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import ClassVar

import requests

from ..base import Sink, Store, check_key, into_file
from ..transport import MAX_ATTEMPTS, Transport
from .blobs import Blobs
from .naming import parse_store_url
from .runtime import runtime_from_env
from .twirp import Twirp

__all__ = ["DownloadingStore", "Sink"]

#: called (again to restart after a retry) to give the writer a download goes to


class DownloadingStore(Store):
    """A store on one results service whose values are downloaded from a signed URL.

    A subclass names its ``scheme`` and Twirp ``service``, sets up its own state in `_setup`
    and implements ``_download(key, sink)``: find the value, stream it into the writer
    ``sink()`` returns (called again to restart after a retry), True if found.

    ``env`` replaces the process environment, ``sleep`` the pause between retries,
    ``session`` the HTTP session (tests pass their own). The URL's options
    (``scheme://NS?name=value``) must be among the subclass's ``url_options``; `_setup` finds
    them in ``self.options`` and the environment in ``self.env``.
    """

    #: the URL scheme (``github``); also names the store in messages (``github store``)
    scheme: ClassVar[str]
    #: the Twirp service of the results service the store calls
    service: ClassVar[str]
    #: the options the store's URL may carry
    url_options: ClassVar[frozenset[str]] = frozenset()

    def __init__(
        self,
        url: str | None = None,
        *,
        env: Mapping[str, str] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        max_attempts: int = MAX_ATTEMPTS,
        session: requests.Session | None = None,
    ) -> None:
        url = url or f"{self.scheme}://"
        super().__init__(url)
        self.namespace, self.options = parse_store_url(url, self.scheme, self.url_options)
        self.env: Mapping[str, str] = os.environ if env is None else env
        self.runtime = runtime_from_env(self.env, self.scheme)
        self.transport = Transport(
            f"{self.scheme} store", session=session, sleep=sleep, max_attempts=max_attempts,
            count=self.stats.add, trouble=self.stats.trouble,
        )  # fmt: skip
        self.twirp = Twirp(self.transport, self.runtime, self.service)
        self.blobs = Blobs(self.transport)
        self._setup()

    def _setup(self) -> None:
        """Set up the subclass's own state (called at the end of `__init__`)."""

    def _download(self, key: str, sink: Sink) -> bool:
        raise NotImplementedError

    def get(self, key: str) -> bytes | None:
        """The value of ``key``, or None if absent."""
        check_key(key)
        self.stats.add("get")
        box: list[io.BytesIO] = []

        def sink() -> Callable[[bytes], object]:
            box[:] = [io.BytesIO()]
            return box[0].write

        if not self._download(key, sink):
            return None
        return box[0].getvalue()

    def get_to_file(self, key: str, path: Path) -> bool:
        """Stream the value of ``key`` into ``path`` (replaced when complete); False if absent."""
        check_key(key)
        self.stats.add("get_to_file")
        return into_file(Path(path), lambda sink: self._download(key, sink))

    def close(self) -> None:
        """Close the HTTP session."""
        self.transport.close()
