"""The `hvsim users` subcommand: the users of `hvsim serve --users FILE` and their tokens
(`add`, `list`, `remove`, `token`).

A new token is printed once, alone on stdout (so `hvsim users add ... > alice.token` keeps it for
HVSIM_TOKEN_FILE); the file keeps only its id and SHA-256 (partitions/service/auth.py describes the
format). Every change rewrites the file atomically, mode 0600, under an advisory lock on its
directory so that two changes at once do not lose one; a running server picks it up at its next
request. Exit status: 0 done, 1 the file or the user is not as the verb needs, 2 a usage error.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import sys
from pathlib import Path

DEFAULT_FILE = "users.toml"
EXIT_FAILED, EXIT_USAGE = 1, 2


def _role(text: str) -> str:
    """A role by its name, case-insensitively; "self-service" and "admin" for short."""
    from partitions.service.auth import ROLES
    aliases = {r.lower(): r for r in ROLES}
    aliases.update({"self-service": "Self-service user", "selfservice": "Self-service user",
                    "admin": "Administrator"})
    role = aliases.get(text.strip().lower())
    if role is None:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(repr(r) for r in ROLES)}, got {text!r}")
    return role


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "users", help="manage the users and tokens of hvsim serve --users",
        description="Manage the users file of `hvsim serve --users FILE`: each user has a role (Administrator, "
                    "Operator, Viewer, Self-service user) and a bearer token. Tokens are shown once and stored "
                    "hashed.")
    verbs = parser.add_subparsers(dest="users_verb", metavar="VERB")
    verbs.required = True

    def verb(name: str, help: str, description: str) -> argparse.ArgumentParser:
        p = verbs.add_parser(name, help=help, description=description)
        p.add_argument("--file", default=DEFAULT_FILE, metavar="FILE",
                       help=f"the users file (default: {DEFAULT_FILE})")
        return p

    add = verb("add", "add a user and print its new token",
               "Add a user (the file is created if it does not exist) and print its token once, alone on stdout.")
    add.add_argument("name", metavar="NAME")
    add.add_argument("--role", type=_role, required=True,
                     help='Administrator, Operator, Viewer or "Self-service user" (self-service for short)')
    add.add_argument("--template", action="append", default=[], metavar="T", dest="templates",
                     help="Self-service: a template the user may create VMs from (repeat for more)")
    add.add_argument("--quota-vms", type=int, metavar="N", help="Self-service: at most N VMs")
    add.add_argument("--quota-memory", metavar="SIZE", help="Self-service: at most SIZE of VM memory (4GiB)")
    add.add_argument("--quota-processors", type=int, metavar="N", help="Self-service: at most N virtual processors")
    add.set_defaults(func=add_command)

    lst = verb("list", "list the users (never their tokens)", "List the users with their roles, token ids, "
               "templates and quotas; token hashes are not shown.")
    lst.add_argument("--json", action="store_true", help="print JSON instead of a table")
    lst.set_defaults(func=list_command)

    remove = verb("remove", "remove a user", "Remove a user; its token stops working at the server's next request.")
    remove.add_argument("name", metavar="NAME")
    remove.set_defaults(func=remove_command)

    token = verb("token", "give a user a new token (the old one stops working)",
                 "Make a new token for a user, replacing the old one, and print it once, alone on stdout.")
    token.add_argument("name", metavar="NAME")
    token.set_defaults(func=token_command)


class _Failed(Exception):
    def __init__(self, message: str, status: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.status = status


@contextlib.contextmanager
def _locked(path: Path):
    """Hold an advisory lock on the users file's directory for a read-modify-write."""
    directory = path.parent if str(path.parent) else Path(".")
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as exc:
        raise _Failed(f"{directory}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _load(path: Path, *, missing_ok: bool = False) -> dict:
    from partitions.config_schema import ConfigError
    from partitions.service.auth import load_users
    if missing_ok and not path.exists():
        return {}
    try:
        return load_users(path)
    except ConfigError as exc:
        raise _Failed(str(exc)) from None


def _user(users: dict, name: str, path: Path):
    if name not in users:
        known = ", ".join(users) or "none"
        raise _Failed(f'{path}: no user "{name}" (its users: {known})')
    return users[name]


def _run(args: argparse.Namespace, verb: str, body) -> int:
    try:
        return body(Path(args.file)) or 0
    except _Failed as exc:
        print(f"hvsim users {verb}: {exc}", file=sys.stderr)
        return exc.status
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"hvsim users {verb}: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILED


def _quota(args: argparse.Namespace):
    from partitions.config import _Reader
    from partitions.config_schema import ConfigError
    from partitions.service.auth import MAX_QUOTA_MEMORY, Quota
    values = (args.quota_vms, args.quota_memory, args.quota_processors)
    if all(v is None for v in values):
        return None
    for option, n in (("--quota-vms", args.quota_vms), ("--quota-processors", args.quota_processors)):
        if n is not None and n < 0:
            raise _Failed(f"{option}: expected a number of 0 or more, got {n}", EXIT_USAGE)
    memory = None
    if args.quota_memory is not None:
        try:   # read as a users file's quota.memory is (4GiB; 4GB refused as ambiguous)
            memory = _Reader("the command line", Path.cwd()).size(
                {"--quota-memory": args.quota_memory}, "", "--quota-memory", 0, MAX_QUOTA_MEMORY, 4096, "4GiB")
        except ConfigError as exc:
            raise _Failed(str(exc).removeprefix("the command line: "), EXIT_USAGE) from None
    return Quota(args.quota_vms, memory, args.quota_processors)


def add_command(args: argparse.Namespace) -> int:
    from partitions.service.auth import _NAME, _NAME_EXPECTED, User, new_token, write_users

    def body(path: Path) -> int:
        if not _NAME.fullmatch(args.name):
            raise _Failed(f"NAME: expected {_NAME_EXPECTED}, got {args.name!r}", EXIT_USAGE)
        quota = _quota(args)
        selfservice = args.role == "Self-service user"
        if not selfservice and (args.templates or quota is not None):
            raise _Failed(f"--template and --quota-* are for a Self-service user, not {args.role}", EXIT_USAGE)
        for t in args.templates:
            if not _NAME.fullmatch(t):
                raise _Failed(f"--template: expected a template name, got {t!r}", EXIT_USAGE)
        with _locked(path):
            users = _load(path, missing_ok=True)
            if args.name in users:
                raise _Failed(f'{path}: user "{args.name}" exists already (hvsim users token {args.name} gives it '
                              f"a new token)")
            token, token_id, digest = new_token(u.token_id for u in users.values())
            users[args.name] = User(args.name, args.role, token_id, digest, tuple(dict.fromkeys(args.templates)),
                                    quota)
            write_users(path, users)
        print(token)
        note = "" if not selfservice or args.templates else " (no --template: it cannot create VMs yet)"
        print(f'added user "{args.name}" ({args.role}) to {path}{note}; its token, printed above, is not shown '
              f"again (token id {token_id})", file=sys.stderr)
        return 0

    return _run(args, "add", body)


def list_command(args: argparse.Namespace) -> int:
    from partitions.config_schema import format_size_exact

    def body(path: Path) -> int:
        users = _load(path)
        rows = []
        for u in users.values():
            q = u.quota
            rows.append({"name": u.name, "role": u.role, "token_id": u.token_id,
                         "templates": list(u.templates) if u.role == "Self-service user" else None,
                         "quota": None if q is None else {"vms": q.vms, "memory_bytes": q.memory,
                                                          "processors": q.processors}})
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0

        def quota(r) -> str:
            q = r["quota"]
            if q is None:
                return "-"
            parts = [f"{q['vms']} VMs" if q["vms"] is not None else None,
                     format_size_exact(q["memory_bytes"]) if q["memory_bytes"] is not None else None,
                     f"{q['processors']} VPs" if q["processors"] is not None else None]
            return ", ".join(p for p in parts if p) or "-"

        table = [("NAME", "ROLE", "TOKEN ID", "TEMPLATES", "QUOTA")] + [
            (r["name"], r["role"], r["token_id"], "-" if r["templates"] is None else ",".join(r["templates"]) or "(none)",
             quota(r)) for r in rows]
        widths = [max(len(row[i]) for row in table) for i in range(5)]
        for row in table:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        return 0

    return _run(args, "list", body)


def remove_command(args: argparse.Namespace) -> int:
    from partitions.service.auth import write_users

    def body(path: Path) -> int:
        with _locked(path):
            users = _load(path)
            _user(users, args.name, path)
            del users[args.name]
            write_users(path, users)
        print(f'removed user "{args.name}" from {path}', file=sys.stderr)
        return 0

    return _run(args, "remove", body)


def token_command(args: argparse.Namespace) -> int:
    import dataclasses

    from partitions.service.auth import new_token, write_users

    def body(path: Path) -> int:
        with _locked(path):
            users = _load(path)
            user = _user(users, args.name, path)
            token, token_id, digest = new_token(u.token_id for u in users.values())
            users[args.name] = dataclasses.replace(user, token_id=token_id, token_sha256=digest)
            write_users(path, users)
        print(token)
        print(f'new token for "{args.name}" (token id {token_id}); the old one ({user.token_id}) no longer works',
              file=sys.stderr)
        return 0

    return _run(args, "token", body)
