"""The role matrix: every role against every endpoint of the API (as its OpenAPI document lists
them), with the expected answer from a table written here, not taken from auth.py, so that the
test and the code can disagree. A denied request gets 403 and changes nothing (the VMs, the
clock, the event log); an allowed one gets neither 401 nor 403. Then: a Self-service user on its
own VM and on another's, its quota and templates, missing and bad tokens, a server without users,
and the audit log's line for every request of the matrix.

Requests go straight to the ASGI app (no socket), so that the client's address can be any: a
non-loopback client is a scope's "client", not a network interface the test machine must have.
"""
from __future__ import annotations

import asyncio
import json

import pytest

from partitions.service.auth import Authorizer, Quota, User, new_token, write_users

# ---- the expected matrix (independent of partitions/service/auth.py's table) -------------------

A, O, V, S = "Administrator", "Operator", "Viewer", "Self-service user"
ROLES = (A, O, V, S)
#: action -> the roles it is allowed to (Self-service: on its own VM, for an action naming one).
MATRIX = {
    "whoami.get": {A, O, V, S},
    "clock.get": {A, O, V, S},
    "clock.set": {A},
    "clock.step": {A},
    "hosts.list": {A, O, V, S},
    "vms.list": {A, O, V, S},
    "vms.get": {A, O, V, S},
    "switches.list": {A, O, V},
    "disks.list": {A, O, V},
    "templates.list": {A, O, V, S},
    "events.get": {A, O, V, S},
    "vms.create": {A, S},
    "vms.start": {A, O, S},
    "vms.pause": {A, O, S},
    "vms.resume": {A, O, S},
    "vms.checkpoint": {A, O, S},
    "vms.save": {A, O, S},
    "vms.restore": {A, O, S},
    "vms.stop": {A, O, S},
    "vms.turn-off": {A, O, S},
    "vms.apply": {A, O, S},
    "vms.move": {A, O},
    "vms.delete": {A, S},
}
#: The actions that name one VM in their path.
ON_A_VM = ("vms.get", "vms.start", "vms.pause", "vms.resume", "vms.checkpoint", "vms.apply", "vms.save",
           "vms.restore", "vms.stop", "vms.turn-off", "vms.move", "vms.delete")
USER_OF = {A: "alice", O: "oscar", V: "vera", S: "carol"}
MINE, THEIRS = "mine", "theirs"      # carol's VM and dave's (both Self-service users)

#: The request each action is tried with (the order makes the allowed ones succeed in turn: the
#: VM is started, paused, ... turned off, then deleted). Bodies that would change something
#: observable if wrongly allowed.
BODIES = {
    "clock.set": {"speed": 3, "paused": True},
    "clock.step": {"by": "1ms"},
    "vms.create": {"template": "small", "name": "made"},
    "vms.checkpoint": {"name": "cp1"},
    "vms.apply": {"checkpoint": "cp1"},
    "vms.move": {"to": "elsewhere", "kind": "live"},
}
#: The VMs carol and dave own (a disk each, so that a checkpoint has something to keep).
VM_TOML = ('memory = "64MiB"\nworkload = {{ kind = "cpu-burn", duty = 0.5 }}\n'
           'disks = [ {{ path = "{name}.vhd", size = "16MiB" }} ]\n')


# ---- calling the app ---------------------------------------------------------------------------

class Response:
    def __init__(self, status: int, headers: dict, body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self):
        return json.loads(self.body)


def asgi(app, method: str, path: str, *, body=None, token: str | None = None,
         client: tuple[str, int] | None = ("127.0.0.1", 50123)) -> Response:
    """One request to the ASGI app; `client` None is a Unix-socket client (no address)."""
    raw = b"" if body is None else json.dumps(body).encode()
    route, _, query = path.partition("?")
    headers = [(b"host", b"127.0.0.1:8450"), (b"accept", b"application/json"),
               (b"content-length", str(len(raw)).encode())]
    if body is not None:
        headers.append((b"content-type", b"application/json"))
    if token is not None:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
             "method": method, "scheme": "http", "path": route, "raw_path": route.encode(),
             "query_string": query.encode(), "root_path": "", "headers": headers, "client": client,
             "server": ("127.0.0.1", 8450)}

    async def run():
        status, out_headers, chunks = None, {}, []
        done = asyncio.Event()
        sent = False

        async def receive():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": raw, "more_body": False}
            await done.wait()
            return {"type": "http.disconnect"}

        async def send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                out_headers.update((k.decode().lower(), v.decode()) for k, v in message.get("headers", []))
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body"):
                    done.set()

        await app(scope, receive, send)
        return Response(status, out_headers, b"".join(chunks))

    return asyncio.run(run())


def asgi_stream(app, path: str, *, token: str, until, deadline_s: float = 30.0) -> list[str]:
    """The server-sent events of a GET until `until(events)` holds (each event's data as JSON),
    then the client goes away. The deadline only stops a broken stream from hanging the test."""
    route, _, query = path.partition("?")
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
             "method": "GET", "scheme": "http", "path": route, "raw_path": route.encode(),
             "query_string": query.encode(), "root_path": "", "client": ("127.0.0.1", 50124),
             "server": ("127.0.0.1", 8450),
             "headers": [(b"host", b"127.0.0.1:8450"), (b"accept", b"text/event-stream"),
                         (b"authorization", f"Bearer {token}".encode())]}

    async def run():
        text, events, gone = [""], [], asyncio.Event()
        first = True

        async def receive():
            nonlocal first
            if first:
                first = False
                return {"type": "http.request", "body": b"", "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message):
            if message["type"] == "http.response.start":
                assert message["status"] == 200, message
            elif message["type"] == "http.response.body":
                text[0] += message.get("body", b"").decode()
                *blocks, text[0] = text[0].split("\n\n")
                for block in blocks:
                    data = [line[6:] for line in block.splitlines() if line.startswith("data: ")]
                    if data:
                        events.append(json.loads(data[0]))
                if until(events):
                    gone.set()

        task = asyncio.ensure_future(app(scope, receive, send))
        try:
            await asyncio.wait_for(gone.wait(), deadline_s)
        finally:
            gone.set()
            await asyncio.wait_for(task, deadline_s)
        return events

    return asyncio.run(run())


def endpoints(app) -> dict[str, tuple[str, str]]:
    """operationId -> (method, path template) from the app's OpenAPI document."""
    doc = asgi(app, "GET", "/v1/openapi.json").json()
    out = {}
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method in ("get", "put", "post", "delete", "patch"):
                assert op["operationId"] not in out, f"two endpoints with operationId {op['operationId']}"
                out[op["operationId"]] = (method.upper(), path)
    return out


# ---- the service under test --------------------------------------------------------------------

class Service:
    """An engine, a users file with one user per role (and dave, a second Self-service user),
    the app over them, and the audit log."""

    def __init__(self, make_engine, tmp_path, *, name: str = "svc",
                 quota: Quota = Quota(vms=3, memory=2 << 30, processors=3)) -> None:
        from partitions.service.api import create_app
        base = tmp_path / name
        base.mkdir()
        users, self.tokens = {}, {}
        for user, role, kw in (("alice", A, {}), ("oscar", O, {}), ("vera", V, {}),
                               ("carol", S, {"templates": ("small",), "quota": quota}),
                               ("dave", S, {"templates": ("small", "disk")})):
            token, token_id, digest = new_token(u.token_id for u in users.values())
            users[user], self.tokens[user] = User(user, role, token_id, digest, **kw), token
        write_users(base / "users.toml", users)
        self.audit_path = base / "audit.jsonl"
        self.authorizer = Authorizer.from_file(base / "users.toml", audit=self.audit_path)
        self.engine = make_engine(paused=True, workdir=base / "state")
        self.engine.create_vm(VM_TOML.format(name=MINE), name=MINE, owner="carol")
        self.engine.create_vm(VM_TOML.format(name=THEIRS), name=THEIRS, owner="dave")
        self.app = create_app(self.engine, self.authorizer)
        self.sent: list[tuple[str | None, str, str | None, int]] = []    # (user, action, target, status)

    def request(self, user: str | None, action: str, *, vm: str = MINE, body=None, token: str | None = None,
                ops=None) -> Response:
        method, path = (ops or self.ops)[action]
        path = path.replace("{name}", vm)
        if body is None:
            body = BODIES.get(action)
        if method == "GET":
            body = None
        if action == "events.get":
            path += "?since=0"
        r = asgi(self.app, method, path, body=body, token=token or (self.tokens[user] if user else None))
        self.sent.append((user, action, vm if "{name}" in (ops or self.ops)[action][1] else None, r.status))
        return r

    @property
    def ops(self):
        if not hasattr(self, "_ops"):
            self._ops = endpoints(self.app)
        return self._ops

    def state(self) -> dict:
        """What a denied request must not change: the VMs (rows, checkpoints), the hosts, the clock
        and the event log."""
        snap = self.engine.snapshot()
        return {"clock": {k: snap["clock"][k] for k in ("now_ns", "speed", "paused")},
                "hosts": snap["hosts"], "vms": snap["vms"],
                "checkpoints": {row["Name"]: self.engine.vm_detail(row["Name"])["checkpoints"]
                                for row in snap["vms"]},
                "events": self.engine.last_seq}

    def audit_lines(self) -> list[dict]:
        return [json.loads(line) for line in self.audit_path.read_text().splitlines()]


@pytest.fixture
def service(make_engine, tmp_path):
    s = Service(make_engine, tmp_path)
    yield s
    s.authorizer.close()


# ---- the matrix --------------------------------------------------------------------------------

def test_the_matrix_covers_every_endpoint_of_the_api(service):
    listed = set(service.ops)
    assert listed == set(MATRIX), (f"endpoints without a row in the matrix: {sorted(listed - set(MATRIX))}; "
                                   f"rows without an endpoint: {sorted(set(MATRIX) - listed)}")


@pytest.mark.parametrize("role", ROLES)
def test_every_role_against_every_endpoint(make_engine, tmp_path, role):
    s = Service(make_engine, tmp_path)
    try:
        user = USER_OF[role]
        assert set(s.ops) == set(MATRIX)
        for action in MATRIX:
            allowed = role in MATRIX[action]
            before = s.state()
            r = s.request(user, action)
            if allowed:
                assert r.status not in (401, 403), f"{role} {action}: {r.status} {r.body[:300]!r}"
            else:
                assert r.status == 403, f"{role} {action}: expected 403, got {r.status} {r.body[:300]!r}"
                error = r.json()["error"]
                assert error["type"] == "Forbidden"
                assert user in error["message"] and role in error["message"] and action in error["message"]
                assert s.state() == before, f"{role} {action} was denied but changed the service"
        # The audit log has every request, in order, with its user, action, verdict and status.
        lines = s.audit_lines()
        mine = [line for line in lines if line["user"] == user]
        assert [(line["action"], line["allowed"], line["status"]) for line in mine] == \
            [(action, role in MATRIX[action], status) for u, action, _, status in s.sent if u == user]
        for line in mine:
            assert line["role"] == role and line["client"] == "127.0.0.1"
    finally:
        s.authorizer.close()


def test_whoami_lists_the_actions_the_matrix_allows(service):
    for role, user in USER_OF.items():
        r = service.request(user, "whoami.get")
        assert r.status == 200
        body = r.json()
        assert (body["user"], body["role"]) == (user, role)
        assert set(body["actions"]) == {a for a, roles in MATRIX.items() if role in roles}


# ---- Self-service ------------------------------------------------------------------------------

def test_a_self_service_user_acts_on_its_own_vm_and_not_on_anothers(service):
    s = service
    for action in ON_A_VM:
        before = s.state()
        r = s.request("carol", action, vm=THEIRS)
        assert r.status == 403, f"carol {action} on dave's VM: {r.status} {r.body[:200]!r}"
        assert s.state() == before
    # and on a VM from the configuration (owned by nobody)
    for action in ("vms.get", "vms.turn-off"):
        assert s.request("carol", action, vm="steady").status == 403
    assert s.request("carol", "vms.start", vm=MINE).status == 200
    assert s.engine.snapshot()["vms"][[r["Name"] for r in s.engine.snapshot()["vms"]].index(MINE)]["State"] \
        == "Running"


def test_a_self_service_user_sees_only_its_own_vms_and_their_events(service):
    s = service
    s.request("alice", "vms.start", vm=THEIRS)
    s.request("carol", "vms.start", vm=MINE)
    names = [row["Name"] for row in s.request("carol", "vms.list").json()]
    assert names == [MINE]
    events = s.request("carol", "events.get").json()
    vms = {e.get("vm") for e in events}
    assert MINE in vms and not vms & {THEIRS, "steady", "idle"}
    assert {row["Name"] for row in s.request("vera", "vms.list").json()} >= {MINE, THEIRS, "steady", "idle"}
    assert [h["vms"] for h in s.request("carol", "hosts.list").json()] == [[MINE]]
    # the stream too: it ends once carol's VM has started, and holds nothing of another VM's
    streamed = asgi_stream(s.app, "/v1/events?since=0", token=s.tokens["carol"],
                           until=lambda evs: any(e.get("vm") == MINE and e["event"] == "vm.action" for e in evs))
    assert {e.get("vm") for e in streamed} == {MINE}
    everything = asgi_stream(s.app, "/v1/events?since=0", token=s.tokens["vera"],
                             until=lambda evs: any(e.get("vm") == MINE and e["event"] == "vm.action" for e in evs))
    assert {e.get("vm") for e in everything} >= {MINE, THEIRS, "steady"}


def test_a_self_service_user_creates_within_its_quota_of_vms_then_is_refused_saying_so(service):
    s = service     # carol: 3 VMs, 2 GiB, 3 VPs; she owns MINE (64 MiB, 1 VP)
    for i in range(2):
        r = s.request("carol", "vms.create", body={"template": "small", "name": f"c{i}"})
        assert r.status == 201, r.body
        assert r.json()["Owner"] == "carol" and r.json()["State"] == "Off"
    before = s.state()
    r = s.request("carol", "vms.create", body={"template": "small", "name": "c2"})
    assert r.status == 403 and "quota of VMs: it may own 3 and owns 3" in r.json()["error"]["message"]
    assert s.state() == before


@pytest.mark.parametrize("quota, message", [
    (Quota(memory=1 << 30), "quota of memory: it may have 1GiB and its VMs have 576MiB; \"c1\" asks 512MiB more"),
    (Quota(processors=2), "quota of processors: it may have 2 and its VMs have 2; \"c1\" asks 1 more"),
])
def test_a_self_service_user_is_refused_memory_or_processors_beyond_its_quota(make_engine, tmp_path, quota, message):
    s = Service(make_engine, tmp_path, quota=quota)      # MINE: 64 MiB, 1 VP; "small": 512 MiB, 1 VP
    try:
        assert s.request("carol", "vms.create", body={"template": "small", "name": "c0"}).status == 201
        before = s.state()
        r = s.request("carol", "vms.create", body={"template": "small", "name": "c1"})
        assert r.status == 403 and message in r.json()["error"]["message"]
        assert s.state() == before
        assert s.audit_lines()[-1]["action"] == "vms.create" and s.audit_lines()[-1]["allowed"] is False
    finally:
        s.authorizer.close()


def test_a_self_service_user_creates_from_its_templates_only(service):
    s = service
    before = s.state()
    r = s.request("carol", "vms.create", body={"template": "disk", "name": "d0"})
    assert r.status == 403 and 'template "disk"' in r.json()["error"]["message"]
    r = s.request("carol", "vms.create", body={"toml": 'memory = "64MiB"', "name": "t0"})
    assert r.status == 403 and "not from a TOML fragment" in r.json()["error"]["message"]
    assert s.state() == before
    templates = [t["name"] for t in s.request("carol", "templates.list").json()]
    assert templates == ["small"]
    assert {t["name"] for t in s.request("alice", "templates.list").json()} >= {"small", "web", "disk"}


# ---- authentication ----------------------------------------------------------------------------

def test_no_token_or_a_bad_one_is_401_on_every_endpoint_and_changes_nothing(service):
    s = service
    bad = new_token()[0]
    for action in MATRIX:
        for token in (None, bad, "hvsim_garbage"):
            before = s.state()
            method, path = s.ops[action]
            r = asgi(s.app, method, path.replace("{name}", MINE),
                     body=None if method == "GET" else BODIES.get(action), token=token)
            assert r.status == 401, f"{action} with token {token!r}: {r.status}"
            assert r.json()["error"]["type"] == "Unauthorized"
            assert s.state() == before
    denied = [line for line in s.audit_lines() if line["status"] == 401]
    assert len(denied) == 3 * len(MATRIX)
    assert all(line["user"] is None and line["allowed"] is False for line in denied)


def test_without_users_a_loopback_client_is_administrator_and_another_is_refused(make_engine, tmp_path):
    from partitions.service.api import create_app
    engine = make_engine(paused=True)
    authorizer = Authorizer.local(audit=tmp_path / "audit.jsonl")
    app = create_app(engine, authorizer)
    try:
        for client in (("127.0.0.1", 40000), ("::1", 40000), None):
            r = asgi(app, "GET", "/v1/whoami", client=client)
            assert r.status == 200 and r.json()["role"] == "Administrator"
        before = engine.snapshot()["vms"]
        for client in (("192.0.2.10", 40000), ("10.1.2.3", 5)):
            r = asgi(app, "GET", "/v1/vms", client=client)
            assert r.status == 403 and "loopback clients only" in r.json()["error"]["message"]
            r = asgi(app, "POST", "/v1/vms/steady/turn-off", client=client)
            assert r.status == 403
        assert engine.snapshot()["vms"] == before
        lines = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
        assert [(line["client"], line["allowed"]) for line in lines][-4:] == \
            [("192.0.2.10", False), ("192.0.2.10", False), ("10.1.2.3", False), ("10.1.2.3", False)]
    finally:
        authorizer.close()


def test_tokens_made_by_hvsim_users_work_over_a_real_socket_until_removed(make_engine, make_server, tmp_path,
                                                                           capsys):
    from partitions.cli import main
    users = tmp_path / "users.toml"
    assert main(["users", "add", "olga", "--role", "Operator", "--file", str(users)]) == 0
    olga = capsys.readouterr().out.strip()
    assert main(["users", "add", "vera", "--role", "Viewer", "--file", str(users)]) == 0
    vera = capsys.readouterr().out.strip()
    audit = tmp_path / "audit.jsonl"
    server = make_server(make_engine(paused=True), Authorizer.from_file(users, audit=audit))
    try:
        assert server.request("GET", "/v1/whoami")[0] == 401
        status, body, _ = server.request("GET", "/v1/whoami", headers={"Authorization": f"Bearer {olga}"})
        assert status == 200 and (body["user"], body["role"]) == ("olga", "Operator")
        status, body, _ = server.request("POST", "/v1/vms/idle/pause", headers={"Authorization": f"Bearer {vera}"})
        assert status == 403 and body["error"]["type"] == "Forbidden"
        status, body, _ = server.request("POST", "/v1/vms/idle/pause", headers={"Authorization": f"Bearer {olga}"})
        assert status == 200 and body["State"] == "Paused"
        assert main(["users", "remove", "olga", "--file", str(users)]) == 0
        assert server.request("GET", "/v1/whoami", headers={"Authorization": f"Bearer {olga}"})[0] == 401
    finally:
        # The API writes a request's audit line once the answer is out: the server is stopped
        # (its requests finished) before the log is read.
        server.close()
        server.authorizer.close()
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [(r["user"], r["action"], r["allowed"], r["status"], r["client"]) for r in lines] == [
        (None, "whoami.get", False, 401, "127.0.0.1"), ("olga", "whoami.get", True, 200, "127.0.0.1"),
        ("vera", "vms.pause", False, 403, "127.0.0.1"), ("olga", "vms.pause", True, 200, "127.0.0.1"),
        (None, "whoami.get", False, 401, "127.0.0.1")]
