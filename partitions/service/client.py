"""A client of hvsim's management API (`hvsim serve`): JSON requests with a bearer token over TCP or
a Unix socket, the API's error answers as ApiError, and its event stream (server-sent events).

Only the standard library (http.client): `hvsim vm ...` talks to a service without needing the
service's own stack installed. Each request opens its own connection and closes it after the
answer, so a client holds no socket between calls and a server that restarted is simply reached
again.

    client = Client("http://127.0.0.1:8450", token="...")   # or "unix:/run/hvsim.sock"
    client.call("GET", "/v1/vms")                            # the decoded JSON answer
    for event in client.follow_events(since=0):              # Event(seq, name, data), until it ends
        ...
"""
from __future__ import annotations

import http.client
import json
import socket
import urllib.parse
from dataclasses import dataclass
from typing import Any, Iterator

DEFAULT_SERVER = "http://127.0.0.1:8450"
TIMEOUT = 30.0   # seconds to wait for an answer (a stream waits as long as it stays open)


class ApiError(Exception):
    """An error answer of the API: its HTTP status, its type (`InvalidTransition`, `NotFound`,
    `Forbidden`, ...) and its user-facing message, which is the exception's text."""

    def __init__(self, status: int, type: str, message: str, body: Any = None):
        super().__init__(message)
        self.status, self.type, self.message, self.body = status, type, message, body


class Unreachable(ConnectionError):
    """No answer from the service: nothing listens at the address, the socket file is missing,
    the connection dropped or timed out. The message names the address."""

    def __init__(self, address: str, why: str):
        super().__init__(f"cannot reach the hvsim service at {address}: {why}")
        self.address, self.why = address, why


@dataclass(frozen=True)
class Event:
    """One event of the stream: its sequence number, name and data (`{"seq", "time_ns", "event",
    "vm"?, ...fields}`, as `GET /v1/events` lists them)."""
    seq: int | None
    name: str
    data: dict


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a Unix stream socket (`hvsim serve --listen unix:/path`): http.client with the
    connect step replaced; the Host header says "localhost"."""

    def __init__(self, path: str, timeout: float | None = TIMEOUT):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.socket_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


@dataclass(frozen=True)
class Server:
    """Where the service listens, parsed from `http://HOST:PORT[/prefix]`, `https://...`,
    `HOST:PORT` (as `hvsim serve --listen` takes it) or `unix:/path/to.sock`."""
    scheme: str          # "http", "https" or "unix"
    host: str            # the host name, or the socket's path for "unix"
    port: int | None
    prefix: str          # a path the API sits under ("" normally)

    @classmethod
    def parse(cls, url: str) -> Server:
        """ValueError with a message naming `url` when it is none of the forms above."""
        text = url.strip()
        if text.startswith("unix:"):
            path = text[len("unix:"):]
            if path.startswith("//"):   # unix:///run/x.sock, as some tools write it
                path = path[2:]
            if not path:
                raise ValueError(f"{url!r}: expected unix:/path/to/socket")
            return cls("unix", path, None, "")
        if "://" not in text:
            text = "http://" + text
        parts = urllib.parse.urlsplit(text)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url!r}: expected http://HOST:PORT or unix:/path/to/socket")
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"{url!r}: the port is not a number from 0 to 65535") from None
        return cls(parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80),
                   parts.path.rstrip("/"))

    def __str__(self) -> str:
        if self.scheme == "unix":
            return f"unix:{self.host}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.prefix}"

    def connection(self, timeout: float | None) -> http.client.HTTPConnection:
        if self.scheme == "unix":
            return UnixHTTPConnection(self.host, timeout=timeout)
        cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        return cls(self.host, self.port, timeout=timeout)


class Client:
    """The API at `server` (a URL as Server.parse takes it), as the principal of `token` (None:
    no Authorization header, as a local service without --users accepts from loopback)."""

    def __init__(self, server: str = DEFAULT_SERVER, token: str | None = None, *, timeout: float = TIMEOUT):
        self.server = Server.parse(server)
        self.token = token
        self.timeout = timeout

    # ---- requests ------------------------------------------------------------------------------
    def call(self, method: str, path: str, body: Any = None, *, query: dict | None = None) -> Any:
        """One request: `body` (if not None) sent as JSON, the answer's JSON returned (None for an
        empty answer). ApiError for an error status, Unreachable when there is no answer."""
        conn = self.server.connection(self.timeout)
        try:
            headers = self._headers({"Accept": "application/json"})
            data = None
            if body is not None:
                data = json.dumps(body).encode()
                headers["Content-Type"] = "application/json"
            status, raw, content_type = self._exchange(conn, method, self._target(path, query), data, headers)
        finally:
            conn.close()
        if status >= 400:
            raise _error(status, raw, content_type)
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise ApiError(status, "BadResponse", f"the service at {self.server} answered {method} {path} "
                                                  f"with something that is not JSON") from None

    def _exchange(self, conn, method: str, target: str, data: bytes | None, headers: dict) -> tuple[int, bytes, str]:
        try:
            conn.request(method, target, body=data, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read(), resp.getheader("Content-Type", "")
        except (OSError, http.client.HTTPException) as exc:
            raise Unreachable(str(self.server), _why(exc, self.timeout)) from None

    def _headers(self, extra: dict) -> dict:
        headers = dict(extra)
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def _target(self, path: str, query: dict | None) -> str:
        # None leaves a parameter out; a list repeats it (`vm=a&vm=b`); booleans as true/false.
        pairs = [(k, str(v).lower() if isinstance(v, bool) else str(v))
                 for k, values in (query or {}).items()
                 for v in (values if isinstance(values, (list, tuple)) else [values]) if v is not None]
        return self.server.prefix + path + (("?" + urllib.parse.urlencode(pairs)) if pairs else "")

    # ---- the event stream ----------------------------------------------------------------------
    def follow_events(self, since: int | None = None, *, vm: str | list[str] | None = None) -> Iterator[Event]:
        """The events after `since` (None: those the server starts a stream with) of the VMs `vm`
        names (None: every one the caller may see), as they come, until the stream ends. A stream
        that ends or drops is opened again once with Last-Event-ID (the server sends what came
        after it): the iteration ends when that one brings no new event, or nobody answers by
        then. Failing to open the first stream raises."""
        last, first, retried = since, True, False
        while True:
            progress = False
            try:
                for event in self._stream(last, vm, reconnect=not first):
                    progress, retried = True, False
                    if event.seq is not None:
                        last = event.seq
                    yield event
            except Unreachable:
                if first:
                    raise
                return   # a reconnection found nobody: the service is gone, and its stream with it
            first = False
            if not progress and retried:
                return
            retried = True

    def _stream(self, since: int | None, vm: str | list[str] | None, *, reconnect: bool) -> Iterator[Event]:
        conn = self.server.connection(self.timeout)
        try:
            headers = self._headers({"Accept": "text/event-stream", "Cache-Control": "no-cache"})
            if reconnect and since is not None:
                headers["Last-Event-ID"] = str(since)
            target = self._target("/v1/events", {"follow": True, "since": since, "vm": vm})
            try:
                conn.request("GET", target, headers=headers)
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                raise Unreachable(str(self.server), _why(exc, self.timeout)) from None
            if resp.status >= 400:
                raise _error(resp.status, resp.read(), resp.getheader("Content-Type", ""))
            # Connected: from here on the stream may stay quiet for as long as the simulation does.
            if conn.sock is not None:
                conn.sock.settimeout(None)
            try:
                yield from parse_sse(iter(resp.readline, b""))
            except (OSError, http.client.HTTPException):
                return   # dropped mid-stream: follow_events decides whether to reconnect
        finally:
            conn.close()


def parse_sse(lines: Iterator[bytes]) -> Iterator[Event]:
    """Server-sent events from the stream's lines (the WHATWG format: `field: value` lines, an
    event ends at an empty line, `:` starts a comment such as a keep-alive, several `data:` lines
    join with newlines). The data is JSON; an event without data is not dispatched."""
    seq: int | None = None
    name, data = "message", []
    for raw in lines:
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if not line:
            if data:
                text = "\n".join(data)
                try:
                    payload = json.loads(text)
                except ValueError:
                    payload = {"data": text}
                if not isinstance(payload, dict):
                    payload = {"data": payload}
                # The `event:` line names it; without one, the data's own "event" does.
                kind = payload.get("event", name) if name == "message" else name
                number = payload.get("seq")
                yield Event(number if isinstance(number, int) else seq, str(kind), payload)
            name, data = "message", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "data":
            data.append(value)
        elif field == "event":
            name = value
        elif field == "id":
            try:
                seq = int(value)
            except ValueError:
                pass   # not one of this API's ids: keep the last one
        # `retry:` and unknown fields are ignored, as the format says


def _error(status: int, raw: bytes, content_type: str) -> ApiError:
    """The API's `{"error": {"type", "message", ...}}`; anything else (a proxy's page, a framework's
    own `{"detail": ...}`) still becomes one ApiError with the best message it has."""
    try:
        body = json.loads(raw) if raw.strip() else None
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        return ApiError(status, str(err.get("type", "Error")), str(err.get("message", "")) or _reason(status), body)
    if isinstance(body, dict) and "detail" in body:
        detail = body["detail"]
        message = detail if isinstance(detail, str) else json.dumps(detail)
        return ApiError(status, _reason(status).replace(" ", ""), message, body)
    text = raw.decode("utf-8", "replace").strip() if "text/plain" in content_type else ""
    return ApiError(status, _reason(status).replace(" ", ""), text.splitlines()[0] if text else
                    f"HTTP {status} {_reason(status)}", body)


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _why(exc: BaseException, timeout: float | None) -> str:
    """A few words for why a connection failed."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is `hvsim serve` running?)"
    if isinstance(exc, FileNotFoundError):
        return "no such socket (is `hvsim serve` running?)"
    if isinstance(exc, socket.timeout):
        return f"no answer within {timeout:g} s"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "it closed the connection without answering"
    if isinstance(exc, (http.client.BadStatusLine, http.client.LineTooLong)):
        return "what answers there does not speak HTTP"
    if isinstance(exc, socket.gaierror):
        return f"unknown host ({exc.strerror})"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
