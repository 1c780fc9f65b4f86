"""Fixtures of the management service's tests: an engine over a small host (paused, or running
as fast as it can), stopped in the finaliser so that no simulation thread outlives its test."""
from __future__ import annotations

import pytest

#: Two small VMs on two LPs: "steady" burns half a VP, "idle" idles; no disks, no switch.
SMALL_HOST = """
[host]
logical_processors = 2
memory = "1GiB"

[[vm]]
name = "steady"
memory = "64MiB"
workload = { kind = "cpu-burn", duty = 0.5 }

[[vm]]
name = "idle"
memory = "64MiB"
"""


def small_config(tmp_path, text: str = SMALL_HOST):
    from partitions.config import loads
    return loads(text, base_dir=tmp_path)


@pytest.fixture
def make_engine(tmp_path):
    """make_engine(text=SMALL_HOST, **Engine options) -> a started Engine (state in tmp_path/state);
    every engine made is stopped at the test's end."""
    from partitions.service.engine import Engine
    made = []

    def make(text: str = SMALL_HOST, *, workdir=None, **options):
        options.setdefault("speed", None)
        engine = Engine(small_config(tmp_path, text), workdir=workdir or tmp_path / "state", **options)
        engine.start()
        made.append(engine)
        return engine
    yield make
    for engine in made:
        engine.stop()


@pytest.fixture
def engine(make_engine):
    """A paused engine over SMALL_HOST at time 0 (its VMs started)."""
    return make_engine(paused=True)


class Server:
    """An API server (uvicorn, in a thread) on a free loopback port over an engine."""

    def __init__(self, engine, authorizer, **app_options):
        import socket
        import threading

        import uvicorn

        from partitions.service.api import create_app, http_protocol
        self.engine, self.authorizer = engine, authorizer
        self.app = create_app(engine, authorizer, **app_options)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)   # TCP_NODELAY
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.host, self.port = self._sock.getsockname()
        self.url = f"http://{self.host}:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", access_log=False,
                                                    timeout_graceful_shutdown=5, http=http_protocol() or "auto"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._sock]},
                                       name="uvicorn-test", daemon=True)
        self.thread.start()
        import time
        deadline = time.monotonic() + 30
        while not self.server.started:   # its readiness, polled with a deadline
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)

    def request(self, method: str, path: str, body=None, *, headers: dict | None = None, raw: bytes | None = None,
                timeout: float = 30):
        """(status, parsed JSON or None, response headers)."""
        import http.client
        import json
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
            hdrs = {"Content-Type": "application/json"} if data is not None else {}
            hdrs.update(headers or {})
            conn.request(method, path, body=data, headers=hdrs)
            response = conn.getresponse()
            text = response.read()
            parsed = json.loads(text) if text and response.getheader("content-type", "").startswith(
                "application/json") else (text.decode() if text else None)
            return response.status, parsed, dict(response.getheaders())
        finally:
            conn.close()

    def close(self) -> None:
        self.app.state.closing = True   # open event streams end
        self.server.should_exit = True
        self.thread.join(30)
        self._sock.close()


@pytest.fixture
def make_server():
    """make_server(engine, authorizer=None (Authorizer.local()), **create_app options) -> a started
    Server; each is shut down at the test's end (before the engines of make_engine are stopped)."""
    made = []

    def make(engine, authorizer=None, **options):
        from partitions.service.auth import Authorizer
        server = Server(engine, authorizer or Authorizer.local(), **options)
        made.append(server)
        return server
    yield make
    for server in made:
        server.close()


@pytest.fixture
def server(engine, make_server):
    """A server over the paused SMALL_HOST engine, without users (the test client is Administrator)."""
    return make_server(engine)
