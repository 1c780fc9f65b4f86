"""The management service's authorizer on its own: tokens, the users file, authentication, the
role table's mechanics (scopes, unknown actions), Self-service templates and quota, the audit log,
and the VM templates. The role x endpoint matrix through the API is test_roles.py."""
from __future__ import annotations

import json
import os
import re
import stat
import threading
from datetime import datetime, timezone

import pytest
from hypothesis import given, strategies as st

from partitions.config import default_config, loads
from partitions.config_schema import GIB, MIB, ConfigError
from partitions.service import auth
from partitions.service.auth import (
    ACTIONS, ROLE_TASKS, ROLES, TASKS, VM_ACTIONS, Authorizer, Forbidden, Principal, Quota, Unauthorized, User,
    dump_users, load_users, new_token, token_hash, users_from_dict, write_users,
)
from partitions.service.templates import Template, builtin_templates, load_templates


def make_user(name: str, role: str, **kw) -> tuple[User, str]:
    token, token_id, digest = new_token()
    return User(name, role, token_id, digest, **kw), token


@pytest.fixture
def users_file(tmp_path):
    """A users file with one user of each role; returns (path, {name: token})."""
    users, tokens = {}, {}
    for name, role, kw in (("alice", "Administrator", {}), ("oscar", "Operator", {}), ("vera", "Viewer", {}),
                           ("carol", "Self-service user", {"templates": ("small",),
                                                           "quota": Quota(2, GIB, 2)})):
        users[name], tokens[name] = make_user(name, role, **kw)
    path = tmp_path / "users.toml"
    write_users(path, users)
    return path, tokens


# ---- tokens ------------------------------------------------------------------------------------

def test_a_token_has_a_visible_id_and_256_random_bits_and_only_its_hash_is_kept():
    token, token_id, digest = new_token()
    m = re.fullmatch(r"hvsim_([0-9a-f]{8})_([A-Za-z0-9_-]{43})", token)
    assert m and m.group(1) == token_id
    assert digest == token_hash(token) and len(digest) == 64
    assert token.split("_", 2)[2] not in digest
    assert len({new_token()[0] for _ in range(50)}) == 50


def test_the_users_file_holds_no_token_and_is_written_0600_by_rename(users_file):
    path, tokens = users_file
    text = path.read_text()
    assert not any(token in text or token.split("_", 2)[2] in text for token in tokens.values())
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["users.toml"]     # no temporary file left


def test_the_users_file_reads_back_to_the_same_users(users_file):
    path, _ = users_file
    users = load_users(path)
    assert users["carol"].quota == Quota(2, GIB, 2) and users["carol"].templates == ("small",)
    assert users["vera"].role == "Viewer" and users["vera"].quota is None
    assert load_users(path) == users_from_dict(__import__("tomllib").loads(dump_users(users)))


@given(st.lists(st.tuples(st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,10}", fullmatch=True),
                          st.sampled_from(ROLES),
                          st.lists(st.from_regex(r"[a-z][a-z0-9-]{0,6}", fullmatch=True), max_size=3),
                          st.none() | st.tuples(st.none() | st.integers(0, 100),
                                                st.none() | st.integers(0, 1 << 20).map(lambda n: n * 4096),
                                                st.none() | st.integers(0, 64))),
                max_size=5, unique_by=lambda u: u[0]))
def test_any_users_table_survives_dump_and_load(entries):
    import tomllib
    users = {}
    for name, role, templates, quota in entries:
        selfservice = role == "Self-service user"
        users[name] = User(name, role, *new_token()[1:], templates=tuple(dict.fromkeys(templates)) if selfservice
                           else (), quota=Quota(*quota) if selfservice and quota and any(
                               q is not None for q in quota) else None)
    assert users_from_dict(tomllib.loads(dump_users(users))) == users


_SCALARS = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=70) | \
    st.sampled_from(list(ROLES) + ["0123abcd", "a" * 64, "4GiB", "small"])
_TOML_LIKE = st.recursive(_SCALARS.filter(lambda v: v is not None),
                          lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(st.sampled_from(["users", "role", "token_id", "token_sha256", "templates",
                                                             "quota", "vms", "memory", "processors", "alice", "x y"]),
                                            inner, max_size=5), max_leaves=20)


@given(_TOML_LIKE)
def test_any_document_is_read_as_users_or_refused_with_a_config_error(data):
    try:
        users = users_from_dict(data)
    except ConfigError:
        return
    assert all(isinstance(u, User) and u.role in ROLES for u in users.values())


_GOOD = ('role = "Viewer"\ntoken_id = "0123abcd"\n'
         'token_sha256 = "' + "a" * 64 + '"\n')


@pytest.mark.parametrize("text, key, expected", [
    ("[user.bob]\n" + _GOOD, "user", "one of the keys users"),
    ("users = 3\n", "users", "a table of users"),
    ('[users."b b"]\n' + _GOOD, 'users."b b"', "a user name"),
    ("[users.bob]\n" + _GOOD.replace("Viewer", "Viewers"), "users.bob.role", 'one of "Administrator"'),
    ("[users.bob]\n" + _GOOD.replace("0123abcd", "0123ABCD"), "users.bob.token_id", "8 hex digits"),
    ("[users.bob]\n" + _GOOD.replace("a" * 64, "a" * 63), "users.bob.token_sha256", "64 lowercase hex digits"),
    ("[users.bob]\n" + _GOOD + "token = 'x'\n", "users.bob.token", "one of the keys role"),
    ("[users.bob]\n" + _GOOD + "templates = ['small']\n", "users.bob.templates", "for a Self-service user only"),
    ("[users.bob]\n" + _GOOD.replace("Viewer", "Self-service user") + "templates = 'small'\n",
     "users.bob.templates", "an array of template names"),
    ("[users.bob]\n" + _GOOD.replace("Viewer", "Self-service user") + "quota = { memory = '1GB' }\n",
     "users.bob.quota.memory", "a size"),
    ("[users.bob]\n" + _GOOD.replace("Viewer", "Self-service user") + "quota = { disks = 1 }\n",
     "users.bob.quota.disks", "one of the keys vms, memory, processors"),
    ("[users.bob]\n" + _GOOD + "[users.eve]\n" + _GOOD, "users.eve.token_id", "a token id no other user has"),
    ("[users.bob]\nrole = \"Viewer\"\n", "users.bob.token_id", "8 hex digits"),
    ("[users.bob\n", None, "valid TOML"),
])
def test_a_bad_users_file_is_refused_naming_the_file_the_key_and_what_was_expected(tmp_path, text, key, expected):
    path = tmp_path / "users.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        Authorizer.from_file(path)
    assert err.value.file == str(path) and err.value.key == key
    assert expected in err.value.expected
    assert str(err.value).startswith(f"{path}: ")


def test_a_fifo_or_a_directory_as_the_users_file_is_refused_at_once(tmp_path, no_hang, users_file):
    path, tokens = users_file
    a = Authorizer.from_file(path)
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    for bad in (fifo, tmp_path):
        with pytest.raises(ConfigError, match="expected a regular file"):
            Authorizer.from_file(bad)
    os.replace(fifo, path)               # the file the server reads is swapped for a FIFO
    with pytest.raises(Unauthorized, match="expected a regular file"):
        a.authenticate(f"Bearer {tokens['alice']}", None)


def test_a_missing_users_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="expected a readable users file"):
        Authorizer.from_file(tmp_path / "nope.toml")


# ---- authentication ----------------------------------------------------------------------------

def test_a_valid_token_authenticates_its_user_from_anywhere(users_file):
    path, tokens = users_file
    a = Authorizer.from_file(path)
    p = a.authenticate(f"Bearer {tokens['carol']}", "192.0.2.7")
    assert p == Principal("carol", "Self-service user", ("small",), Quota(2, GIB, 2))
    assert a.authenticate(f"bearer  {tokens['vera']} ", None).role == "Viewer"


@pytest.mark.parametrize("header, message", [
    (None, "no token"),
    ("", "no token"),
    ("Basic dXNlcjpwYXNz", "expected \"Authorization: Bearer <token>\""),
    ("Bearer", "expected \"Authorization: Bearer <token>\""),
    ("Bearer hunter2", "not an hvsim token"),
    ("Bearer hvsim_00000000_" + "A" * 43, "unknown or replaced token hvsim_00000000_..."),
])
def test_no_token_or_a_bad_one_is_unauthorized(users_file, header, message):
    path, _ = users_file
    with pytest.raises(Unauthorized, match=re.escape(message)):
        Authorizer.from_file(path).authenticate(header, "127.0.0.1")


def test_a_right_id_with_a_wrong_secret_is_unauthorized_and_not_echoed(users_file):
    path, tokens = users_file
    forged = tokens["alice"][:-1] + ("B" if tokens["alice"][-1] != "B" else "C")
    with pytest.raises(Unauthorized) as err:
        Authorizer.from_file(path).authenticate(f"Bearer {forged}", "127.0.0.1")
    assert forged.split("_", 2)[2] not in str(err.value)
    assert tokens["alice"].split("_")[1] in str(err.value)     # the id names it


@pytest.mark.parametrize("client", [None, "127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"])
def test_without_users_a_local_client_is_administrator(client):
    p = Authorizer.local().authenticate(None, client)
    assert p.role == "Administrator" and p.user == "local"


@pytest.mark.parametrize("client", ["10.0.0.1", "192.0.2.1", "::ffff:10.0.0.1", "2001:db8::1", "localhost",
                                    "testclient", ""])
def test_without_users_any_other_client_is_forbidden(client):
    with pytest.raises(Forbidden, match="loopback clients only"):
        Authorizer.local().authenticate("Bearer x", client)


def test_a_changed_users_file_takes_effect_at_the_next_request(users_file):
    path, tokens = users_file
    a = Authorizer.from_file(path)
    assert a.authenticate(f"Bearer {tokens['vera']}", None).user == "vera"
    users = load_users(path)
    del users["vera"]
    users["alice"], new_alice = make_user("alice", "Administrator")
    write_users(path, users)
    with pytest.raises(Unauthorized):
        a.authenticate(f"Bearer {tokens['vera']}", None)                 # removed
    with pytest.raises(Unauthorized):
        a.authenticate(f"Bearer {tokens['alice']}", None)                # replaced
    assert a.authenticate(f"Bearer {new_alice}", None).user == "alice"
    assert a.authenticate(f"Bearer {tokens['oscar']}", None).user == "oscar"


def test_a_users_file_broken_while_serving_refuses_everyone_until_fixed(users_file):
    path, tokens = users_file
    a = Authorizer.from_file(path)
    good = path.read_text()
    path.write_text(good + "\n[users.x]\nrole = 'King'\n")
    with pytest.raises(Unauthorized, match=r"users file cannot be used.*users\.x\.role"):
        a.authenticate(f"Bearer {tokens['alice']}", None)
    path.write_text(good + "\n")
    assert a.authenticate(f"Bearer {tokens['alice']}", None).user == "alice"


# ---- the role table's mechanics ----------------------------------------------------------------

def test_the_role_table_is_consistent():
    named = [a for actions in TASKS.values() for a in actions]
    assert sorted(named) == sorted(ACTIONS)                      # each action in exactly one task
    assert set(ROLE_TASKS) == set(ROLES)
    for tasks in ROLE_TASKS.values():
        assert all(task in TASKS and scope in ("all", "own") for task, scope in tasks)
    assert set(VM_ACTIONS) <= set(ACTIONS)
    assert Authorizer.local().actions(Principal("local", "Administrator")) == list(ACTIONS)


def test_an_action_no_task_names_is_refused_even_to_an_administrator():
    a = Authorizer.local()
    with pytest.raises(Forbidden, match="an action the authorizer does not know"):
        a.check(Principal("local", "Administrator"), "vms.explode")


def test_a_forbidden_message_names_the_user_the_role_and_the_action():
    with pytest.raises(Forbidden) as err:
        Authorizer.local().check(Principal("vera", "Viewer"), "vms.start")
    assert 'user "vera" (Viewer) may not use vms.start' in str(err.value)
    assert (err.value.user, err.value.role, err.value.action) == ("vera", "Viewer", "vms.start")


def test_own_scope_needs_the_vm_to_be_the_users():
    a, carol = Authorizer.local(), Principal("carol", "Self-service user", ("small",))
    for action in ("vms.get", "vms.start", "vms.delete", "vms.checkpoint"):
        a.check(carol, action, owner="carol")
        for owner in ("dave", None):
            with pytest.raises(Forbidden, match="only on the VMs it created"):
                a.check(carol, action, owner=owner)
    assert not a.may(carol, "vms.move", owner="carol")
    a.check(carol, "vms.list")                                    # the API filters the list
    assert a.visible(carol, "carol") and not a.visible(carol, "dave") and not a.visible(carol, None)
    assert a.visible(Principal("vera", "Viewer"), None)
    assert "vms.start" in a.actions(carol) and "vms.move" not in a.actions(carol)


def test_an_own_scope_on_an_action_that_names_no_vm_and_is_not_narrowed_is_refused(monkeypatch):
    monkeypatch.setitem(auth._SCOPE["Self-service user"], "switches.list", "own")
    a, carol = Authorizer.local(), Principal("carol", "Self-service user")
    with pytest.raises(Forbidden, match="names none"):
        a.check(carol, "switches.list", owner="carol")
    for action in auth.OWN_NARROWED:
        a.check(carol, action)


def test_templates_for_a_principal():
    a, names = Authorizer.local(), ["small", "web", "disk"]
    assert a.templates_for(Principal("x", "Administrator"), names) == names
    assert a.templates_for(Principal("x", "Self-service user", ("disk", "gone")), names) == ["disk"]
    assert a.templates_for(Principal("x", "Viewer"), names) == []


# ---- creation: templates and quota -------------------------------------------------------------

CAROL = Principal("carol", "Self-service user", ("small", "disk"), Quota(vms=3, memory=GIB, processors=3))
VM = {"name": "new", "processors": 1, "memory": 256 * MIB}


def row(processors: int, memory: int) -> dict:
    return {"Name": "x", "processors": processors, "memory_bytes": memory}


def test_a_self_service_user_creates_from_its_templates_within_its_quota():
    Authorizer.local().check_create(CAROL, "small", VM, [row(1, 512 * MIB), row(1, 256 * MIB)])


@pytest.mark.parametrize("template, request_, owned, message", [
    (None, VM, [], "from its templates only (small, disk), not from a TOML fragment"),
    ("web", VM, [], 'may not create VMs from template "web"; its templates: small, disk'),
    ("small", VM, [row(1, 4096)] * 3, "over its quota of VMs: it may own 3 and owns 3"),
    ("small", {**VM, "memory": 512 * MIB + 4096}, [row(1, 512 * MIB)],
     'over its quota of memory: it may have 1GiB and its VMs have 512MiB; "new" asks 524292KiB more'),
    ("small", {**VM, "processors": 2}, [row(2, 4096)],
     'over its quota of processors: it may have 3 and its VMs have 2; "new" asks 2 more'),
])
def test_a_self_service_user_beyond_templates_or_quota_is_forbidden_saying_which(template, request_, owned, message):
    with pytest.raises(Forbidden) as err:
        Authorizer.local().check_create(CAROL, template, request_, owned)
    assert message in str(err.value) and 'user "carol" (Self-service user)' in str(err.value)


def test_a_quota_without_a_limit_does_not_limit_and_no_quota_is_none():
    a = Authorizer.local()
    p = Principal("carol", "Self-service user", ("small",), Quota(vms=None, memory=GIB))
    a.check_create(p, "small", VM, [row(60, 4096)] * 50)
    a.check_create(Principal("carol", "Self-service user", ("small",)), "small", VM, [row(60, GIB)] * 50)


def test_the_new_vm_may_be_given_as_its_vm_config(tmp_path):
    vm = loads('[[vm]]\nname = "big"\nprocessors = 2\nmemory = "768MiB"\n').vms[0]
    a = Authorizer.local()
    a.check_create(CAROL, "small", vm, [row(1, 256 * MIB)])
    with pytest.raises(Forbidden, match='its VMs have 512MiB; "big" asks 768MiB more'):
        a.check_create(CAROL, "small", vm, [{"name": "x", "processors": 1, "memory": 512 * MIB}])


def test_a_quota_check_fails_closed_without_the_vms_sizes():
    with pytest.raises(ValueError, match="memory is needed"):
        Authorizer.local().check_create(CAROL, "small", {"processors": 1}, [])


def test_creation_by_other_roles():
    a = Authorizer.local()
    a.check_create(Principal("alice", "Administrator"), None, VM, [row(64, 64 * GIB)] * 99)
    a.check_create(Principal("alice", "Administrator"), "anything", VM, [])
    for role in ("Operator", "Viewer"):
        with pytest.raises(Forbidden, match=f"may not use vms.create"):
            a.check_create(Principal("x", role), "small", VM, [])


# ---- the audit log -----------------------------------------------------------------------------

def test_the_audit_log_is_json_lines_created_0600_and_appended(tmp_path):
    path = tmp_path / "state" / "audit.jsonl"
    a = Authorizer.local(audit=path)
    a.audit(Principal("local", "Administrator"), "vms.start", "web", True, 200, 1_500_000_000, "127.0.0.1")
    a.audit(None, "vms.list", None, False, 401, 7, None)
    a.close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    b = Authorizer.local(audit=path)
    b.audit(Principal("carol", "Self-service user"), "vms.move", "db", False, 403, 9, "::1")
    b.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [{k: v for k, v in r.items() if k != "wall"} for r in lines] == [
        {"sim_ns": 1_500_000_000, "user": "local", "role": "Administrator", "action": "vms.start", "target": "web",
         "allowed": True, "status": 200, "client": "127.0.0.1"},
        {"sim_ns": 7, "user": None, "role": None, "action": "vms.list", "target": None, "allowed": False,
         "status": 401, "client": "unix"},
        {"sim_ns": 9, "user": "carol", "role": "Self-service user", "action": "vms.move", "target": "db",
         "allowed": False, "status": 403, "client": "::1"},
    ]
    for r in lines:
        assert r["wall"].endswith("Z")
        wall = datetime.fromisoformat(r["wall"].replace("Z", "+00:00"))
        assert wall.tzinfo == timezone.utc and abs((datetime.now(timezone.utc) - wall).days) < 1


def test_every_audit_line_is_written_whole_by_concurrent_requests(tmp_path):
    path = tmp_path / "audit.jsonl"
    a = Authorizer.local(audit=path)
    target = "vm-" + "x" * 3000          # long lines: a torn write would show

    def requests(i):
        for k in range(200):
            a.audit(Principal(f"u{i}", "Viewer"), "vms.get", target, True, 200, k, "127.0.0.1")

    threads = [threading.Thread(target=requests, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    a.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 1600
    seen = sorted((r["user"], r["sim_ns"]) for r in map(json.loads, lines))
    assert seen == sorted((f"u{i}", k) for i in range(8) for k in range(200))


def test_each_audit_line_is_in_the_file_as_soon_as_audit_returns(tmp_path):
    path = tmp_path / "audit.jsonl"
    a = Authorizer.local(audit=path)
    for k in range(3):
        a.audit(None, "clock.get", None, False, 401, k, "10.0.0.1")
        assert len(path.read_text().splitlines()) == k + 1     # no buffering in the process
    a.close()


def test_a_server_that_dies_abruptly_loses_no_audit_line_it_wrote(tmp_path):
    import subprocess
    import sys
    path = tmp_path / "audit.jsonl"
    # os._exit: no interpreter shutdown, no flush of Python's buffers, as a crash (or SIGKILL) ends it.
    code = ("import os, sys\nfrom partitions.service.auth import Authorizer, Principal\n"
            "a = Authorizer.local(audit=sys.argv[1])\n"
            "for k in range(5):\n"
            "    a.audit(Principal('local', 'Administrator'), 'vms.start', 'web', True, 200, k, None)\n"
            "os._exit(9)\n")
    done = subprocess.run([sys.executable, "-c", code, str(path)], cwd=os.getcwd(), capture_output=True)
    assert done.returncode == 9, done.stderr
    assert [json.loads(line)["sim_ns"] for line in path.read_text().splitlines()] == [0, 1, 2, 3, 4]


def test_without_an_audit_file_audit_writes_nothing(tmp_path):
    Authorizer.local().audit(None, "clock.get", None, True, 200, 0, None)
    assert list(tmp_path.iterdir()) == []


# ---- templates ---------------------------------------------------------------------------------

def test_the_built_in_templates_are_valid_vms_of_the_default_host(tmp_path):
    templates = builtin_templates(default_config(tmp_path))
    assert set(templates) == {"small", "web", "disk"}
    assert templates["web"].fragment("w1")["nics"] == [{"switch": "lan"}]
    assert templates["disk"].fragment("d1")["disks"][0]["path"] == "d1.vhd"
    small = templates["small"].fragment("s1")
    assert (small["name"], small["processors"], small["memory"], small["workload"]["kind"]) == \
        ("s1", 1, "512MiB", "cpu-burn")
    for name, t in templates.items():
        cfg = loads(json_to_toml(t.fragment(f"{name}-vm")) + '\n[[switch]]\nname = "lan"\n', base_dir=tmp_path)
        assert cfg.vms[0].name == f"{name}-vm"


def json_to_toml(vm: dict) -> str:
    from partitions.config_schema import emit
    return emit({"vm": [vm]})


def test_the_web_template_has_no_adapter_on_a_host_without_switches():
    templates = builtin_templates(loads("[host]\nlogical_processors = 1\n"))
    assert "nics" not in templates["web"].vm and "switch" not in templates["web"].description


def test_a_templates_file_adds_and_replaces_templates(tmp_path):
    path = tmp_path / "templates.toml"
    path.write_text('[templates.big]\ndescription = "two VPs"\nprocessors = 2\nmemory = "1GiB"\n'
                    '[templates.small]\nmemory = "256MiB"\n'
                    '[templates.db]\ndisks = [ { path = "{name}-data.vhd", size = "1GiB" } ]\n'
                    'workload = { kind = "disk-io" }\n')
    templates = load_templates(path, default_config(tmp_path))
    assert set(templates) == {"small", "web", "disk", "big", "db"}
    assert templates["big"].description == "two VPs" and templates["big"].source == str(path)
    assert templates["small"].vm == {"memory": "256MiB"}
    assert templates["db"].fragment("db1")["disks"][0]["path"] == "db1-data.vhd"
    assert templates["big"].row()["vm"] == {"processors": 2, "memory": "1GiB"}


@pytest.mark.parametrize("text, key, expected", [
    ('[templates.big]\nprocessors = 3\n', "templates.big.processors", "an integer from 1 to 2"),
    ('[templates.big]\nname = "x"\n', "templates.big.name", "no name"),
    ('[templates.big]\nnics = [ { switch = "wan" } ]\n', "templates.big.nics[0].switch", "the name of a [[switch]]"),
    ('[templates.big]\nworkload = { kind = "disk-io" }\n', "templates.big.workload.disk", "the index of one of"),
    ('[templates."a b"]\nmemory = "1GiB"\n', 'templates."a b"', "a template name"),
    ('[templates.big]\nmemory = "64GiB"\n', "templates.big.memory", None),
    ('[template.big]\n', "template", "one of the keys templates"),
    ('templates = 1\n', "templates", "[templates.NAME] tables"),
])
def test_a_bad_template_is_refused_naming_the_file_and_the_key(tmp_path, text, key, expected):
    path = tmp_path / "templates.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_templates(path, default_config(tmp_path))
    assert err.value.file == str(path)
    assert err.value.key == key or (key and err.value.key.startswith(key))
    if expected:
        assert expected in err.value.expected
    assert "template-check" not in str(err.value)


_VM_LIKE = st.recursive(
    _SCALARS.filter(lambda v: v is not None) | st.sampled_from(["512MiB", "cpu-burn", "disk-io", "{name}.vhd", "lan"]),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.sampled_from(["templates", "t", "description", "name", "processors", "memory", "workload",
                                       "kind", "disks", "path", "size", "nics", "switch", "cpu", "limit"]),
                      inner, max_size=5), max_leaves=20)


@given(_VM_LIKE)
def test_any_templates_document_is_read_or_refused_with_a_config_error(data):
    from partitions.service.templates import templates_from_dict
    config = loads('[host]\nlogical_processors = 2\n[[switch]]\nname = "lan"\n')
    try:
        templates = templates_from_dict(data, config, file="t.toml")
    except ConfigError as exc:
        assert exc.file == "t.toml"
        return
    assert {"small", "web", "disk"} <= set(templates)


def test_a_template_is_a_frozen_value():
    t = Template("t", {"memory": "1GiB", "disks": [{"path": "{name}.vhd", "size": "1MiB"}]})
    t.fragment("a")["disks"][0]["path"] = "changed"
    assert t.fragment("b")["disks"][0]["path"] == "b.vhd"


def test_auth_module_documents_the_users_file():
    assert "[users.alice]" in auth.__doc__ and "token_sha256" in auth.__doc__


# ---- hvsim users -------------------------------------------------------------------------------

def users_cli(capsys, *argv) -> tuple[int, str, str]:
    """Run `hvsim users ...` in-process; (exit status, stdout, stderr)."""
    import argparse

    from partitions.cli import users as users_cli_module
    parser = argparse.ArgumentParser(prog="hvsim")
    users_cli_module.register(parser.add_subparsers())
    try:
        args = parser.parse_args(["users", *argv])
        status = args.func(args)
    except SystemExit as exc:
        status = exc.code
    out, err = capsys.readouterr()
    return status, out, err


def test_users_add_prints_the_token_alone_once_and_it_authenticates(tmp_path, capsys):
    path = tmp_path / "users.toml"
    status, out, err = users_cli(capsys, "add", "carol", "--role", "self-service", "--template", "small",
                                 "--template", "disk", "--quota-vms", "2", "--quota-memory", "2GiB",
                                 "--quota-processors", "3", "--file", str(path))
    assert status == 0 and re.fullmatch(r"hvsim_[0-9a-f]{8}_\S{43}\n", out)
    token = out.strip()
    assert 'added user "carol" (Self-service user)' in err and token not in err
    assert token.split("_", 2)[2] not in path.read_text()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    p = Authorizer.from_file(path).authenticate(f"Bearer {token}", "192.0.2.1")
    assert p == Principal("carol", "Self-service user", ("small", "disk"), Quota(2, 2 * GIB, 3))


def test_users_list_shows_roles_and_ids_never_hashes(tmp_path, capsys):
    path = tmp_path / "users.toml"
    users_cli(capsys, "add", "alice", "--role", "Administrator", "--file", str(path))
    users_cli(capsys, "add", "carol", "--role", "Self-service user", "--template", "small", "--quota-vms", "1",
              "--file", str(path))
    users = load_users(path)
    status, out, _ = users_cli(capsys, "list", "--file", str(path))
    assert status == 0
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "ROLE", "TOKEN", "ID", "TEMPLATES", "QUOTA"]
    assert lines[1].split() == ["alice", "Administrator", users["alice"].token_id, "-", "-"]
    assert lines[2].split() == ["carol", "Self-service", "user", users["carol"].token_id, "small", "1", "VMs"]
    status, out, _ = users_cli(capsys, "list", "--json", "--file", str(path))
    rows = json.loads(out)
    assert [r["name"] for r in rows] == ["alice", "carol"] and rows[1]["quota"]["vms"] == 1
    for u in users.values():
        assert u.token_sha256 not in out


def test_users_token_replaces_the_token_and_remove_revokes_it(tmp_path, capsys):
    path = tmp_path / "users.toml"
    _, old, _ = users_cli(capsys, "add", "oscar", "--role", "operator", "--file", str(path))
    users_cli(capsys, "add", "vera", "--role", "viewer", "--file", str(path))
    a = Authorizer.from_file(path)
    assert a.authenticate(f"Bearer {old.strip()}", None).user == "oscar"
    status, new, err = users_cli(capsys, "token", "oscar", "--file", str(path))
    assert status == 0 and new != old and "no longer works" in err
    with pytest.raises(Unauthorized):
        a.authenticate(f"Bearer {old.strip()}", None)
    assert a.authenticate(f"Bearer {new.strip()}", None) == Principal("oscar", "Operator")
    assert users_cli(capsys, "remove", "oscar", "--file", str(path))[0] == 0
    with pytest.raises(Unauthorized):
        a.authenticate(f"Bearer {new.strip()}", None)
    assert list(load_users(path)) == ["vera"]


@pytest.mark.parametrize("argv, status, message", [
    (["add", "bob", "--role", "King"], 2, "expected one of 'Administrator'"),
    (["add", "bob"], 2, "--role"),
    (["add", "b b", "--role", "viewer"], 2, "NAME: expected a name of letters"),
    (["add", "bob", "--role", "viewer", "--template", "small"], 2, "for a Self-service user, not Viewer"),
    (["add", "bob", "--role", "self-service", "--quota-memory", "4GB"], 2, 'did you mean "4GiB"'),
    (["add", "bob", "--role", "self-service", "--quota-vms", "-1"], 2, "--quota-vms: expected a number of 0 or more"),
    (["add", "alice", "--role", "viewer"], 1, 'user "alice" exists already'),
    (["remove", "bob"], 1, 'no user "bob" (its users: alice)'),
    (["token", "bob"], 1, 'no user "bob"'),
])
def test_users_refusals_change_nothing(tmp_path, capsys, argv, status, message):
    path = tmp_path / "users.toml"
    users_cli(capsys, "add", "alice", "--role", "admin", "--file", str(path))
    before = path.read_bytes()
    got, out, err = users_cli(capsys, *argv, "--file", str(path))
    assert got == status and message in err and out == ""
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["users.toml"]


def test_users_on_a_bad_or_missing_file_name_it(tmp_path, capsys):
    path = tmp_path / "users.toml"
    status, _, err = users_cli(capsys, "list", "--file", str(path))
    assert status == 1 and f"{path}: (file): expected a readable users file, got No such file" in err
    path.write_text("[users.x]\nrole = 'King'\n")
    status, _, err = users_cli(capsys, "add", "y", "--role", "viewer", "--file", str(path))
    assert status == 1 and f"{path}: users.x.role: expected one of" in err


def test_concurrent_users_adds_lose_none(tmp_path):
    # Threads, each opening the directory for its own lock as a separate process would: without
    # the lock, the read-modify-writes overlap and most users are lost.
    import argparse
    import contextlib
    import io

    from partitions.cli.users import add_command
    path = tmp_path / "users.toml"

    def add(i):
        add_command(argparse.Namespace(file=str(path), name=f"u{i}", role="Viewer", templates=[], quota_vms=None,
                                       quota_memory=None, quota_processors=None))

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        threads = [threading.Thread(target=add, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    users = load_users(path)
    assert sorted(users) == sorted(f"u{i}" for i in range(8))
    assert len({u.token_id for u in users.values()}) == 8


def test_hvsim_users_is_a_subcommand():
    from partitions.cli import build_parser
    args = build_parser().parse_args(["users", "list", "--file", "x.toml"])
    assert args.users_verb == "list" and args.file == "x.toml"


def test_a_fifo_or_a_directory_as_the_templates_file_is_refused_at_once(tmp_path, no_hang):
    """hvsim serve --templates FIFO must say what is wrong, not wait for a writer."""
    fifo = tmp_path / "templates.toml"
    os.mkfifo(fifo)
    for bad in (fifo, tmp_path):
        with pytest.raises(ConfigError, match="expected a regular file") as err:
            load_templates(bad, default_config(tmp_path))
        assert err.value.file == str(bad)
