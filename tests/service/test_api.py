"""The HTTP API (partitions/service/api.py) through a real uvicorn on a free loopback port: every
endpoint, its status codes and error JSON; a bad request (malformed JSON, an oversized body, an
unknown VM, a wrong state) changes nothing; an event stream's client may go away at any time."""
import http.client
import json
import socket

import pytest

from partitions.service.auth import ACTIONS, Authorizer

from tests.service.test_engine import wait_for


def view(server) -> dict:
    """What a failed request must not change: the VMs and the clock (the windows too)."""
    snap = server.engine.snapshot()
    return {"vms": snap["vms"], "clock": snap["clock"]}


def test_every_action_is_an_operation_of_the_openapi_document(server):
    status, doc, _ = server.request("GET", "/v1/openapi.json")
    assert status == 200
    ops = {op["operationId"]: (method.upper(), path) for path, item in doc["paths"].items()
           for method, op in item.items()}
    assert set(ops) == set(ACTIONS)
    assert ops["vms.turn-off"] == ("POST", "/v1/vms/{name}/turn-off")
    assert ops["clock.step"] == ("POST", "/v1/clock/step")
    schemas = doc["components"]["schemas"]
    assert "CPUUsage(%)" in schemas["VmRow"]["properties"] and "ErrorBody" in schemas
    status, page, _ = server.request("GET", "/v1/docs")
    assert status == 200 and "swagger" in page.lower()


def test_whoami_clock_hosts_and_vms(server):
    assert server.request("GET", "/v1/whoami")[:2] == (200, {"user": "local", "role": "Administrator",
                                                              "actions": list(ACTIONS)})
    assert server.request("GET", "/v1/clock")[1] == {"now_ns": 0, "speed": "max", "paused": True, "windows": 0}
    status, hosts, _ = server.request("GET", "/v1/hosts")
    assert status == 200 and hosts == [{"name": "host", "logical_processors": 2, "memory_bytes": 2**30,
                                        "vms": ["steady", "idle"]}]
    status, vms, _ = server.request("GET", "/v1/vms")
    assert status == 200 and [(v["Name"], v["State"], v["Host"], v["Owner"]) for v in vms] == [
        ("steady", "Running", "host", None), ("idle", "Running", "host", None)]
    assert set(vms[0]) == {"Name", "State", "CPUUsage(%)", "MemoryAssigned(M)", "Uptime", "Status", "Host", "Owner"}


def test_the_clock_steps_exactly_pauses_and_runs(server):
    status, clock, _ = server.request("POST", "/v1/clock/step", {"by": "100ms"})
    assert status == 200 and clock["now_ns"] == 100_000_000 and clock["paused"] is True
    status, vm, _ = server.request("GET", "/v1/vms/steady")
    assert status == 200 and [t for t, _ in vm["cpu"]] == [100_000_000]
    assert vm["processors"] == 1 and vm["memory_bytes"] == 64 * 2**20 and "heartbeat" in vm["devices"]
    assert vm["measure"]["VMName"] == "steady" and vm["checkpoints"] == []
    status, clock, _ = server.request("PUT", "/v1/clock", {"speed": 2, "paused": False})
    assert status == 200 and clock["speed"] == 2 and clock["paused"] is False
    status, body, _ = server.request("POST", "/v1/clock/step", {"by": "10ms"})
    assert status == 409 and body["error"]["type"] == "Conflict" and "pause it" in body["error"]["message"]
    status, clock, _ = server.request("PUT", "/v1/clock", {"speed": "max", "paused": True})
    assert status == 200 and clock["speed"] == "max" and clock["paused"] is True
    before = view(server)
    status, body, _ = server.request("PUT", "/v1/clock", {"speed": -1})
    assert status == 400 and "speed" in body["error"]["message"] and view(server) == before
    status, body, _ = server.request("POST", "/v1/clock/step", {"by": "soon"})
    assert status == 400 and body["error"]["type"] == "BadRequest" and view(server) == before


def test_lifecycle_actions_answer_the_row_after_them(server):
    server.request("POST", "/v1/clock/step", {"by": "100ms"})   # the guests are up (the shutdown service too)
    for action, state in [("pause", "Paused"), ("resume", "Running"), ("save", "Saved"), ("restore", "Running"),
                          ("stop", "Stopping"), ]:
        status, row, _ = server.request("POST", f"/v1/vms/idle/{action}")
        assert (status, row["Name"], row["State"]) == (200, "idle", state), (action, row)
    server.request("POST", "/v1/clock/step", {"by": "200ms"})   # the guest shuts down
    assert next(r for r in server.engine.snapshot()["vms"] if r["Name"] == "idle")["State"] == "Off"
    status, row, _ = server.request("POST", "/v1/vms/idle/start")
    assert (status, row["State"]) == (200, "Running")
    status, row, _ = server.request("POST", "/v1/vms/idle/turn-off")
    assert (status, row["State"]) == (200, "Off")


def test_a_wrong_state_is_409_with_the_transitions_message_and_changes_nothing(server):
    before = view(server)
    status, body, _ = server.request("POST", "/v1/vms/idle/resume")
    assert status == 409
    assert body == {"error": {"type": "InvalidTransition", "vm": "idle", "state": "Running",
                              "message": "vm 'idle' is Running: cannot resume (allowed from Paused)"}}
    status, body, _ = server.request("DELETE", "/v1/vms/idle")
    assert status == 409 and body["error"]["type"] == "InvalidTransition" and "cannot delete" in body["error"]["message"]
    status, body, _ = server.request("POST", "/v1/vms/idle/move", {"to": "b"})
    assert status == 409 and body["error"]["type"] == "Conflict" and "single host" in body["error"]["message"]
    status, body, _ = server.request("POST", "/v1/vms/idle/checkpoint", {"name": "c1"})
    assert status == 409 and "no disk" in body["error"]["message"]
    assert view(server) == before


def test_unknown_vms_and_endpoints_are_404(server):
    before = view(server)
    for method, path in [("GET", "/v1/vms/nope"), ("POST", "/v1/vms/nope/start"), ("DELETE", "/v1/vms/nope"),
                         ("GET", "/v1/nothing-here")]:
        status, body, _ = server.request(method, path)
        assert status == 404 and body["error"]["type"] == "NotFound", (method, path, body)
    assert "no VM named 'nope'" in server.request("GET", "/v1/vms/nope")[1]["error"]["message"]
    status, body, _ = server.request("POST", "/v1/vms/idle/apply", {"checkpoint": "never"})
    assert status == 404 and "no checkpoint named 'never'" in body["error"]["message"]
    assert view(server) == before


def test_malformed_json_and_bad_fields_are_400_and_change_nothing(server):
    before = view(server)
    status, body, _ = server.request("PUT", "/v1/clock", raw=b'{"paused": tru')
    assert status == 400 and body["error"]["type"] == "BadRequest" and "malformed JSON" in body["error"]["message"]
    status, body, _ = server.request("PUT", "/v1/clock", {"paused": True, "colour": "red"})
    assert status == 400 and "colour" in body["error"]["message"]
    status, body, _ = server.request("POST", "/v1/vms", {"template": "small"})
    assert status == 400 and "name" in body["error"]["message"]
    status, body, _ = server.request("POST", "/v1/vms", {"toml": 'name = "x"', "template": "small", "name": "x"})
    assert status == 400
    status, body, _ = server.request("GET", "/v1/events?limit=0")
    assert status == 400 and "limit" in body["error"]["message"]
    assert view(server) == before


def test_an_oversized_body_is_413_before_it_is_parsed(server):
    before = view(server)
    big = b'{"paused": true, "pad": "' + b"x" * (1024 * 1024) + b'"}'
    status, body, _ = server.request("PUT", "/v1/clock", raw=big)
    assert status == 413 and body["error"]["type"] == "TooLarge"
    # A body longer than its chunked pieces announce: counted while it is read.
    with socket.create_connection((server.host, server.port), timeout=30) as s:
        s.sendall(b"PUT /v1/clock HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"x" * 65536
        try:
            for _ in range(20):
                s.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass   # the server answered and closed before the rest arrived
        answer = b""
        while b"TooLarge" not in answer:
            piece = s.recv(65536)
            if not piece:
                break
            answer += piece
        answer = answer.decode("latin-1")
    assert answer.startswith("HTTP/1.1 413") and "TooLarge" in answer
    assert view(server) == before


def test_create_a_vm_from_toml_or_a_template_then_delete_it(server):
    status, row, _ = server.request("POST", "/v1/vms", {"toml": 'name = "t1"\nmemory = "32MiB"'})
    assert status == 201 and (row["Name"], row["State"], row["Owner"]) == ("t1", "Off", "local")
    status, row, _ = server.request("POST", "/v1/vms", {"template": "small", "name": "t2"})
    assert status == 201 and row["Name"] == "t2"
    assert server.request("POST", "/v1/vms/t2/start")[1]["State"] == "Running"
    status, body, _ = server.request("POST", "/v1/vms", {"toml": 'name = "t1"'})
    assert status == 409 and "exists already" in body["error"]["message"]
    before = view(server)
    status, body, _ = server.request("POST", "/v1/vms", {"toml": 'name = "t3"\nmemory = "lots"'})
    assert status == 422 and body["error"]["type"] == "ConfigError" and body["error"]["key"] == "memory"
    assert body["error"]["message"].startswith("the VM's TOML: memory: expected")
    status, body, _ = server.request("POST", "/v1/vms", {"toml": 'name = "t3"\nmemory = '})
    assert status == 422 and "valid TOML" in body["error"]["message"]
    status, body, _ = server.request("POST", "/v1/vms", {"template": "huge", "name": "t3"})
    assert status == 404 and "no template named 'huge'" in body["error"]["message"]
    assert view(server) == before
    assert server.request("DELETE", "/v1/vms/t1")[0] == 204
    assert "t1" not in [r["Name"] for r in server.request("GET", "/v1/vms")[1]]
    names = [t["name"] for t in server.request("GET", "/v1/templates")[1]]
    assert {"small", "web", "disk"} <= set(names)


def test_switches_and_disks(make_engine, make_server):
    engine = make_engine(DISKED_HOST, paused=True)
    server = make_server(engine)
    status, switches, _ = server.request("GET", "/v1/switches")
    assert status == 200 and [(s["name"], s["host"], s["type"]) for s in switches] == [("lan", "host", "private")]
    status, disks, _ = server.request("GET", "/v1/disks")
    assert status == 200 and [(d["vm"], d["lun"], d["size"]) for d in disks] == [("a", 0, 8 * 2**20)]
    status, row, _ = server.request("POST", "/v1/vms/a/checkpoint", {"name": "first"})
    assert status == 200
    assert [c["name"] for c in server.request("GET", "/v1/vms/a")[1]["checkpoints"]] == ["first"]
    status, body, _ = server.request("POST", "/v1/vms/a/checkpoint", {"name": "first"})
    assert status == 409 and "already has a checkpoint named 'first'" in body["error"]["message"]


DISKED_HOST = """
[host]
logical_processors = 2
memory = "1GiB"

[[vm]]
name = "a"
memory = "64MiB"
disks = [ { path = "a.vhd", size = "8MiB" } ]
nics = [ { switch = "lan" } ]

[[switch]]
name = "lan"
"""


def test_events_as_json_and_as_a_stream_from_last_event_id(server):
    server.request("POST", "/v1/vms/idle/pause")
    status, events, _ = server.request("GET", "/v1/events?since=0&limit=5")
    assert status == 200 and len(events) == 5 and [e["seq"] for e in events] == [1, 2, 3, 4, 5]
    status, mine, _ = server.request("GET", "/v1/events?vm=idle")
    assert mine and {e["vm"] for e in mine} == {"idle"}
    last = server.engine.last_seq
    conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
    conn.request("GET", "/v1/events", headers={"Accept": "text/event-stream", "Last-Event-ID": str(last)})
    response = conn.getresponse()
    assert response.status == 200 and response.getheader("content-type").startswith("text/event-stream")
    server.request("POST", "/v1/vms/idle/resume")
    lines = []
    while "" not in lines or not any(line.startswith("data:") for line in lines):
        lines.append(response.readline().decode().rstrip("\n"))
    assert lines[0] == f"id: {last + 1}"
    data = json.loads(next(line for line in lines if line.startswith("data:"))[5:])
    assert data["seq"] == last + 1 and data["vm"] == "idle" and "time_ns" in data
    conn.close()


def test_a_client_that_leaves_a_stream_is_dropped_and_the_simulation_goes_on(server, caplog):
    for _ in range(3):
        with socket.create_connection((server.host, server.port), timeout=30) as s:
            s.sendall(b"GET /v1/events?follow=true HTTP/1.1\r\nHost: x\r\n\r\n")
            assert s.recv(4096).startswith(b"HTTP/1.1 200")
        # closed mid-stream
    server.request("POST", "/v1/vms/idle/pause")
    server.request("POST", "/v1/clock/step", {"by": "50ms"})
    assert server.request("GET", "/v1/clock")[1]["now_ns"] == 50_000_000
    assert server.engine.running
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]


def test_every_request_is_audited_with_its_outcome_allowed_meaning_past_the_role_check(make_engine, make_server, tmp_path):
    engine = make_engine(paused=True)
    audit = tmp_path / "audit.jsonl"
    server = make_server(engine, Authorizer.local(audit=audit))
    server.request("POST", "/v1/vms/idle/pause")
    server.request("POST", "/v1/vms/idle/pause")
    server.request("GET", "/v1/vms/nope")
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [(r["action"], r["target"], r["allowed"], r["status"], r["user"]) for r in lines] == [
        ("vms.pause", "idle", True, 200, "local"), ("vms.pause", "idle", True, 409, "local"),
        ("vms.get", "nope", True, 404, "local")]


def test_a_stopped_simulation_answers_503_and_the_view_still_reads(make_engine, make_server):
    engine = make_engine(paused=True)
    server = make_server(engine)
    engine.stop()
    status, body, _ = server.request("POST", "/v1/vms/idle/start")
    assert status == 503 and body["error"]["type"] == "Unavailable"
    assert server.request("GET", "/v1/clock")[0] == 200


def test_the_console_is_served_and_the_root_redirects_to_it(server):
    status, _, headers = server.request("GET", "/")
    assert status in (302, 307) and headers["location"] == "/console/"
    status, page, _ = server.request("GET", "/console/")
    assert status == 200 and "<html" in page.lower()


def test_self_service_users_see_and_act_on_their_own_vms_only(make_engine, make_server, tmp_path):
    from partitions.service.auth import User, token_hash
    tokens, users = {}, {}
    for name, role in [("alice", "Administrator"), ("carol", "Self-service user")]:
        token = f"hvsim_{len(users):08x}_" + "A" * 43
        tokens[name] = token
        users[name] = User(name, role, f"{len(users):08x}", token_hash(token), templates=("small",) if name == "carol"
                           else ())
    engine = make_engine(paused=True)
    server = make_server(engine, Authorizer(users))
    as_ = lambda who: {"Authorization": f"Bearer {tokens[who]}"}   # noqa: E731
    assert server.request("GET", "/v1/vms")[0] == 401
    status, row, _ = server.request("POST", "/v1/vms", {"template": "small", "name": "cvm"}, headers=as_("carol"))
    assert status == 201 and row["Owner"] == "carol"
    assert [r["Name"] for r in server.request("GET", "/v1/vms", headers=as_("carol"))[1]] == ["cvm"]
    assert len(server.request("GET", "/v1/vms", headers=as_("alice"))[1]) == 3
    before = view(server)
    status, body, _ = server.request("POST", "/v1/vms/idle/pause", headers=as_("carol"))
    assert status == 403 and body["error"]["type"] == "Forbidden" and "carol" in body["error"]["message"]
    status, body, _ = server.request("POST", "/v1/vms", {"toml": 'name = "x"'}, headers=as_("carol"))
    assert status == 403 and view(server) == before
    assert server.request("POST", "/v1/vms/cvm/start", headers=as_("carol"))[1]["State"] == "Running"
    events = server.request("GET", "/v1/events", headers=as_("carol"))[1]
    assert events and {e.get("vm") for e in events} == {"cvm"}


def test_a_vm_moves_between_the_hosts_of_a_datacenter(make_engine, make_server):
    from tests.service.test_engine import TWO_HOSTS
    engine = make_engine(TWO_HOSTS, paused=True)
    server = make_server(engine)
    assert [h["name"] for h in server.request("GET", "/v1/hosts")[1]] == ["a", "b"]
    server.request("POST", "/v1/clock/step", {"by": "10ms"})
    status, body, _ = server.request("POST", "/v1/vms/mover/move", {"to": "c"})
    assert status == 404 and "no host named 'c'" in body["error"]["message"]
    status, body, _ = server.request("POST", "/v1/vms/mover/move", {"to": "b", "kind": "sideways"})
    assert status == 400
    assert server.request("POST", "/v1/vms/mover/move", {"to": "b"})[0] == 200
    server.request("POST", "/v1/clock/step", {"by": "1s"})
    wait_for(lambda: server.request("GET", "/v1/vms/mover")[1]["Host"] == "b", "the move to end")


def test_reads_are_answered_from_the_view_while_the_simulation_is_busy_in_a_command(server):
    """GET /v1/vms/{name} (and the other reads of the view) wait for no window: they answer while
    the sim thread is held in a long command, with the view published before it."""
    import threading
    server.request("POST", "/v1/clock/step", {"by": "100ms"})
    busy, release = threading.Event(), threading.Event()

    def long_command():
        busy.set()
        release.wait(60)
    blocked = server.engine.submit(long_command)
    try:
        assert busy.wait(30)
        status, vm, _ = server.request("GET", "/v1/vms/steady")
        assert status == 200 and vm["Name"] == "steady" and vm["processors"] == 1
        assert [t for t, _ in vm["cpu"]] == [100_000_000] and vm["measure"]["VMName"] == "steady"
        assert server.request("GET", "/v1/vms/nope")[0] == 404
        assert server.request("GET", "/v1/clock")[1]["now_ns"] == 100_000_000
        assert server.request("GET", "/v1/vms")[0] == 200 and server.request("GET", "/v1/hosts")[0] == 200
    finally:
        release.set()
        blocked.result(30)


def test_a_read_sees_a_command_done_before_it_and_each_callers_own_vms(make_engine, make_server):
    """The JSON built once per publish is rebuilt after the next one (a command publishes before
    its caller hears back), and is kept per visibility scope: within one publish (the clock is
    paused), one Self-service user's list is not another's, nor the Administrator's."""
    from partitions.service.auth import User, token_hash
    tokens, users = {}, {}
    for i, (name, role) in enumerate([("alice", "Administrator"), ("carol", "Self-service user"),
                                      ("dave", "Self-service user")]):
        tokens[name] = f"hvsim_{i:08x}_" + "A" * 43
        users[name] = User(name, role, f"{i:08x}", token_hash(tokens[name]),
                           templates=("small",) if role != "Administrator" else ())
    engine = make_engine(paused=True)
    server = make_server(engine, Authorizer(users))
    as_ = lambda who: {"Authorization": f"Bearer {tokens[who]}"}   # noqa: E731
    assert server.request("GET", "/v1/vms/idle", headers=as_("alice"))[1]["State"] == "Running"
    assert server.request("POST", "/v1/vms/idle/pause", headers=as_("alice"))[0] == 200
    assert server.request("GET", "/v1/vms/idle", headers=as_("alice"))[1]["State"] == "Paused"
    assert server.request("GET", "/v1/vms/carol-vm", headers=as_("alice"))[0] == 404
    for who in ("carol", "dave"):
        assert server.request("POST", "/v1/vms", {"template": "small", "name": f"{who}-vm"}, headers=as_(who))[0] == 201
    assert server.request("GET", "/v1/vms/carol-vm", headers=as_("alice"))[1]["Owner"] == "carol"
    windows = engine.snapshot()["clock"]["windows"]
    lists = {who: [r["Name"] for r in server.request("GET", "/v1/vms", headers=as_(who))[1]]
             for who in ("carol", "dave", "alice", "carol")}
    hosts = {who: server.request("GET", "/v1/hosts", headers=as_(who))[1][0]["vms"] for who in ("dave", "carol")}
    assert engine.snapshot()["clock"]["windows"] == windows
    assert lists == {"carol": ["carol-vm"], "dave": ["dave-vm"], "alice": ["steady", "idle", "carol-vm", "dave-vm"]}
    assert hosts == {"carol": ["carol-vm"], "dave": ["dave-vm"]}


def test_events_tail_gives_the_last_n_and_a_stream_starts_with_them(server):
    """?tail=N: the last N events (of the VMs asked for), oldest first; a stream with tail=N
    starts with those N, not with the whole ring (the console's first look)."""
    server.request("POST", "/v1/vms/idle/pause")
    server.request("POST", "/v1/vms/idle/resume")
    last = server.engine.last_seq
    status, events, _ = server.request("GET", "/v1/events?tail=3")
    assert status == 200 and [e["seq"] for e in events] == [last - 2, last - 1, last]
    everything = server.request("GET", "/v1/events")[1]
    idle = [e["seq"] for e in everything if e.get("vm") == "idle"]
    assert [e["seq"] for e in server.request("GET", "/v1/events?tail=2&vm=idle")[1]] == idle[-2:]
    assert server.request("GET", f"/v1/events?tail=5&since={last - 1}")[1][0]["seq"] == last
    assert server.request("GET", "/v1/events?tail=0")[0] == 400
    conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
    conn.request("GET", "/v1/events?follow=true&tail=2")
    response = conn.getresponse()
    ids = []
    while len(ids) < 2:
        line = response.readline().decode().rstrip("\n")
        if line.startswith("id: "):
            ids.append(int(line[4:]))
    assert ids == [last - 1, last]
    conn.close()


def test_an_answers_writes_in_one_turn_of_the_event_loop_go_out_as_one_send_in_order():
    """_OneSend: uvicorn's head and body writes reach the socket as one send at the end of the
    loop's turn, in order; close() sends what is pending first, abort() drops it."""
    import asyncio

    from partitions.service.api import _OneSend

    class Transport:
        def __init__(self):
            self.sent, self.closed, self.aborted = [], False, False

        def write(self, data):
            self.sent.append(data)

        def is_closing(self):
            return self.closed or self.aborted

        def close(self):
            self.closed = True

        def abort(self):
            self.aborted = True

        def get_extra_info(self, name):
            return ("127.0.0.1", 1) if name == "peername" else None

    async def main():
        t = Transport()
        one = _OneSend(t)
        one.write(b"HTTP/1.1 200 OK\r\n\r\n")
        one.write(memoryview(b"body"))
        assert t.sent == []
        await asyncio.sleep(0)
        assert t.sent == [b"HTTP/1.1 200 OK\r\n\r\nbody"]
        one.write(b"last")
        one.close()
        assert t.sent[-1] == b"last" and t.closed
        assert one.get_extra_info("peername") == ("127.0.0.1", 1)
        t2 = Transport()
        two = _OneSend(t2)
        two.write(b"never")
        two.abort()
        await asyncio.sleep(0)
        assert t2.sent == [] and t2.aborted
    asyncio.run(main())
