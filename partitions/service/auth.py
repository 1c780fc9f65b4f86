"""Who may do what to the management service: users and their bearer tokens, the roles (Hyper-V's
Authorization Manager model: operations grouped into tasks, tasks into roles), the Self-service
user's templates and quota, and the audit log of every request.

The API (partitions/service/api.py) calls one Authorizer per server:

    authorizer = Authorizer.from_file("users.toml", audit="audit.jsonl")   # hvsim serve --users
    authorizer = Authorizer.local(audit=...)        # no --users: loopback clients are Administrator
    p = authorizer.authenticate(request.headers.get("authorization"), client_host)  # Unauthorized
    authorizer.check(p, "vms.start", owner=engine.owner("web"))                      # Forbidden
    authorizer.check_create(p, "small", {"processors": 1, "memory": 512 * MIB}, owned_vm_rows)
    authorizer.audit(p, "vms.start", "web", allowed=True, status=200, sim_ns=now, client="127.0.0.1")

The role table
--------------
ROLE_TASKS is the one place roles are defined; `actions()` (whoami and the console's buttons),
`check()`, docs/service.md's roles table and tests/service/test_roles.py's matrix all follow it
(the matrix from a table of its own, so the two can disagree). A role holds tasks, each with a
scope: "all", or "own" for a Self-service user, whose actions on a named VM need the VM's owner
(the user who created it through the API) to be that user, whose VM list and event stream the API
filters with `visible()`, and whose creations go through `check_create()` (templates and quota).
An action no task names is refused to everyone, Administrator included (fail closed).

The users file (`hvsim serve --users users.toml`, written by `hvsim users add|remove|token`)
---------------------------------------------------------------------------------------------
One table per user; the file never holds a token, only its id and its SHA-256:

    [users.alice]
    role = "Administrator"             # one of ROLES
    token_id = "3f9a01c2"              # 8 hex digits, the token's visible part (logs name it)
    token_sha256 = "9b74...e1"         # 64 hex digits: SHA-256 of the whole token text

    [users.carol]
    role = "Self-service user"
    token_id = "77d0be15"
    token_sha256 = "..."
    templates = ["small", "web"]       # the templates carol may create VMs from (none if absent)
    quota = { vms = 2, memory = "2GiB", processors = 4 }   # over the VMs carol owns; a limit
                                                           # left out is no limit

`templates` and `quota` are for Self-service users only (the other roles create from anything,
or nothing). User names are config names (letters, digits, '_', '.', '-'). A file that breaks
these rules is refused with a ConfigError naming the file, the key and what was expected. The
server re-reads the file when it changes (a `users remove` or `users token` takes effect at the
next request); if the new file is invalid, every request is refused until it is fixed.

Tokens
------
A token reads `hvsim_<id>_<secret>`: the id is 8 random hex digits, the secret 256 random bits
(`secrets.token_urlsafe(32)`). It is printed once and stored as SHA-256 of the whole text. A
plain hash is enough here, unlike for passwords: slow hashes (bcrypt, argon2) exist to make
guessing a low-entropy password from its hash expensive, and there is nothing to guess in 256
random bits, so a stolen users file yields no token either way. The presented token's hash is
compared with `hmac.compare_digest` (constant time in the hash, which an attacker does not know);
the id is looked up directly since it is not secret.

The audit log
-------------
One JSON object per request, allowed or denied, on its own line:
`{"wall": "2026-12-06T12:49:36.123Z", "sim_ns": 1500000000, "user": "carol", "role": "Self-service
user", "action": "vms.start", "target": "web", "allowed": false, "status": 403, "client":
"127.0.0.1"}` (user and role null when the request had no valid token; client "unix" for a Unix
socket). Each line goes out in one write(2) on an O_APPEND descriptor, so a crash of the server
loses at most the line being written (a crash of the machine may lose what the kernel had not
yet written back: no fsync per request). The file is created 0600.
"""
from __future__ import annotations

import datetime
import functools
import hashlib
import hmac
import ipaddress
import json
import os
import re
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from partitions.config_schema import ConfigError, format_size_exact, show, toml_key, toml_value

ROLES = ("Administrator", "Operator", "Viewer", "Self-service user")

# The operations: every action of the API (each endpoint's operationId), in the API's order.
ACTIONS = (
    "whoami.get", "clock.get", "clock.set", "clock.step", "hosts.list",
    "vms.list", "vms.get", "vms.create", "vms.delete",
    "vms.start", "vms.stop", "vms.turn-off", "vms.pause", "vms.resume", "vms.save", "vms.restore",
    "vms.checkpoint", "vms.apply", "vms.move",
    "switches.list", "disks.list", "templates.list", "events.get",
)

# Actions on the one VM named in the path: under an "own" scope the VM's owner must be the user.
VM_ACTIONS = ("vms.get", "vms.delete", "vms.start", "vms.stop", "vms.turn-off", "vms.pause", "vms.resume",
              "vms.save", "vms.restore", "vms.checkpoint", "vms.apply", "vms.move")

# Actions an "own" scope allows without naming a VM, because the API narrows them itself: lists and
# streams to what `visible()` lets through, a creation to what `check_create()` accepts. Any other
# action under an "own" scope is refused (fail closed: a new endpoint is not silently let through).
OWN_NARROWED = ("vms.list", "events.get", "vms.create")

# The tasks: operations grouped as an administrator thinks of them.
TASKS: dict[str, tuple[str, ...]] = {
    "look around": ("whoami.get", "clock.get", "hosts.list", "templates.list"),
    "read VMs": ("vms.list", "vms.get", "events.get"),
    "read the fabric": ("switches.list", "disks.list"),
    "operate VMs": ("vms.start", "vms.stop", "vms.turn-off", "vms.pause", "vms.resume", "vms.save",
                    "vms.restore", "vms.checkpoint", "vms.apply"),
    "move VMs": ("vms.move",),
    "provision VMs": ("vms.create", "vms.delete"),
    "drive the clock": ("clock.set", "clock.step"),
}

# The roles: (task, scope) pairs; scope "all", or "own" (only the user's own VMs; see the module doc).
ROLE_TASKS: dict[str, tuple[tuple[str, str], ...]] = {
    "Administrator": tuple((task, "all") for task in TASKS),
    "Operator": (("look around", "all"), ("read VMs", "all"), ("read the fabric", "all"),
                 ("operate VMs", "all"), ("move VMs", "all")),
    "Viewer": (("look around", "all"), ("read VMs", "all"), ("read the fabric", "all")),
    "Self-service user": (("look around", "all"), ("read VMs", "own"), ("operate VMs", "own"),
                          ("provision VMs", "own")),
}

TOKEN_PREFIX = "hvsim_"
_TOKEN = re.compile(r"hvsim_([0-9a-f]{8})_([A-Za-z0-9_-]{43})")
_TOKEN_ID = re.compile(r"[0-9a-f]{8}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
_NAME_EXPECTED = "a name of letters, digits, '_', '.' and '-' (at most 64, not starting with '.' or '-')"
_USER_KEYS = ("role", "token_id", "token_sha256", "templates", "quota")
_QUOTA_KEYS = ("vms", "memory", "processors")
MAX_QUOTA_MEMORY = 64 * 1024 ** 4      # the largest host memory a config accepts
LOCAL_USER = "local"


def _scopes() -> dict[str, dict[str, str]]:
    """role -> action -> scope, from ROLE_TASKS ("all" wins over "own" if a role had both)."""
    table: dict[str, dict[str, str]] = {}
    for role, tasks in ROLE_TASKS.items():
        actions = table.setdefault(role, {})
        for task, scope in tasks:
            for action in TASKS[task]:
                if actions.get(action) != "all":
                    actions[action] = scope
    return table


_SCOPE = _scopes()


# ---- principals, errors ------------------------------------------------------------------------

@dataclass(frozen=True)
class Quota:
    """A Self-service user's limits over the VMs it owns; None: no limit."""
    vms: int | None = None
    memory: int | None = None          # bytes, the VMs' configured memory together
    processors: int | None = None      # virtual processors together


@dataclass(frozen=True)
class Principal:
    """The authenticated caller of one request."""
    user: str
    role: str
    templates: tuple[str, ...] = ()    # Self-service: the templates it may create from
    quota: Quota | None = None         # Self-service: its limits (None: none)


@dataclass(frozen=True)
class User:
    """One entry of the users file."""
    name: str
    role: str
    token_id: str
    token_sha256: str
    templates: tuple[str, ...] = ()
    quota: Quota | None = None

    def principal(self) -> Principal:
        return Principal(self.name, self.role, self.templates, self.quota)


class Unauthorized(Exception):
    """No token, or one the server does not know (401). The message is shown to the user."""


class Forbidden(Exception):
    """An authenticated principal may not do this (403). The message names user, role and action."""

    def __init__(self, message: str, *, user: str | None = None, role: str | None = None,
                 action: str | None = None) -> None:
        super().__init__(message)
        self.user, self.role, self.action = user, role, action


# ---- tokens ------------------------------------------------------------------------------------

def new_token(taken: Iterable[str] = ()) -> tuple[str, str, str]:
    """(token, token_id, token_sha256) for a new token whose id is none of `taken` (the ids of the
    file's other users: ids are unique in a file); the caller shows `token` once, keeps the rest."""
    taken = set(taken)
    token_id = secrets.token_hex(4)
    while token_id in taken:
        token_id = secrets.token_hex(4)
    token = f"{TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
    return token, token_id, token_hash(token)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def token_id_of(token: str) -> str | None:
    """The visible id of a well-formed token, else None."""
    m = _TOKEN.fullmatch(token)
    return m.group(1) if m else None


# ---- the users file ----------------------------------------------------------------------------

def load_users(path: str | os.PathLike) -> dict[str, User]:
    """Read and check a users file; ConfigError names the file, the key and what was expected. A
    FIFO or a directory put in the file's place is refused at once (read_text_file), so the server,
    which re-reads a changed file, never hangs on it."""
    from partitions.config import read_toml_file
    file = str(path)
    data = read_toml_file(path, "a readable users file")
    return users_from_dict(data, file=file)


def users_from_dict(data: Any, *, file: str = "<users>") -> dict[str, User]:
    # The config reader's typed getters give the same messages as host files do (it is private to
    # partitions.config, but this is the same package's notion of a checked TOML file).
    from partitions.config import _Reader
    r = _Reader(file, Path.cwd())
    r.table(data, "", ("users",))
    users_table = data.get("users", {})
    if not isinstance(users_table, dict):
        r.fail("users", "a table of users, each a [users.NAME] table", show(users_table))
    users: dict[str, User] = {}
    ids: dict[str, str] = {}
    for name, entry in users_table.items():
        key = f"users.{toml_key(name)}"
        if not _NAME.fullmatch(name):
            r.fail(key, f"a user name: {_NAME_EXPECTED}", show(name))
        t = r.table(entry, key, _USER_KEYS, "a user")
        role = r.string(t, key, "role", choices=ROLES)
        token_id = r.string(t, key, "token_id", pattern=_TOKEN_ID, expected="8 hex digits (a token's visible id)")
        digest = r.string(t, key, "token_sha256", pattern=_SHA256,
                          expected="64 lowercase hex digits (the SHA-256 of the token)")
        if token_id in ids:
            r.fail(f"{key}.token_id", f'a token id no other user has (users.{toml_key(ids[token_id])} has it)',
                   show(token_id))
        ids[token_id] = name
        templates: tuple[str, ...] = ()
        quota = None
        for only in ("templates", "quota"):
            if only in t and role != "Self-service user":
                r.fail(f"{key}.{only}", f'{only} for a Self-service user only (this user is "{role}")',
                       show(t[only]))
        if "templates" in t:
            value = t["templates"]
            if not isinstance(value, list) or not all(isinstance(v, str) and _NAME.fullmatch(v) for v in value):
                r.fail(f"{key}.templates", "an array of template names, such as [\"small\", \"web\"]", show(value))
            templates = tuple(dict.fromkeys(value))
        if "quota" in t:
            qkey = f"{key}.quota"
            q = r.table(t["quota"], qkey, _QUOTA_KEYS, "a quota")
            quota = Quota(r.integer(q, qkey, "vms", 0, 100_000, None),
                          r.size(q, qkey, "memory", 0, MAX_QUOTA_MEMORY, 4096, "4GiB", None),
                          r.integer(q, qkey, "processors", 0, 1_000_000, None))
        users[name] = User(name, role, token_id, digest, templates, quota)
    return users


def dump_users(users: Mapping[str, User]) -> str:
    """The users file's text (what load_users reads back to the same users)."""
    out = ["# hvsim service users (hvsim users add|list|remove|token). Tokens are stored as SHA-256",
           "# hashes only; see partitions/service/auth.py for the format.", ""]
    for user in users.values():
        out.append(f"[users.{toml_key(user.name)}]")
        out.append(f"role = {toml_value(user.role)}")
        out.append(f"token_id = {toml_value(user.token_id)}")
        out.append(f"token_sha256 = {toml_value(user.token_sha256)}")
        if user.role == "Self-service user":
            out.append(f"templates = {toml_value(list(user.templates))}")
            if user.quota is not None:
                q = user.quota
                fields = {"vms": q.vms, "memory": None if q.memory is None else format_size_exact(q.memory),
                          "processors": q.processors}
                if any(v is not None for v in fields.values()):
                    out.append(f"quota = {toml_value(fields)}")
        out.append("")
    return "\n".join(out)


def write_users(path: str | os.PathLike, users: Mapping[str, User]) -> None:
    """Replace the users file atomically (a temporary file beside it, then rename), mode 0600: a
    reader (the running server) sees the old file or the new one, never half of one."""
    path = Path(path)
    text = dump_users(users).encode("utf-8")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        try:
            os.write(fd, text)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:   # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


# ---- the audit log -----------------------------------------------------------------------------

class AuditLog:
    """Appends one JSON line per request to a file created 0600 (one write(2) per line, O_APPEND)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        self._lock = threading.Lock()

    def write(self, record: Mapping[str, Any]) -> None:
        line = (json.dumps(record, ensure_ascii=False, separators=(", ", ": ")) + "\n").encode("utf-8")
        with self._lock:
            if self._fd < 0:
                raise ValueError(f"audit log {self.path} is closed")
            view = memoryview(line)
            while view:   # a regular file takes it in one write; loop only on a short write
                view = view[os.write(self._fd, view):]

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def wall_time() -> str:
    """Now as ISO 8601 UTC with milliseconds: "2026-12-06T12:49:36.123Z"."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# ---- the authorizer ----------------------------------------------------------------------------

@functools.lru_cache(maxsize=256)   # asked for every request; parsing the address was most of authenticate()
def is_loopback(client_host: str | None) -> bool:
    """None is a Unix-socket client (as local as loopback); else an IP on the loopback network
    (an IPv4-mapped IPv6 address counts as its IPv4 address). Names are not trusted."""
    if client_host is None:
        return True
    try:
        ip = ipaddress.ip_address(client_host.strip("[]").split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


class Authorizer:
    """Authenticates requests, checks them against ROLE_TASKS, and writes the audit log."""

    def __init__(self, users: Mapping[str, User] | None, *, source: str | os.PathLike | None = None,
                 audit: str | os.PathLike | None = None) -> None:
        # users None: no --users (loopback clients are Administrator); else the users file's table.
        self._users = dict(users) if users is not None else None
        self._by_id = self._index(self._users)
        self._source = Path(source) if source is not None else None
        self._stamp = self._file_stamp() if self._source is not None else None
        self._broken: str | None = None       # why the changed users file is refused, if it is
        self._lock = threading.Lock()
        self._audit = AuditLog(audit) if audit is not None else None

    @classmethod
    def local(cls, *, audit: str | os.PathLike | None = None) -> Authorizer:
        """No users file: loopback and Unix-socket clients are Administrator "local", others refused."""
        return cls(None, audit=audit)

    @classmethod
    def from_file(cls, path: str | os.PathLike, *, audit: str | os.PathLike | None = None) -> Authorizer:
        """The users of a users file (ConfigError if it is bad); re-read when the file changes."""
        return cls(load_users(path), source=path, audit=audit)

    @property
    def users(self) -> dict[str, User] | None:
        return None if self._users is None else dict(self._users)

    def set_audit(self, path: str | os.PathLike | None) -> None:
        """Write the audit log to `path` from now on (None: nowhere)."""
        old, self._audit = self._audit, AuditLog(path) if path is not None else None
        if old is not None:
            old.close()

    def close(self) -> None:
        if self._audit is not None:
            self._audit.close()

    # -- authentication --
    @staticmethod
    def _index(users: Mapping[str, User] | None) -> dict[str, User]:
        return {u.token_id: u for u in users.values()} if users else {}

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self._source)
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _refresh(self) -> None:
        """Re-read the users file if it changed since it was read (a stat per request)."""
        if self._source is None:
            return
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return
        with self._lock:
            if stamp == self._stamp:
                return
            try:
                users = load_users(self._source) if stamp is not None else None
            except ConfigError as exc:
                self._broken = str(exc)
            else:
                if users is None:
                    self._broken = f"{self._source}: the users file is gone"
                else:
                    self._users, self._by_id, self._broken = users, self._index(users), None
            self._stamp = stamp

    def authenticate(self, authorization: str | None, client_host: str | None) -> Principal:
        """The principal of a request from its Authorization header and client address (None: a
        Unix-socket client). Raises Unauthorized (401) or, without users, Forbidden (403) for a
        client that is not local."""
        if self._users is None:
            if is_loopback(client_host):
                return Principal(LOCAL_USER, "Administrator")
            raise Forbidden(f"this server has no users (hvsim serve without --users) and accepts loopback clients "
                            f"only; {client_host} is not one")
        self._refresh()
        if self._broken is not None:
            raise Unauthorized(f"the server's users file cannot be used, so no token is accepted: {self._broken}")
        if not authorization:
            raise Unauthorized("no token: send the header \"Authorization: Bearer <token>\" (hvsim users token NAME "
                               "makes one; the hvsim command reads HVSIM_TOKEN or --token-file)")
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized(f"expected \"Authorization: Bearer <token>\", got a {scheme[:20]!r} credential")
        token_id = token_id_of(token)
        if token_id is None:
            raise Unauthorized("not an hvsim token (they read hvsim_<8 hex digits>_<43 characters>)")
        user = self._by_id.get(token_id)
        # N.B. the id is public (it is in logs); only the hash comparison must not leak timing.
        if user is None or not hmac.compare_digest(token_hash(token), user.token_sha256):
            raise Unauthorized(f"unknown or replaced token {TOKEN_PREFIX}{token_id}_...")
        return user.principal()

    # -- authorization --
    def _scope(self, p: Principal, action: str) -> str | None:
        return _SCOPE.get(p.role, {}).get(action)

    def check(self, p: Principal, action: str, *, owner: str | None = None) -> None:
        """Raise Forbidden unless `p` may do `action`; `owner` is the owner of the VM the action
        names (None: no owner, or no VM named)."""
        scope = self._scope(p, action)
        who = f'user "{p.user}" ({p.role})'
        if scope is None:
            if action not in ACTIONS:
                raise Forbidden(f"{who} may not use {action}: no role may (an action the authorizer does not "
                                f"know)", user=p.user, role=p.role, action=action)
            raise Forbidden(f"{who} may not use {action}; the role may use {', '.join(self.actions(p))}",
                            user=p.user, role=p.role, action=action)
        if scope == "own" and action in VM_ACTIONS and owner != p.user:
            raise Forbidden(f"{who} may use {action} only on the VMs it created, and this VM is not one of them",
                            user=p.user, role=p.role, action=action)
        if scope == "own" and action not in VM_ACTIONS and action not in OWN_NARROWED:
            raise Forbidden(f"{who} may not use {action}: the role may use it on its own VMs only, and this action "
                            f"names none", user=p.user, role=p.role, action=action)

    def may(self, p: Principal, action: str, *, owner: str | None = None) -> bool:
        try:
            self.check(p, action, owner=owner)
        except Forbidden:
            return False
        return True

    def actions(self, p: Principal) -> list[str]:
        """The actions `p`'s role may use (on its own VMs, for an "own" scope), in ACTIONS' order."""
        scopes = _SCOPE.get(p.role, {})
        return [a for a in ACTIONS if a in scopes]

    def visible(self, p: Principal, owner: str | None) -> bool:
        """Whether `p` sees a VM owned by `owner` in lists and event streams."""
        scope = self._scope(p, "vms.list")
        return scope == "all" or (scope == "own" and owner == p.user)

    def templates_for(self, p: Principal, names: Iterable[str]) -> list[str]:
        """Of the server's template names, those `p` may create from."""
        scope = self._scope(p, "vms.create")
        if scope == "all":
            return list(names)
        if scope == "own":
            return [n for n in names if n in p.templates]
        return []

    def check_create(self, p: Principal, template: str | None, request: Mapping[str, Any] | Any,
                     owned: list[Mapping[str, Any]]) -> None:
        """Raise Forbidden unless `p` may create the VM `request` ({"name"?, "processors", "memory"
        (bytes)}, or its VmConfig) from `template` (None: a TOML fragment), given the VMs it owns
        (each a mapping with "processors" and "memory" or "memory_bytes"). An "own" scope allows its templates
        only, within its quota; the message says which limit."""
        self.check(p, "vms.create")
        if self._scope(p, "vms.create") != "own":
            return
        who = f'user "{p.user}" ({p.role})'
        allowed = ", ".join(p.templates) or "none"
        if template is None:
            raise Forbidden(f"{who} may create VMs from its templates only ({allowed}), not from a TOML fragment",
                            user=p.user, role=p.role, action="vms.create")
        if template not in p.templates:
            raise Forbidden(f'{who} may not create VMs from template "{template}"; its templates: {allowed}',
                            user=p.user, role=p.role, action="vms.create")
        q = p.quota
        if q is None:
            return
        name = request.get("name") if isinstance(request, Mapping) else getattr(request, "name", None)
        vm = f'"{name}"' if name else "the new VM"
        if q.vms is not None and len(owned) + 1 > q.vms:
            raise Forbidden(f"{who} is over its quota of VMs: it may own {q.vms} and owns {len(owned)}",
                            user=p.user, role=p.role, action="vms.create")
        memory = _amount(request, "memory")
        used = sum(_amount(vm_row, "memory") for vm_row in owned)
        if q.memory is not None and used + memory > q.memory:
            raise Forbidden(f"{who} is over its quota of memory: it may have {format_size_exact(q.memory)} and its "
                            f"VMs have {format_size_exact(used)}; {vm} asks {format_size_exact(memory)} more",
                            user=p.user, role=p.role, action="vms.create")
        processors = _amount(request, "processors")
        used = sum(_amount(vm_row, "processors") for vm_row in owned)
        if q.processors is not None and used + processors > q.processors:
            raise Forbidden(f"{who} is over its quota of processors: it may have {q.processors} and its VMs have "
                            f"{used}; {vm} asks {processors} more", user=p.user, role=p.role, action="vms.create")

    # -- the audit log --
    def audit(self, p: Principal | None, action: str, target: str | None, allowed: bool, status: int,
              sim_ns: int, client: str | None) -> None:
        """Append the request's line to the audit log (nothing when the server has none)."""
        record = {"wall": wall_time(), "sim_ns": sim_ns, "user": p.user if p else None, "role": p.role if p else None,
                  "action": action, "target": target, "allowed": bool(allowed), "status": int(status),
                  "client": client if client is not None else "unix"}
        if self._audit is not None:
            self._audit.write(record)


def _amount(row: Mapping[str, Any] | Any, what: str) -> int:
    """A VM's memory (bytes) or processors from a request, a VM row or a VmConfig; fails closed
    when it is missing."""
    for key in ((what, f"{what}_bytes") if what == "memory" else (what,)):
        value = row.get(key) if isinstance(row, Mapping) else getattr(row, key, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    raise ValueError(f"a VM's {what} is needed to check a quota, got {show(row)}")
