"""`hvsim serve [CONFIG]`: run a simulated host (the built-in default without a file) or datacenter
as a service: the simulation advances continuously on its own thread (partitions/service/engine.py)
and an HTTP API with the web console (partitions/service/api.py) listens on TCP or a Unix socket.

Everything that can be known before the service starts is checked first, as `hvsim run` does
(its `plan`, with --state as the run directory): the file, the options, the users and templates
files, the listening address; a problem is one line on stderr naming the file and key or the
option, exit status 2, and nothing is left listening. SIGTERM and SIGINT stop it cleanly: the
server stops accepting, open event streams end, the simulation finishes its window and turns its
VMs off as `hvsim run` does at its end (nothing is saved that was not asked for), exit status 0.
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import socket
import stat
import sys
from pathlib import Path

EXIT_FAILED, EXIT_USAGE = 1, 2
DEFAULT_LISTEN = "127.0.0.1:8450"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run a simulated host as a service with an HTTP API and a web console",
                       description="Run a simulated host (the built-in default without CONFIG) or datacenter as a "
                                   "service: simulated time advances continuously; the HTTP API (/v1, described at "
                                   "/v1/openapi.json) and the web console (/console/) manage it while it runs. "
                                   "Without --users only local clients are accepted, as Administrator.",
                       epilog="Exit status: 0 after SIGTERM or SIGINT (the VMs are turned off, nothing is saved "
                              "that was not asked for); 2 for a problem found before the service starts; 1 if it "
                              "fails while serving. See docs/service.md.")
    p.add_argument("config", nargs="?", help="host or datacenter configuration (TOML); see docs/configuration.md")
    p.add_argument("--listen", default=DEFAULT_LISTEN, metavar="ADDRESS",
                   help=f"HOST:PORT (default {DEFAULT_LISTEN}; port 0 picks a free one) or unix:/path/to.sock")
    p.add_argument("--speed", default="1", metavar="X",
                   help="simulated seconds per wall-clock second: 1 is real time (default), max as fast as "
                        "possible, or any positive number")
    p.add_argument("--paused", action="store_true", help="start with the clock paused (PUT /v1/clock resumes it)")
    p.add_argument("--users", metavar="FILE",
                   help="the users and their token hashes (hvsim users add); without it only local clients are "
                        "accepted, each as Administrator")
    p.add_argument("--audit", metavar="FILE", help="the audit log, JSON lines (default STATE/audit.jsonl)")
    p.add_argument("--state", default=".hvsim/service", metavar="DIR",
                   help="where VMs' saved states, checkpoints and run disks go, and the VMs created through the "
                        "API with their owners, kept for the next start (default .hvsim/service)")
    p.add_argument("--templates", metavar="FILE", help="VM templates to offer besides the built-in ones (TOML)")
    p.add_argument("--seed", default=None, help="seed of the simulation, 0..2^64-1 (default: the file's, else 0)")
    p.add_argument("--log", metavar="FILE", help="write the structured event log (JSON lines), as hvsim run --log")
    p.add_argument("--window", default="2ms", metavar="DURATION",
                   help="simulated time between two points where API commands apply (default 2ms); longer "
                        "windows make the API wait longer for the simulation")
    p.add_argument("--access-log", action="store_true", help="log each HTTP request on stderr")
    p.set_defaults(func=serve)


class UsageError(Exception):
    """A problem found before the service starts: one line, without the program's name."""


def parse_listen(text: str) -> tuple[str, object]:
    """("tcp", (host, port)) or ("unix", Path); UsageError naming --listen otherwise."""
    if text.startswith("unix:"):
        path = Path(text[len("unix:"):])
        if not str(path) or str(path) == ".":
            raise UsageError(f"--listen {text}: expected unix:/path/to.sock")
        return "unix", path
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535 or not host:
        raise UsageError(f"--listen {text}: expected HOST:PORT (a port from 0 to 65535) or unix:/path/to.sock")
    return "tcp", (host, int(port))


def parse_speed(text: str) -> float | None:
    if text.strip().lower() == "max":
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise UsageError(f"--speed {text}: expected a positive number of simulated seconds per second (1 = real "
                         f"time) or max")
    return value


def _bind(kind: str, where) -> socket.socket:
    """The listening socket, bound now (so a port in use is a usage error, before anything starts)."""
    if kind == "unix":
        path: Path = where
        if not path.absolute().parent.is_dir():
            raise UsageError(f"--listen unix:{path}: no directory {path.absolute().parent}")
        if path.exists() or path.is_symlink():
            if not stat.S_ISSOCK(path.lstat().st_mode):
                raise UsageError(f"--listen unix:{path}: exists and is not a socket")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(str(path))
            except OSError:   # a socket nobody listens on any more: a server that did not clean up
                path.unlink()
            else:
                raise UsageError(f"--listen unix:{path}: another server listens there")
            finally:
                probe.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # Owner only: without --users a local client is Administrator, so the socket's
            # permissions are the access control, as for a local daemon's socket.
            old = os.umask(0o177)
            try:
                sock.bind(str(path))
            finally:
                os.umask(old)
        except OSError as exc:
            sock.close()
            raise UsageError(f"--listen unix:{path}: {exc.strerror or exc}") from None
        return sock
    host, port = where
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        family = socket.AF_INET   # a name: resolved by bind
    # IPPROTO_TCP named: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and
    # without it a keep-alive client waits out Nagle and the delayed ACK (~40 ms) per request.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UsageError(f"--listen {host}:{port}: {exc.strerror or exc}") from None
    return sock


def _fail(message: str, status: int = EXIT_USAGE) -> int:
    print(f"hvsim serve: {message}", file=sys.stderr)
    return status


def serve(args: argparse.Namespace) -> int:
    from partitions.cli import run as run_cli
    from partitions.config_schema import ConfigError
    stop_requested: list[int] = []
    # Until the server takes them over: a SIGTERM or SIGINT while the host is built stops cleanly too.
    previous = {sig: signal.signal(sig, lambda s, f: stop_requested.append(s)) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            kind, where = parse_listen(args.listen)
            speed = parse_speed(args.speed)
            state = Path(args.state).resolve()
            run_cli._check_directory(state, "--state")
            from hypervisor.quantities import parse_duration
            try:
                if parse_duration(args.window, "--window") <= 0:
                    raise ValueError
            except ValueError:
                raise UsageError(f"--window {args.window}: expected a positive duration with a unit, such as 2ms") \
                    from None
            plan = run_cli.plan(argparse.Namespace(config=args.config, duration="1s", seed=args.seed,
                                                   workdir=str(state), log=args.log, trace=None, pcap=None,
                                                   console=[]), create=True)
            audit = Path(args.audit) if args.audit else state / "audit.jsonl"
            run_cli._check_file(audit, "--audit")
            from partitions.service.auth import Authorizer
            from partitions.service.templates import load_templates
            authorizer = Authorizer.from_file(args.users, audit=audit) if args.users else Authorizer.local(audit=audit)
            try:
                templates = load_templates(args.templates, plan.config)
            except BaseException:
                authorizer.close()
                raise
        except (UsageError, run_cli.UsageError) as exc:
            return _fail(str(exc))
        except ConfigError as exc:
            return _fail(str(exc))
        try:
            sock = _bind(kind, where)
        except UsageError as exc:
            authorizer.close()
            return _fail(str(exc))
        try:
            return _serve(args, plan, speed, authorizer, templates, sock, kind, where, stop_requested)
        finally:
            sock.close()
            if kind == "unix":
                try:
                    where.unlink()
                except OSError:
                    pass
            authorizer.close()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _serve(args, plan, speed, authorizer, templates, sock, kind, where, stop_requested) -> int:
    import logging

    import uvicorn

    from partitions.management import ScenarioError
    from partitions.service.api import create_app, http_protocol
    from partitions.service.engine import GIL_SWITCH_S, Engine
    logging.basicConfig(level=logging.WARNING, format="hvsim serve: %(message)s", stream=sys.stderr)
    sys.setswitchinterval(GIL_SWITCH_S)   # the API's thread gets the GIL back sooner (engine.py says why)
    engine = Engine(plan.config, seed=plan.seed, workdir=plan.workdir, speed=speed, paused=args.paused,
                    window=args.window, log=args.log)
    try:
        engine.start()
    except (ScenarioError, ValueError, OSError) as exc:
        return _fail(str(exc))
    try:
        app = create_app(engine, authorizer, templates=templates)

        class Server(uvicorn.Server):
            """uvicorn's server, whose SIGTERM/SIGINT also end the open event streams and are not
            raised again once it has shut down (uvicorn does, to end the process by the default
            handler: here `serve` returns 0 instead)."""

            def handle_exit(self, sig, frame) -> None:
                app.state.closing = True
                if self.should_exit and sig == signal.SIGINT:
                    self.force_exit = True
                else:
                    self.should_exit = True

        config = uvicorn.Config(app, log_level="warning", access_log=args.access_log, lifespan="off",
                                timeout_graceful_shutdown=5, http=http_protocol() or "auto",
                                **({"uds": str(where)} if kind == "unix" else {}))
        server = Server(config)
        if kind == "unix":
            address = f"unix:{where}"
            console = f"the console: curl --unix-socket {where} http://localhost/console/"
        else:
            host, port = sock.getsockname()[:2]
            shown = f"[{host}]" if ":" in host else host
            address = f"http://{shown}:{port}"
            console = f"the console: {address}/console/"
        # Listening already (the socket is bound; uvicorn accepts once it runs): say where.
        sock.listen(128)
        print(f"hvsim serve: listening on {address} ({console}; the API under /v1)", flush=True)
        if not stop_requested:
            server.run(sockets=[sock])
    finally:
        app_state = locals().get("app")
        if app_state is not None:
            app_state.state.closing = True
        engine.stop()
    if engine.failed:
        return _fail(f"the simulation stopped: {engine.failed}", EXIT_FAILED)
    return 0
