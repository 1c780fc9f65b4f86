"""`hvsim serve` as a process: it says where it listens, answers the API, stops cleanly on SIGTERM
and SIGINT (exit 0, no traceback, nothing saved), refuses bad options and files with one line and
exit 2, listens on a Unix socket, and a restart with the same --state has the VMs the API made."""
import http.client
import json
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.service.conftest import SMALL_HOST


def hvsim(*args, cwd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "partitions.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, **kw)


class Serving:
    """`hvsim serve ARGS` in a subprocess, once it has printed where it listens."""

    def __init__(self, tmp_path, *args):
        env = dict(os.environ, PYTHONPATH=os.getcwd())
        self.proc = subprocess.Popen([sys.executable, "-m", "partitions.cli", "serve", *args], cwd=tmp_path,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + 60
        line = ""
        while not line:   # its readiness line, with a deadline
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop(signal.SIGKILL)
                raise AssertionError(f"hvsim serve did not start: {self.proc.stderr.read()}")
            if sel.select(timeout=1):
                line = self.proc.stdout.readline()
        sel.close()
        self.line = line
        m = re.search(r"listening on (http://([\d.]+):(\d+)|unix:(\S+)) ", line)
        assert m, line
        self.host, self.port = (m.group(2), int(m.group(3))) if m.group(2) else (None, None)
        self.unix = m.group(4)

    def request(self, method: str, path: str, body=None):
        if self.unix:
            conn = http.client.HTTPConnection("localhost", timeout=30)
            conn.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            conn.sock.connect(self.unix)
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            data = json.dumps(body).encode() if body is not None else None
            conn.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
            response = conn.getresponse()
            return response.status, json.loads(response.read() or b"null")
        finally:
            conn.close()

    def stop(self, sig=signal.SIGTERM) -> tuple[int, str, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            out, err = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        return self.proc.returncode, out, err


@pytest.fixture
def serving(tmp_path):
    """serving(*args) -> a Serving; each is stopped (killed if need be) at the test's end."""
    started = []

    def start(*args):
        s = Serving(tmp_path, *args)
        started.append(s)
        return s
    yield start
    for s in started:
        if s.proc.poll() is None:
            s.stop(signal.SIGKILL)


@pytest.fixture
def host_file(tmp_path):
    path = tmp_path / "small.toml"
    path.write_text(SMALL_HOST)
    return path


def test_serve_answers_then_stops_on_sigterm_with_status_0_and_saves_nothing(serving, host_file, tmp_path):
    s = serving(str(host_file), "--listen", "127.0.0.1:0", "--state", "state", "--speed", "max")
    assert s.line.startswith(f"hvsim serve: listening on http://127.0.0.1:{s.port} ")
    assert f"http://127.0.0.1:{s.port}/console/" in s.line
    status, vms = s.request("GET", "/v1/vms")
    assert status == 200 and [v["Name"] for v in vms] == ["steady", "idle"]
    status, row = s.request("POST", "/v1/vms/idle/pause")
    assert status == 200 and row["State"] == "Paused"
    code, out, err = s.stop(signal.SIGTERM)
    assert code == 0, err
    assert "Traceback" not in err and "ERROR" not in err
    assert not list((tmp_path / "state").glob("*.hvsav"))
    audit = [json.loads(line) for line in (tmp_path / "state" / "audit.jsonl").read_text().splitlines()]
    assert [(a["action"], a["status"]) for a in audit] == [("vms.list", 200), ("vms.pause", 200)]


def test_sigint_stops_it_too_even_with_an_event_stream_open(serving, host_file):
    s = serving(str(host_file), "--listen", "127.0.0.1:0", "--state", "state", "--paused")
    stream = socket.create_connection((s.host, s.port), timeout=30)
    stream.sendall(b"GET /v1/events?follow=true HTTP/1.1\r\nHost: x\r\n\r\n")
    assert stream.recv(4096).startswith(b"HTTP/1.1 200")
    code, out, err = s.stop(signal.SIGINT)
    stream.close()
    assert code == 0 and "Traceback" not in err, err


def test_a_unix_socket(serving, host_file, tmp_path):
    s = serving(str(host_file), "--listen", f"unix:{tmp_path / 'hvsim.sock'}", "--state", "state", "--paused")
    assert s.unix == str(tmp_path / "hvsim.sock")
    assert oct((tmp_path / "hvsim.sock").stat().st_mode & 0o777) == oct(0o600)
    status, me = s.request("GET", "/v1/whoami")
    assert status == 200 and me["role"] == "Administrator"
    assert s.stop()[0] == 0
    assert not (tmp_path / "hvsim.sock").exists()


def test_vms_created_through_the_api_come_back_with_the_same_state_directory(serving, host_file, tmp_path):
    args = (str(host_file), "--listen", "127.0.0.1:0", "--state", "state", "--paused")
    s = serving(*args)
    status, row = s.request("POST", "/v1/vms", {"toml": 'memory = "32MiB"', "name": "extra"})
    assert status == 201
    assert s.request("POST", "/v1/vms/extra/start")[1]["State"] == "Running"
    assert s.request("POST", "/v1/clock/step", {"by": "50ms"})[0] == 200
    assert s.request("POST", "/v1/vms/extra/save")[1]["State"] == "Saved"
    assert s.stop()[0] == 0
    s = serving(*args)
    rows = {r["Name"]: r for r in s.request("GET", "/v1/vms")[1]}
    assert rows["extra"]["State"] == "Saved" and rows["extra"]["Owner"] == "local"
    assert s.request("POST", "/v1/vms/extra/start")[1]["State"] == "Running"
    assert s.stop()[0] == 0


@pytest.mark.parametrize("args, message", [
    (["--listen", "localhost"], "--listen localhost: expected HOST:PORT"),
    (["--listen", "127.0.0.1:99999"], "--listen 127.0.0.1:99999: expected HOST:PORT"),
    (["--speed", "0"], "--speed 0: expected a positive number"),
    (["--speed", "fast"], "--speed fast: expected a positive number"),
    (["--seed", "-1"], "--seed"),
    (["--window", "0ms"], "--window 0ms: expected a positive duration"),
    (["--users", "missing.toml"], "missing.toml"),
    (["--templates", "missing.toml"], "missing.toml"),
    (["nope.toml"], "nope.toml"),
])
def test_a_bad_option_or_file_is_one_line_and_status_2(tmp_path, args, message):
    result = hvsim("serve", "--state", "state", *args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hvsim serve: ") and message in lines[0], result.stderr
    assert result.stdout == ""


def test_a_bad_key_in_the_host_file_names_the_file_and_key(tmp_path):
    (tmp_path / "bad.toml").write_text('[[vm]]\nname = "a"\nmemory = "lots"\n')
    result = hvsim("serve", "bad.toml", "--state", "state", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("hvsim serve: bad.toml: vm[0].memory: expected")


def test_a_port_in_use_is_a_usage_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = hvsim("serve", "--listen", f"127.0.0.1:{port}", "--state", "state", cwd=tmp_path)
    assert result.returncode == 2 and f"--listen 127.0.0.1:{port}:" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_connections_to_the_listening_socket_get_tcp_nodelay():
    """asyncio (under uvicorn) sets TCP_NODELAY only on a socket whose proto says TCP; without it a
    keep-alive client waited ~40 ms per request (Nagle and the delayed ACK)."""
    import asyncio

    from partitions.cli.serve import _bind
    sock = _bind("tcp", ("127.0.0.1", 0))

    async def main():
        seen = []

        async def handle(reader, writer):
            seen.append(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()
        server = await asyncio.start_server(handle, sock=sock)
        reader, writer = await asyncio.open_connection(*sock.getsockname()[:2])
        await reader.read()
        writer.close()
        server.close()
        await server.wait_closed()
        return seen
    assert [bool(x) for x in asyncio.run(main())] == [True]
