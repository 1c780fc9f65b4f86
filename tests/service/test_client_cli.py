"""`hvsim vm ...`, `hvsim events` and `hvsim clock` and their HTTP client
(partitions/service/client.py): first against a small stand-in of the API (its JSON shapes and
error answers, over TCP and a Unix socket, with an event stream that can be cut where a test
wants), then against the service itself (the API and uvicorn over an engine, on a free loopback
port or a Unix socket, and `hvsim serve` as a process)."""
from __future__ import annotations

import json
import re
import socket
import socketserver
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import given, strategies as st

from partitions.cli import main
from partitions.service.client import ApiError, Client, Server, Unreachable, parse_sse
from tests.service.test_serve_cli import serving  # noqa: F401  (a fixture: `hvsim serve` in a process)

# ---- a stand-in of the API -------------------------------------------------------------------------

ALLOWED = {"start": ("Off", "Saved"), "stop": ("Running",), "turn-off": ("Running", "Paused", "Saved"),
           "pause": ("Running",), "resume": ("Paused",), "save": ("Running", "Paused"), "restore": ("Saved",)}
AFTER = {"start": "Running", "stop": "Off", "turn-off": "Off", "pause": "Paused", "resume": "Running",
         "save": "Saved", "restore": "Running"}


class FakeApi:
    """The API's shapes over two VMs, with a simulated clock that moves 1 ms per action. `token`:
    the bearer token it wants (None: any request, as a local service). `streams`: what each
    successive event stream sends before it closes (a list of events), the last one repeated."""

    def __init__(self, token: str | None = None):
        self.token = token
        self.now = 0
        self.vms = {"web": "Off", "db": "Running"}
        self.events: list[dict] = []
        self.streams: list[list[dict]] | None = None
        self.requests: list[tuple[str, str, dict, object]] = []   # method, path, headers, body
        self.lock = threading.Lock()

    def row(self, name):
        return {"Name": name, "State": self.vms[name], "CPUUsage(%)": 0.0, "MemoryAssigned(M)": 512,
                "Uptime": "00:00:00.000", "Status": "Operating normally", "Host": "host", "Owner": None}

    def log(self, event, **fields):
        self.events.append({"seq": len(self.events) + 1, "time_ns": self.now, "event": event, **fields})

    def answer(self, method, path, query, headers, body):
        """(status, JSON document) for a request."""
        self.requests.append((method, path, headers, body))
        if self.token is not None and headers.get("Authorization") != f"Bearer {self.token}":
            return 401, error("Unauthorized", "no token, or a token this service does not know")
        m = re.fullmatch(r"/v1/vms/([^/]+)(?:/([a-z-]+))?", path)
        if path == "/v1/vms" and method == "GET":
            return 200, [self.row(n) for n in self.vms]
        if m and m.group(1) not in self.vms:
            return 404, error("NotFound", f"no VM named {m.group(1)!r}")
        if m and method == "GET" and m.group(2) is None:
            return 200, {**self.row(m.group(1)), "processors": 2, "memory_bytes": 512 << 20,
                         "checkpoints": [], "devices": [{"name": "storage", "type": "storvsc"}],
                         "measure": {"VMName": m.group(1), "NetworkInbound(M)": 0.0},
                         "cpu": [[0, 0.0], [100_000_000, 12.5]]}
        if m and method == "POST" and m.group(2) in ALLOWED:
            name, action = m.group(1), m.group(2)
            state = self.vms[name]
            if state not in ALLOWED[action]:
                return 409, error("InvalidTransition", f"vm {name!r} is {state}: cannot {action} "
                                                       f"(allowed from {', '.join(ALLOWED[action])})")
            self.now += 1_000_000
            self.vms[name] = AFTER[action]
            self.log("vm.state", vm=name, old=state, new=AFTER[action])
            return 200, self.row(name)
        if path == "/v1/events" and method == "GET":
            since = int(query.get("since", ["0"])[0])
            return 200, [e for e in self.events if e["seq"] > since]
        if path == "/v1/clock" and method == "GET":
            return 200, {"now_ns": self.now, "speed": 1, "paused": False, "windows": self.now // 10_000_000}
        return 404, error("NotFound", f"no endpoint {method} {path}")


def error(type, message):
    return {"error": {"type": type, "message": message}}


def handler_for(api: FakeApi):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.handle_request("GET")

        def do_POST(self):
            self.handle_request("POST")

        def do_PUT(self):
            self.handle_request("PUT")

        def do_DELETE(self):
            self.handle_request("DELETE")

        def handle_request(self, method):
            url = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            query = parse_qs(url.query)
            if "text/event-stream" in self.headers.get("Accept", "") and api.streams is not None:
                return self.stream()
            with api.lock:
                status, doc = api.answer(method, url.path, query, dict(self.headers), body)
            data = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def stream(self):
            """One stream of events: those the next entry of api.streams lists, after the
            Last-Event-ID the client sent, with a keep-alive comment; then the connection closes."""
            with api.lock:
                api.requests.append(("GET", self.path, dict(self.headers), None))
                events = api.streams.pop(0) if len(api.streams) > 1 else api.streams[0]
            last = int(self.headers.get("Last-Event-ID") or 0)
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            self.wfile.write(b": keep-alive\n\n")
            for e in events:
                if e["seq"] > last:
                    self.wfile.write(f"id: {e['seq']}\nevent: {e['event']}\ndata: {json.dumps(e)}\n\n".encode())
            self.wfile.flush()

        def log_message(self, *args):
            pass

    return Handler


class UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = False   # server_close() joins the handlers' threads

    def get_request(self):   # BaseHTTPRequestHandler wants a (host, port) client address
        request, _ = super().get_request()
        return request, ("local", 0)


def serve(server):
    # A short poll interval: shutdown() waits for the loop to look at its flag.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, name="fake-api")
    thread.start()
    return thread


def stop(server, thread):
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def api():
    """A stand-in of the API on a free loopback port: (FakeApi, its URL)."""
    fake = FakeApi()
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(fake))
    thread = serve(server)
    yield fake, f"http://127.0.0.1:{server.server_address[1]}"
    stop(server, thread)


def hvsim(capsys, *argv):
    """(exit status, stdout, stderr) of `hvsim ARGV` run in this process."""
    try:
        status = main(list(argv))
    except SystemExit as exc:   # argparse's usage errors
        status = exc.code
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture(autouse=True)
def no_environment(monkeypatch):
    """No server or token from the environment the tests run in; no thread left behind."""
    for name in ("HVSIM_SERVER", "HVSIM_TOKEN", "HVSIM_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    before = set(threading.enumerate())
    yield
    # A server's worker threads (AnyIO's, for its plain `def` endpoints) end shortly after its
    # event loop does: wait for that, with a deadline, rather than for a fixed time.
    deadline = time.monotonic() + 30
    while not set(threading.enumerate()) <= before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert set(threading.enumerate()) <= before


# ---- the CLI against the stand-in -------------------------------------------------------------------

def test_list_show_start_stop_round_trip(api, capsys):
    fake, url = api
    status, out, err = hvsim(capsys, "vm", "list", "--server", url)
    assert status == 0 and err == ""
    assert "Get-VM" in out and "web" in out and "db" in out and "Off" in out
    assert "Host" not in out and "Owner" not in out   # one host, no owners: hvsim run's columns
    status, out, _ = hvsim(capsys, "vm", "start", "web", "--server", url)
    assert (status, out) == (0, "vm 'web' is Running\n")
    assert fake.vms["web"] == "Running"
    status, out, _ = hvsim(capsys, "vm", "show", "web", "--server", url)
    assert status == 0
    for text in ("Running", "2 virtual processors", "512 MiB assigned of 512 MiB", "storage", "Checkpoints"):
        assert text in out
    status, out, _ = hvsim(capsys, "vm", "stop", "web", "--server", url)
    assert (status, out) == (0, "vm 'web' is Off\n")
    assert fake.vms["web"] == "Off"


def test_json_output_is_the_api_document(api, capsys):
    fake, url = api
    status, out, _ = hvsim(capsys, "vm", "list", "--json", "--server", url)
    assert status == 0 and [r["Name"] for r in json.loads(out)] == ["web", "db"]
    status, out, _ = hvsim(capsys, "vm", "pause", "db", "--json", "--server", url)
    assert status == 0 and json.loads(out)["State"] == "Paused"
    status, out, _ = hvsim(capsys, "clock", "--json", "--server", url)
    assert status == 0 and json.loads(out)["now_ns"] == 1_000_000
    status, out, _ = hvsim(capsys, "events", "--json", "--server", url)
    assert status == 0 and [json.loads(line)["new"] for line in out.splitlines()] == ["Paused"]


def test_an_invalid_transition_is_the_api_message_on_stderr(api, capsys):
    fake, url = api
    status, out, err = hvsim(capsys, "vm", "stop", "web", "--server", url)
    assert status == 1 and out == ""
    assert err == "hvsim vm: vm 'web' is Off: cannot stop (allowed from Running)\n"
    assert fake.vms["web"] == "Off"


def test_an_unknown_vm(api, capsys):
    _, url = api
    status, out, err = hvsim(capsys, "vm", "show", "nope", "--server", url)
    assert (status, out, err) == (1, "", "hvsim vm: no VM named 'nope'\n")


def test_no_server_is_one_clear_line_naming_the_address(capsys):
    with socket.socket() as s:   # a port nothing listens on: bound, never listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        status, out, err = hvsim(capsys, "vm", "list", "--server", f"http://127.0.0.1:{port}")
    assert status == 1 and out == ""
    assert err.startswith(f"hvsim vm: cannot reach the hvsim service at http://127.0.0.1:{port}: connection refused")
    assert err.count("\n") == 1


def test_the_server_from_the_environment(api, capsys, monkeypatch):
    _, url = api
    monkeypatch.setenv("HVSIM_SERVER", url)
    status, out, _ = hvsim(capsys, "vm", "list", "--json")
    assert status == 0 and len(json.loads(out)) == 2
    monkeypatch.setenv("HVSIM_SERVER", "gopher://x")
    status, _, err = hvsim(capsys, "vm", "list")
    assert (status, err) == (2, "hvsim vm: HVSIM_SERVER 'gopher://x': expected http://HOST:PORT or "
                                "unix:/path/to/socket\n")


def test_a_token_from_a_file_or_the_environment(capsys, tmp_path, monkeypatch):
    fake = FakeApi(token="s3cret-token")
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(fake))
    thread = serve(server)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        status, _, err = hvsim(capsys, "vm", "list", "--server", url)
        assert (status, err) == (1, "hvsim vm: no token, or a token this service does not know\n")
        token = tmp_path / "token"
        token.write_text("s3cret-token\n")
        status, out, _ = hvsim(capsys, "vm", "list", "--json", "--server", url, "--token-file", str(token))
        assert status == 0 and len(json.loads(out)) == 2
        monkeypatch.setenv("HVSIM_TOKEN_FILE", str(token))
        assert hvsim(capsys, "vm", "list", "--server", url)[0] == 0
        monkeypatch.delenv("HVSIM_TOKEN_FILE")
        monkeypatch.setenv("HVSIM_TOKEN", "s3cret-token")
        assert hvsim(capsys, "vm", "list", "--server", url)[0] == 0
        assert fake.requests[-1][2]["Authorization"] == "Bearer s3cret-token"
    finally:
        stop(server, thread)


def test_a_token_file_that_cannot_be_used_is_a_usage_error(capsys, tmp_path):
    missing = tmp_path / "missing"
    status, _, err = hvsim(capsys, "vm", "list", "--token-file", str(missing))
    assert status == 2 and err.startswith(f"hvsim vm: --token-file {missing}: No such file")
    empty = tmp_path / "empty"
    empty.write_text("\n")
    status, _, err = hvsim(capsys, "vm", "list", "--token-file", str(empty))
    assert status == 2 and "the file is empty" in err


def test_a_unix_socket_server(capsys, tmp_path):
    fake = FakeApi()
    path = tmp_path / "hvsim.sock"
    server = UnixHTTPServer(str(path), handler_for(fake))
    thread = serve(server)
    try:
        status, out, _ = hvsim(capsys, "vm", "start", "web", "--server", f"unix:{path}")
        assert (status, out) == (0, "vm 'web' is Running\n")
        assert fake.requests[-1][2]["Host"] == "localhost"
    finally:
        stop(server, thread)
    status, _, err = hvsim(capsys, "vm", "list", "--server", f"unix:{path}")
    assert status == 1 and f"unix:{path}" in err


def test_usage_errors_exit_2(api, capsys):
    _, url = api
    assert hvsim(capsys, "vm", "start", "--server", url)[0] == 2                 # no VM named
    assert hvsim(capsys, "vm", "create", "--template", "small", "--server", url)[0] == 2   # no --name
    assert hvsim(capsys, "clock", "--speed", "fast", "--server", url)[0] == 2
    assert hvsim(capsys, "clock", "--step", "100", "--server", url)[0] == 2     # no unit
    assert hvsim(capsys, "clock", "--pause", "--resume", "--server", url)[0] == 2
    assert hvsim(capsys, "vm", "list", "--server", "ftp://x")[0] == 2
    assert api[0].requests == []   # none of them reached the service


def test_events_follow_reads_to_the_end_of_the_stream(api, capsys):
    fake, url = api
    hvsim(capsys, "vm", "start", "web", "--server", url)
    hvsim(capsys, "vm", "stop", "web", "--server", url)
    fake.streams = [fake.events]
    status, out, err = hvsim(capsys, "events", "--follow", "--server", url)
    assert (status, err) == (0, "")
    lines = out.splitlines()
    assert len(lines) == 2
    assert lines[0].split() == ["0.001000", "s", "vm.state", "web", "old=Off", "new=Running"]
    assert lines[1].split()[2:] == ["vm.state", "web", "old=Running", "new=Off"]


def test_events_follow_reconnects_once_after_a_drop_with_last_event_id(api, capsys):
    fake, url = api
    for name in ("web", "db", "web"):
        hvsim(capsys, "vm", "start" if fake.vms[name] == "Off" else "pause", name, "--server", url)
    # The first stream drops after two events; the second sends the rest; the third nothing.
    fake.streams = [fake.events[:2], fake.events, []]
    status, out, _ = hvsim(capsys, "events", "--follow", "--json", "--server", url)
    assert status == 0
    assert [json.loads(line)["seq"] for line in out.splitlines()] == [1, 2, 3]
    streams = [r[2] for r in fake.requests if r[1].startswith("/v1/events")]
    assert [h.get("Last-Event-ID") for h in streams] == [None, "2", "3"]


def test_events_of_one_vm(api, capsys):
    fake, url = api
    hvsim(capsys, "vm", "start", "web", "--server", url)
    hvsim(capsys, "vm", "pause", "db", "--server", url)
    status, out, _ = hvsim(capsys, "events", "--vm", "db", "--server", url)
    assert status == 0 and [line.split()[3] for line in out.splitlines()] == ["db"]


# ---- the client on its own ----------------------------------------------------------------------------

def test_server_addresses():
    assert str(Server.parse("127.0.0.1:8450")) == "http://127.0.0.1:8450"
    assert str(Server.parse("http://[::1]:9000/")) == "http://[::1]:9000"
    assert Server.parse("unix:/run/hvsim.sock").host == "/run/hvsim.sock"
    assert Server.parse("unix:///run/hvsim.sock").host == "/run/hvsim.sock"
    for bad in ("ftp://x", "unix:", "http://host:99999", "http://"):
        with pytest.raises(ValueError):
            Server.parse(bad)


def test_an_api_error_carries_status_type_and_message(api):
    _, url = api
    with pytest.raises(ApiError) as info:
        Client(url).call("POST", "/v1/vms/web/stop")
    assert (info.value.status, info.value.type) == (409, "InvalidTransition")
    assert str(info.value) == "vm 'web' is Off: cannot stop (allowed from Running)"


def test_unreachable_names_the_address(tmp_path):
    with pytest.raises(Unreachable, match=re.escape(f"unix:{tmp_path}/none.sock")):
        Client(f"unix:{tmp_path}/none.sock").call("GET", "/v1/vms")


def test_sse_parsing():
    stream = (b": keep-alive\n\n"
              b"id: 7\r\nevent: vm.state\r\ndata: {\"seq\": 7, \"vm\": \"a\"}\r\n\r\n"
              b"data: {\"seq\": 8,\ndata: \"event\": \"x\"}\n\n"
              b"event: nothing\n\n"
              b"id: 9\nretry: 5\ndata:{\"event\": \"y\"}\n\n")
    events = list(parse_sse(iter(stream.splitlines(keepends=True))))
    assert [(e.seq, e.name) for e in events] == [(7, "vm.state"), (8, "x"), (9, "y")]
    assert events[0].data == {"seq": 7, "vm": "a"}


# ---- the CLI against the service itself ----------------------------------------------------------------
# The API of partitions/service/api.py over an engine of SMALL_HOST (tests/service/conftest.py):
# "steady" and "idle" Running at time 0, the clock paused, so that nothing moves unless a test
# steps it.

def vm_state(capsys, url, name):
    status, out, _ = hvsim(capsys, "vm", "show", name, "--json", "--server", url)
    assert status == 0
    return json.loads(out)["State"]


def test_service_list_show_stop_start_round_trip(server, capsys):
    url = server.url
    status, out, _ = hvsim(capsys, "vm", "list", "--server", url)
    assert status == 0 and re.search(r"│ idle +│ Running", out)
    # Let the guests negotiate their integration services (the shutdown one stops a VM).
    assert hvsim(capsys, "clock", "--step", "1s", "--server", url)[0] == 0
    status, out, _ = hvsim(capsys, "vm", "stop", "idle", "--server", url)
    assert status == 0 and re.fullmatch(r"vm 'idle' is (Stopping|Off)\n", out)
    assert hvsim(capsys, "clock", "--step", "1s", "--server", url)[0] == 0
    assert vm_state(capsys, url, "idle") == "Off"
    status, out, _ = hvsim(capsys, "vm", "start", "idle", "--server", url)
    assert status == 0 and re.fullmatch(r"vm 'idle' is (Starting|Running)\n", out)
    assert hvsim(capsys, "clock", "--step", "100ms", "--server", url)[0] == 0
    assert vm_state(capsys, url, "idle") == "Running"
    status, out, _ = hvsim(capsys, "vm", "show", "idle", "--server", url)
    assert status == 0
    for text in ("Running", "1 virtual processor", "64 MiB assigned of 64 MiB", "heartbeat", "Measure"):
        assert text in out


def test_service_json_output_parses(server, capsys):
    url = server.url
    status, out, _ = hvsim(capsys, "vm", "list", "--json", "--server", url)
    assert status == 0 and sorted(r["Name"] for r in json.loads(out)) == ["idle", "steady"]
    status, out, _ = hvsim(capsys, "vm", "pause", "steady", "--json", "--server", url)
    assert status == 0 and json.loads(out)["State"] == "Paused"
    status, out, _ = hvsim(capsys, "clock", "--step", "100ms", "--json", "--server", url)
    assert status == 0 and json.loads(out)["now_ns"] == 100_000_000 and json.loads(out)["paused"] is True
    status, out, _ = hvsim(capsys, "events", "--vm", "steady", "--json", "--server", url)
    events = [json.loads(line) for line in out.splitlines()]
    assert status == 0 and events and {e["vm"] for e in events} == {"steady"}
    assert [(e["old"], e["new"]) for e in events if e["event"] == "vm.state"][-1] == ("Running", "Paused")


def test_service_invalid_transition_and_unknown_vm(server, capsys):
    url = server.url
    status, out, err = hvsim(capsys, "vm", "resume", "idle", "--server", url)
    assert (status, out) == (1, "")
    assert err == "hvsim vm: vm 'idle' is Running: cannot resume (allowed from Paused)\n"
    assert vm_state(capsys, url, "idle") == "Running"
    status, out, err = hvsim(capsys, "vm", "start", "nope", "--server", url)
    assert (status, out) == (1, "") and err == "hvsim vm: no VM named 'nope'\n"


def test_service_create_and_delete_from_a_template_and_a_fragment(server, capsys, tmp_path):
    url = server.url
    status, out, _ = hvsim(capsys, "vm", "create", "--template", "small", "--name", "n1", "--server", url)
    assert (status, out) == (0, "vm 'n1' created, Off\n")
    fragment = tmp_path / "n2.toml"
    fragment.write_text('name = "n2"\nmemory = "32MiB"\n')
    status, out, _ = hvsim(capsys, "vm", "create", "--file", str(fragment), "--server", url)
    assert (status, out) == (0, "vm 'n2' created, Off\n")
    fragment.write_text('name = "n3"\nmemory = "lots"\n')
    status, _, err = hvsim(capsys, "vm", "create", "--file", str(fragment), "--server", url)
    assert status == 1 and "memory" in err and err.count("\n") == 1
    assert hvsim(capsys, "vm", "delete", "n1", "--server", url)[:2] == (0, "vm 'n1' deleted\n")
    status, out, _ = hvsim(capsys, "vm", "list", "--json", "--server", url)
    assert sorted(r["Name"] for r in json.loads(out)) == ["idle", "n2", "steady"]


def test_service_clock(server, capsys):
    url = server.url
    status, out, _ = hvsim(capsys, "clock", "--server", url)
    assert (status, out) == (0, "simulated time 0.000000 s, speed max (as fast as it can), paused (0 windows)\n")
    status, out, _ = hvsim(capsys, "clock", "--speed", "2", "--step", "250ms", "--json", "--server", url)
    clock = json.loads(out)
    assert status == 0 and (clock["now_ns"], clock["speed"], clock["paused"]) == (250_000_000, 2, True)
    status, out, _ = hvsim(capsys, "clock", "--speed", "max", "--resume", "--json", "--server", url)
    assert status == 0 and json.loads(out)["paused"] is False
    status, out, _ = hvsim(capsys, "clock", "--pause", "--json", "--server", url)
    assert status == 0 and json.loads(out)["paused"] is True
    status, _, err = hvsim(capsys, "clock", "--resume", "--step", "1ms", "--server", url)
    assert status == 1 and err.startswith("hvsim clock: ")   # a running clock cannot be stepped: 409


def test_service_token_file(make_engine, make_server, tmp_path, capsys, monkeypatch):
    from partitions.service.auth import Authorizer
    users = tmp_path / "users.toml"
    assert main(["users", "add", "vera", "--role", "Viewer", "--file", str(users)]) == 0
    token = tmp_path / "vera.token"
    token.write_text(capsys.readouterr().out)
    server = make_server(make_engine(paused=True), Authorizer.from_file(users))
    try:
        status, _, err = hvsim(capsys, "vm", "list", "--server", server.url)
        assert status == 1 and err.startswith("hvsim vm: ") and err.count("\n") == 1
        status, out, _ = hvsim(capsys, "vm", "list", "--json", "--server", server.url, "--token-file", str(token))
        assert status == 0 and len(json.loads(out)) == 2
        status, _, err = hvsim(capsys, "vm", "pause", "idle", "--server", server.url, "--token-file", str(token))
        assert status == 1 and "vera" in err and "Viewer" in err      # Forbidden names user and role
        monkeypatch.setenv("HVSIM_TOKEN_FILE", str(token))
        monkeypatch.setenv("HVSIM_SERVER", server.url)
        assert hvsim(capsys, "vm", "show", "idle")[0] == 0
    finally:
        server.authorizer.close()


class UnixServer:
    """The API served by uvicorn on a Unix socket at `path`, in a thread."""

    def __init__(self, engine, path):
        import uvicorn

        from partitions.service.api import create_app
        from partitions.service.auth import Authorizer
        self.app = create_app(engine, Authorizer.local())
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", access_log=False,
                                                    timeout_graceful_shutdown=5))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, name="uvicorn-unix")
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:   # its readiness, polled with a deadline
            assert time.monotonic() < deadline and self.thread.is_alive(), "the server did not start"
            time.sleep(0.01)

    def close(self):
        self.app.state.closing = True
        self.server.should_exit = True
        self.thread.join()
        self.sock.close()


def test_service_on_a_unix_socket(engine, tmp_path, capsys):
    path = tmp_path / "hvsim.sock"
    server = UnixServer(engine, path)
    try:
        status, out, _ = hvsim(capsys, "vm", "pause", "idle", "--server", f"unix:{path}")
        assert (status, out) == (0, "vm 'idle' is Paused\n")   # a Unix-socket client is the local Administrator
        status, out, _ = hvsim(capsys, "vm", "list", "--json", "--server", f"unix:{path}")
        assert status == 0 and {r["Name"]: r["State"] for r in json.loads(out)}["idle"] == "Paused"
    finally:
        server.close()


class Follower:
    """`hvsim events --follow` against `url` in a process of its own: its output read line by line
    from a pipe, its errors into a file. A guard kills it if it is still there after two minutes
    (a hang is then a failure, not a stuck test suite); used as a context manager."""

    def __init__(self, url, tmp_path, *args):
        import os
        import subprocess
        import sys
        env = {k: v for k, v in os.environ.items() if not k.startswith("HVSIM_")}
        self.err = open(tmp_path / "follow.stderr", "w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "partitions.cli", "events", "--follow", "--server", url,
                                      *args], stdout=subprocess.PIPE, stderr=self.err, text=True, env=env)
        self.guard = threading.Timer(120, self.proc.kill)
        self.guard.start()

    def readline(self) -> str:
        return self.proc.stdout.readline()

    def finish(self) -> tuple[int, str, str]:
        """(exit status, the rest of its output, its errors), once it has ended."""
        out = self.proc.stdout.read()
        status = self.proc.wait()
        self.err.seek(0)
        return status, out, self.err.read()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self.err.close()
        self.guard.cancel()
        self.guard.join()


def test_service_events_follow_prints_a_start_as_it_happens_and_stops_at_the_end_of_the_stream(
        engine, server, capsys, tmp_path):
    url = server.url
    assert hvsim(capsys, "clock", "--step", "1s", "--server", url)[0] == 0
    assert hvsim(capsys, "vm", "turn-off", "idle", "--server", url)[0] == 0
    with Follower(url, tmp_path, "--since", str(engine.last_seq), "--vm", "idle") as follower:
        assert hvsim(capsys, "vm", "start", "idle", "--server", url)[0] == 0
        first = follower.readline()   # the start, as it happened
        assert first.split()[2:] == ["vm.state", "idle", "old=Off", "new=Starting"]
        assert hvsim(capsys, "clock", "--step", "100ms", "--server", url)[0] == 0
        # Once the simulation stops, the stream ends; the client's one reconnection finds nothing
        # newer, and it exits 0.
        engine.stop()
        status, out, err = follower.finish()
    lines = [first] + out.splitlines()
    assert (status, err) == (0, "")
    changes = [line.split()[4:6] for line in lines if line.split()[2] == "vm.state"]
    assert changes[:2] == [["old=Off", "new=Starting"], ["old=Starting", "new=Running"]]
    assert changes[-1] == ["old=Running", "new=Off"]   # the engine's stop turned it off
    assert {line.split()[3] for line in lines} == {"idle"}
    assert [float(line.split()[0]) for line in lines] == sorted(float(line.split()[0]) for line in lines)


def test_service_events_follow_ends_at_ctrl_c_with_130(server, tmp_path):
    import signal
    with Follower(server.url, tmp_path) as follower:
        assert follower.readline()   # connected: the events so far are coming
        follower.proc.send_signal(signal.SIGINT)
        status, _, err = follower.finish()
    assert status == 130 and "Traceback" not in err


def test_get_vm_table_adds_host_and_owner_only_when_they_say_something():
    from rich.console import Console

    from partitions.cli.vm import vm_table
    fake = FakeApi()
    rows = [fake.row("web"), fake.row("db")]

    def header(rows):
        console = Console(width=200, record=True)
        console.print(vm_table(rows))
        return console.export_text().splitlines()[2].split()

    assert header(rows) == ["┃", "Name", "┃", "State", "┃", "CPUUsage(%)", "┃", "MemoryAssigned(M)", "┃", "Uptime",
                            "┃", "Status", "┃"]
    rows[1] = {**rows[1], "Host": "b", "Owner": "carol"}
    assert header(rows)[-5:] == ["┃", "Host", "┃", "Owner", "┃"]


def test_service_move_between_the_hosts_of_a_datacenter(make_engine, make_server, capsys):
    from tests.service.test_engine import TWO_HOSTS
    url = make_server(make_engine(TWO_HOSTS, paused=True)).url
    status, out, _ = hvsim(capsys, "vm", "list", "--server", url)
    assert status == 0 and re.search(r"│ mover +│ Running .*│ a +│", out)   # two hosts: the Host column
    assert hvsim(capsys, "clock", "--step", "10ms", "--server", url)[0] == 0
    status, _, err = hvsim(capsys, "vm", "move", "mover", "--to", "c", "--server", url)
    assert status == 1 and err.startswith("hvsim vm: ") and "no host named 'c'" in err and err.count("\n") == 1
    status, out, _ = hvsim(capsys, "vm", "move", "mover", "--to", "b", "--server", url)
    assert status == 0 and out.startswith("vm 'mover' is ") and out.endswith(" on a\n")   # under way
    assert hvsim(capsys, "clock", "--step", "1s", "--server", url)[0] == 0
    deadline = time.monotonic() + 30   # the view is published after the step's last window
    while json.loads(hvsim(capsys, "vm", "show", "mover", "--json", "--server", url)[1])["Host"] != "b":
        assert time.monotonic() < deadline, "the move did not end"
        time.sleep(0.01)


_names = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=20).filter(
    lambda s: s.strip() == s and s != "message")
_events = st.lists(st.tuples(_names, st.dictionaries(st.text(max_size=8), st.one_of(
    st.integers(), st.text(), st.booleans(), st.none()), max_size=4)), max_size=8)


def _wire(events, eol: str, comments: bool) -> tuple[bytes, list[int]]:
    """The events as the API sends them (id, event, data), with keep-alive comments between them;
    and where each event is complete: past its blank line's first character (a lone CR ends a
    line too)."""
    out, ends = b"", []
    for seq, (name, data) in enumerate(events, 1):
        if comments:
            out += f": keep-alive{eol}{eol}".encode()
        out += f"id: {seq}{eol}event: {name}{eol}data: {json.dumps({**data, 'seq': seq})}{eol}{eol}".encode()
        ends.append(len(out) - len(eol) + 1)
    return out, ends


@given(_events, st.sampled_from(["\n", "\r\n"]), st.booleans(), st.data())
def test_sse_parses_back_what_was_sent_and_a_cut_stream_gives_only_its_whole_events(events, eol, comments, data):
    wire, ends = _wire(events, eol, comments)
    expected = [(seq, name, {**d, "seq": seq}) for seq, (name, d) in enumerate(events, 1)]
    assert [(e.seq, e.name, e.data) for e in parse_sse(iter(wire.splitlines(keepends=True)))] == expected
    cut = data.draw(st.integers(0, len(wire)), label="cut")
    got = [(e.seq, e.name, e.data) for e in parse_sse(iter(wire[:cut].splitlines(keepends=True)))]
    assert got == expected[:sum(end <= cut for end in ends)]


def test_service_checkpoint_apply_save_restore_of_a_vm_with_a_disk(server, capsys, tmp_path):
    url = server.url
    fragment = tmp_path / "d1.toml"   # small memory: a save writes what the guest touched
    fragment.write_text('name = "d1"\nmemory = "32MiB"\ndisks = [ { path = "d1.vhd", size = "8MiB" } ]\n')
    assert hvsim(capsys, "vm", "create", "--file", str(fragment), "--server", url)[0] == 0
    assert hvsim(capsys, "vm", "start", "d1", "--server", url)[0] == 0
    assert hvsim(capsys, "clock", "--step", "20ms", "--server", url)[0] == 0   # booted, VSS negotiated
    status, out, _ = hvsim(capsys, "vm", "checkpoint", "d1", "--name", "c1", "--server", url)
    assert (status, out) == (0, "vm 'd1' is Running; checkpoint 'c1' taken\n")
    assert hvsim(capsys, "clock", "--step", "20ms", "--server", url)[0] == 0   # the guest's VSS froze, thawed
    status, out, _ = hvsim(capsys, "vm", "show", "d1", "--server", url)
    assert status == 0 and "c1 (taken at 0.020 s, consistent)" in out
    assert hvsim(capsys, "vm", "turn-off", "d1", "--server", url)[:2] == (0, "vm 'd1' is Off\n")
    assert hvsim(capsys, "vm", "apply", "d1", "c1", "--server", url)[:2] == (0, "vm 'd1' is Off\n")
    status, _, err = hvsim(capsys, "vm", "apply", "d1", "nope", "--server", url)
    assert (status, err) == (1, "hvsim vm: vm 'd1' has no checkpoint named 'nope'\n")
    assert hvsim(capsys, "vm", "start", "d1", "--server", url)[0] == 0
    assert hvsim(capsys, "clock", "--step", "20ms", "--server", url)[0] == 0
    assert hvsim(capsys, "vm", "save", "d1", "--server", url)[:2] == (0, "vm 'd1' is Saved\n")
    assert hvsim(capsys, "vm", "restore", "d1", "--server", url)[:2] == (0, "vm 'd1' is Running\n")
    status, out, _ = hvsim(capsys, "vm", "list", "--server", url)
    assert status == 0 and re.search(r"│ d1 +│ Running .*│ local +│", out)   # created through the API: an owner


def test_a_server_that_does_not_speak_http_is_unreachable_naming_it(capsys):
    class Banner(socketserver.BaseRequestHandler):
        def handle(self):
            self.request.recv(4096)
            self.request.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Banner)
    server.daemon_threads = False
    thread = serve(server)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        status, out, err = hvsim(capsys, "vm", "list", "--server", url)
    finally:
        stop(server, thread)
    assert (status, out) == (1, "")
    assert err == f"hvsim vm: cannot reach the hvsim service at {url}: what answers there does not speak HTTP\n"


def test_quick_start_hvsim_serve_then_hvsim_vm(serving, capsys):
    """docs/service.md's quick start: `hvsim serve` (the built-in default host), then `hvsim vm`."""
    s = serving("--listen", "127.0.0.1:0", "--state", "state", "--paused")
    url = f"http://{s.host}:{s.port}"
    status, out, _ = hvsim(capsys, "vm", "list", "--server", url)
    assert status == 0 and all(re.search(rf"│ {name} +│ Running", out) for name in ("web", "db", "batch"))
    assert hvsim(capsys, "clock", "--step", "100ms", "--server", url)[0] == 0
    assert hvsim(capsys, "vm", "stop", "batch", "--server", url)[0] == 0
    assert hvsim(capsys, "clock", "--step", "100ms", "--server", url)[0] == 0
    assert vm_state(capsys, url, "batch") == "Off"
    assert hvsim(capsys, "vm", "start", "batch", "--server", url)[0] == 0
    assert hvsim(capsys, "clock", "--step", "100ms", "--server", url)[0] == 0
    assert vm_state(capsys, url, "batch") == "Running"
    code, _, err = s.stop()
    assert code == 0 and "Traceback" not in err
