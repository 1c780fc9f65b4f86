"""`hvsim host serve --listen HOST:PORT`: run a datacenter's host in this process, for a
datacenter whose file names this address as that host's `remote` (docs/datacenter.md, "A host
in another process"; the protocol is docs/wire.md).

The served host has no file of its own: the datacenter sends the host's configuration (its
[[host]] table, VMs, switches and timeline), its name, seed and neighbours at hello, so the one
datacenter file stays the single description of the run. Sessions are served one after another
(each a fresh host), until Ctrl-C, or one only with --once.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("host", help="serve a datacenter's host from this process (hvsim host serve)",
                       description="Run one host of a datacenter in this process, for a datacenter file "
                                   "whose [[host]] says remote = \"HOST:PORT\".")
    verbs = p.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True
    s = verbs.add_parser("serve", help="serve a host on HOST:PORT",
                         description="Listen on HOST:PORT and serve the host a datacenter asks for: its "
                                     "configuration, name and seed come with the datacenter's hello. Prints "
                                     "'listening on HOST:PORT' (the port taken, for port 0) on stdout.",
                         epilog="Exit status: 0 after Ctrl-C or a --once session closed by the datacenter; 1 "
                                "for a --once session that ended otherwise; 2 for a bad option or an address "
                                "that cannot be listened on.")
    s.add_argument("--listen", required=True, metavar="HOST:PORT",
                   help="address to listen on, such as 127.0.0.1:7000 (port 0: any free port)")
    s.add_argument("--workdir", default=".hvsim-host", metavar="DIR",
                   help="the host's run directory; its VMs' disks must lie under it (default .hvsim-host)")
    s.add_argument("--timeout", default="60s", metavar="DURATION",
                   help="wall-clock time to wait for each request before the session is dropped (default 60s)")
    s.add_argument("--log", metavar="FILE",
                   help="write the served host's structured event log (JSON lines; each session rewrites it)")
    s.add_argument("--once", action="store_true", help="serve one session, then exit")
    s.add_argument("--allow-python", action="store_true",
                   help="accept python workloads (they import code the datacenter names)")
    s.set_defaults(func=serve)


def serve(args: argparse.Namespace) -> int:
    from hypervisor.quantities import parse_duration
    from partitions.cli import run as run_cli
    from partitions.datacenter.remote import listen, serve_host
    try:
        timeout = parse_duration(args.timeout, "--timeout") / 1e9
        if timeout <= 0:
            raise ValueError(f"--timeout: expected a positive duration, got {args.timeout!r}")
        workdir = Path(args.workdir).resolve()
        if args.log is not None:
            run_cli._check_file(Path(args.log), "--log")
        workdir.mkdir(parents=True, exist_ok=True)
        server = listen(args.listen)
    except run_cli.UsageError as exc:
        print(f"hvsim host serve: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, OSError) as exc:
        print(f"hvsim host serve: {exc.strerror if isinstance(exc, OSError) and exc.strerror else exc}"
              f"{f' ({args.listen})' if isinstance(exc, OSError) else ''}", file=sys.stderr)
        return EXIT_USAGE
    host, port = server.getsockname()[:2]
    print(f"listening on {f'[{host}]' if ':' in host else host}:{port}", flush=True)
    say = lambda line: print(f"hvsim host serve: {line}", file=sys.stderr, flush=True)   # noqa: E731
    try:
        while True:
            sock, peer = server.accept()
            closed, ended = serve_host(sock, f"{peer[0]}:{peer[1]}", workdir=workdir, timeout=timeout,
                               allow_python=args.allow_python, say=say, log=args.log)
            say(ended)
            if args.once:
                return 0 if closed else EXIT_FAILED
    except KeyboardInterrupt:
        say("stopped (Ctrl-C)")
        return 0
    finally:
        server.close()
