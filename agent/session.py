"""The one HTTP session the agent reaches the store through (`new_session`; the grant's renewal
URL too): a connection pool as large as the uploads it runs at once, 1 MiB writes to the socket,
TLS verified, sending timed; every request says the agent's version (`USER_AGENT`). What goes
through it, and requests' exceptions turned into the agent's, is agent/uploader.py's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, cast

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from agent import __version__
from agent.body import CHUNK_SIZE

USER_AGENT = f"s3-postbox-agent/{__version__}"  # every request the agent makes says it


def new_session(
    concurrency: int,
    ca_bundle: Optional[Path] = None,
    user_agent: str = USER_AGENT,
    send_timeout: Optional[float] = None,
) -> requests.Session:
    """The one HTTP session the agent uses: a connection pool as large as the uploads it runs at
    once (so no connection is dropped and made again), 1 MiB writes to the socket (urllib3's
    16 KiB cost a system call and a poll per 16 KiB), TLS verified (with `ca_bundle` if given),
    and sending timed by `send_timeout` (None: urllib3's own, the connect timeout)."""
    session = requests.Session()
    adapter = _Adapter(send_timeout, pool_connections=1, pool_maxsize=concurrency)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.verify = str(ca_bundle) if ca_bundle else True
    if user_agent:
        session.headers["User-Agent"] = user_agent
    return session


class _Adapter(HTTPAdapter):
    def __init__(self, send_timeout: Optional[float], **kwargs: Any) -> None:
        self._send_timeout = send_timeout
        super().__init__(**kwargs)

    def init_poolmanager(self, *args: object, **kwargs: object) -> None:
        kwargs["blocksize"] = CHUNK_SIZE
        super().init_poolmanager(*args, **kwargs)  # type: ignore[arg-type]
        if self._send_timeout is not None:
            self.poolmanager.pool_classes_by_scheme = _pools(self._send_timeout)


def _pools(send_timeout: float) -> dict[str, type[HTTPConnectionPool]]:
    """Connection pools whose connections send with `send_timeout` on the socket. urllib3 keeps
    the connect timeout there while it sends the request (connectionpool._make_request), so a
    stall mid-body would be timed by it; the read timeout is set after, for the answer."""

    class Sending:
        def request(self, *args: Any, **kwargs: Any) -> None:
            conn = cast(HTTPConnection, self)
            if conn.sock is None:
                conn.connect()  # with the connect timeout, as urllib3 would
            conn.timeout = send_timeout  # request() puts it on the socket, then sends
            super().request(*args, **kwargs)  # type: ignore[misc]

    class Http(Sending, HTTPConnection):
        pass

    class Https(Sending, HTTPSConnection):
        pass

    class HttpPool(HTTPConnectionPool):
        ConnectionCls = Http

    class HttpsPool(HTTPSConnectionPool):
        ConnectionCls = Https

    return {"http": HttpPool, "https": HttpsPool}
