"""Host configuration files: load a TOML host description — or a datacenter of hosts and links —
into `partitions.config_schema` dataclasses (checking everything, with errors that name the file
and the key), the built-in default host, and `dump` back to TOML.

A file with `[host]` describes one host and loads to a Config; a file with `[[host]]` tables
describes a datacenter and loads to a DatacenterConfig (a Config per host, the links, the seed).

    config = load("web.toml")          # or loads(text, file=..., base_dir=...), from_dict(data, ...)
    config = default_config(workdir)   # what `hvsim run` uses without a file
    text = dump(config)

Checking happens in two passes: each table on its own (types, ranges, unknown keys), then what
ties tables together (names, switches, addresses, reserves, memory, the timeline). The first
problem found raises ConfigError; nothing is created on disk.
"""
from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import re
from fractions import Fraction
from pathlib import Path
from typing import Any, NoReturn

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, published as tomli
    import tomli as tomllib  # type: ignore[no-redef]

from hypervisor.host import COSTS, SCHEDULERS
from hypervisor.quantities import AmbiguousSizeError, parse_duration, parse_rate, parse_size
from partitions.config_schema import (
    ACTIONS, CHECKPOINT_ACTIONS, DEVICES_WITH_KEYS, DISK_TYPES, GIB, INTEGRATION_SERVICES, MAX_DISKS, MAX_NICS, MIB,
    MIGRATION_ACTIONS, MOVE_KINDS, StopRules,
    MS, SWITCH_TYPES, WORKLOADS, AtConfig, Config, ConfigError, CpuBurnWorkload, CpuConfig, DatacenterConfig,
    DatacenterHostConfig, DeviceConfig, DiskConfig, DiskIoWorkload, HostConfig, LinkConfig, STORAGE_KINDS,
    StorageConfig, StorageLinkConfig,
    IdleWorkload, IntegrationServices, LegacyNicConfig, MemoryCounterWorkload, NetRequestResponseWorkload, NicConfig, PythonWorkload,
    SwitchConfig,
    VmConfig, dump, format_duration, format_size_exact, generated_mac, show,
)

__all__ = ["ConfigError", "Config", "DatacenterConfig", "load", "loads", "from_dict", "default_config", "dump",
           "DEFAULT_TOML"]

_REQUIRED = object()
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
_NAME_EXPECTED = "a name of letters, digits, '_', '.' and '-' (at most 64, not starting with '.' or '-')"
_MAC = re.compile(r"^[0-9A-Fa-f]{2}([:-][0-9A-Fa-f]{2}){5}$")
_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$|\s*\(at end of document\)$")
MAX_HOST_MEMORY = 64 * 1024 * GIB
MAX_DISK_SIZE = 2040 * GIB          # the VHD format's limit (drivers/storage/vhd.py)
IDE_MAX_SIZE = 2**28 * 512          # an emulated IDE disk's limit: 28-bit LBA (partitions/native_guest/ide.py)
MAX_TIME = 2**63 - 1
MAX_SEED = 2**64 - 1
UDP_PAYLOAD_MAX = 1472              # 1500-byte MTU less IPv4 and UDP headers

_KEYS = {
    "": ("host", "vm", "switch", "at"),
    "host": ("logical_processors", "smt", "memory", "scheduler", "seed", "costs"),
    "vm": ("name", "processors", "memory", "cpu", "workload", "disks", "nics", "devices", "integration_services",
           "autostart", "kernel", "ide", "legacy_nic"),
    "legacy_nic": ("switch", "mac"),
    "cpu": ("reserve", "limit", "weight"),
    "disk": ("path", "size", "type", "parent"),
    "nic": ("switch", "vlan", "mac", "ip", "gateway"),
    "switch": ("name", "type"),
    "at": ("time", "action", "vm", "name", "to", "kind"),
    "datacenter file": ("datacenter", "host", "link", "at", "storage"),
    "storage": ("name", "kind", "directory"),
    "datacenter": ("seed", "migration"),
    "migration": ("min_pages", "max_rounds", "max_factor"),
    "datacenter host": ("name", "logical_processors", "smt", "memory", "scheduler", "seed", "costs", "vm",
                        "switch", "remote", "remote_timeout"),
    "link": ("hosts", "bandwidth", "latency"),
}
_BITS = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([kKmMgGtT]?)(?:bit/s|bps)\s*")
MAX_BANDWIDTH = 100 * 10**12       # bits per second
_WORKLOAD_KEYS = {kind: ("kind",) + tuple(f.name for f in dataclasses.fields(cls)) for kind, cls in WORKLOADS.items()}


# ---- entry points --------------------------------------------------------------------------------

def read_text_file(path: str | os.PathLike, what: str = "a readable file") -> str:
    """The UTF-8 text of a file hvsim reads (a host file, the service's users or templates file);
    ConfigError names the file and what was wrong: unreadable (`what` was expected), not a regular
    file, not UTF-8."""
    import stat
    path = Path(path)
    try:
        # O_NONBLOCK so that a FIFO (or a device) named as the file is refused at once instead of
        # waiting for a writer or reading without end.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        try:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                kind = ("a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode)
                        else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket")
                raise ConfigError(str(path), None, "a regular file", kind)
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        with open(fd, "rb") as f:
            return f.read().decode("utf-8")
    except OSError as exc:
        raise ConfigError(str(path), None, what, exc.strerror or type(exc).__name__) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), None, "UTF-8 text", f"byte {exc.object[exc.start]:#04x} at offset {exc.start}") \
            from None


def read_toml_file(path: str | os.PathLike, what: str) -> dict:
    """A TOML file read as read_text_file reads it, parsed; ConfigError when it is not TOML."""
    text = read_text_file(path, what)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), None, "valid TOML", str(exc)) from None


def load(path: str | os.PathLike) -> Config | DatacenterConfig:
    """Load a configuration file; relative disk paths resolve against its directory."""
    path = Path(path)
    text = read_text_file(path)
    config = loads(text, file=str(path), base_dir=path.parent)
    if isinstance(config, DatacenterConfig):   # each host's errors name the file too
        hosts = tuple(dataclasses.replace(h, config=dataclasses.replace(h.config, path=path)) for h in config.hosts)
        return dataclasses.replace(config, hosts=hosts, path=path)
    return dataclasses.replace(config, path=path)


def loads(text: str, *, file: str = "<string>", base_dir: str | os.PathLike | None = None
          ) -> Config | DatacenterConfig:
    """Load configuration text; `file` names it in errors, `base_dir` (default: the current
    directory) is where relative disk paths point."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        m = _TOML_POSITION.search(message)
        line = column = None
        if m and m.group(1):
            line, column = int(m.group(1)), int(m.group(2))
        elif m:
            line, column = text.count("\n") + 1, len(text) - text.rfind("\n")
        reason = message[:m.start()] if m else message
        raise ConfigError(file, None, "valid TOML", reason[:1].lower() + reason[1:], line=line, column=column) \
            from None
    return from_dict(data, file=file, base_dir=base_dir)


def from_dict(data: dict[str, Any], *, file: str = "<dict>", base_dir: str | os.PathLike | None = None
              ) -> Config | DatacenterConfig:
    """Check and convert a parsed TOML document (dicts, lists and TOML scalars)."""
    base = Path(os.path.abspath(base_dir if base_dir is not None else Path.cwd()))
    return _Reader(file, base).config(data)


def command_line_value(option: str, text: str, like: str) -> int:
    """A value given on the command line, checked as the file's key `like` is: "host.seed" (an
    integer; `--seed -5` is refused as `seed = -5` would be) or "at.time" (a duration with a unit).
    Raises ConfigError with file "the command line" and key `option`."""
    r = _Reader("the command line", Path.cwd())
    if like == "host.seed":
        value: Any = int(text) if re.fullmatch(r"\s*[-+]?[0-9]+\s*", text) else text   # as TOML reads 7
        return r.integer({option: value}, "", option, 0, MAX_SEED)
    if like == "at.time":
        if re.fullmatch(r"\s*[0-9]+\s*", text):   # a bare "5" on a command line is seconds as often as ns
            r.fail(option, 'a duration with a unit, such as "1.5s" or "10ms"', show(text), show(f"{text.strip()}s"))
        return r.duration({option: text}, "", option, positive=False)
    raise ValueError(f"no command-line reading for {like!r}")


# ---- the reader ----------------------------------------------------------------------------------

def _path(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def _suggest(word: Any, choices: tuple[str, ...]) -> str | None:
    close = difflib.get_close_matches(str(word), choices, n=1) if isinstance(word, str) else []
    return f'"{close[0]}"' if close else None


def _one_of(choices: tuple[str, ...]) -> str:
    return "one of " + ", ".join(f'"{c}"' for c in choices)


class _Reader:
    def __init__(self, file: str, base: Path) -> None:
        self.file, self.base = file, base
        self._registry = None

    def fail(self, key: str | None, expected: str, got: str, hint: str | None = None) -> NoReturn:
        raise ConfigError(self.file, key, expected, got, hint=hint)

    # -- typed getters: each reads t[name] at key.name, returning `default` when it is absent --
    def table(self, value: Any, key: str, known: tuple[str, ...], what: str = "") -> dict:
        if not isinstance(value, dict):
            self.fail(key or None, "a table", show(value))
        for name in value:
            if name not in known:
                self.fail(_path(key, name), "one of the keys " + ", ".join(known) + (f" (of {what})" if what else ""),
                          "an unknown key", _suggest(name, known))
        return value

    def tables(self, t: dict, key: str, name: str) -> list[tuple[str, Any]]:
        value = t.get(name, [])
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            self.fail(_path(key, name), "an array of tables", show(value))
        return [(f"{_path(key, name)}[{i}]", v) for i, v in enumerate(value)]

    def _get(self, t: dict, key: str, name: str, default: Any, expected: str) -> tuple[Any, bool]:
        """(value, True) when t has `name`; else (default, False), or a failure when required."""
        if name in t:
            return t[name], True
        if default is _REQUIRED:
            self.fail(_path(key, name), expected, "nothing")
        return default, False

    def integer(self, t: dict, key: str, name: str, lo: int, hi: int, default: Any = _REQUIRED) -> int:
        expected = f"an integer from {lo} to {hi}"
        value, given = self._get(t, key, name, default, expected)
        if given and not (isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi):
            self.fail(_path(key, name), expected, show(value))
        return value

    def number(self, t: dict, key: str, name: str, lo: float, hi: float, default: Any = _REQUIRED) -> float:
        expected = f"a number from {lo:g} to {hi:g}"
        value, given = self._get(t, key, name, default, expected)
        if given and not (isinstance(value, (int, float)) and not isinstance(value, bool) and lo <= value <= hi):
            self.fail(_path(key, name), expected, show(value))
        return float(value)

    def boolean(self, t: dict, key: str, name: str, default: Any = _REQUIRED) -> bool:
        value, given = self._get(t, key, name, default, "true or false")
        if given and not isinstance(value, bool):
            self.fail(_path(key, name), "true or false", show(value))
        return value

    def string(self, t: dict, key: str, name: str, default: Any = _REQUIRED, *, choices: tuple[str, ...] = (),
               pattern: re.Pattern | None = None, expected: str = "a string") -> Any:
        expected = _one_of(choices) if choices else expected
        value, given = self._get(t, key, name, default, expected)
        if given and (not isinstance(value, str) or (choices and value not in choices)
                      or (pattern is not None and not pattern.fullmatch(value))):
            self.fail(_path(key, name), expected, show(value), _suggest(value, choices) if choices else None)
        return value

    def size(self, t: dict, key: str, name: str, lo: int, hi: int, multiple: int, example: str,
             default: Any = _REQUIRED) -> Any:
        expected = (f"a size from {format_size_exact(lo)} to {format_size_exact(hi)}"
                    + (f", a multiple of {format_size_exact(multiple)}" if multiple > 1 else "")
                    + f', such as "{example}"')
        value, given = self._get(t, key, name, default, expected)
        if not given:
            return value
        try:
            n = parse_size(value, name) if isinstance(value, (int, str)) else None
        except AmbiguousSizeError as exc:   # "512MB": suggest the readings that fit here
            fits = [text for n, text in ((exc.binary, show(exc.binary_text)), (exc.decimal, str(exc.decimal)))
                    if n is not None and lo <= n <= hi and n % multiple == 0]
            readings = (f"which Hyper-V reads as {exc.binary_text} and others as {exc.decimal} bytes"
                        if exc.binary is not None and exc.decimal is not None else "in a unit read two ways")
            self.fail(_path(key, name), expected, f"{show(value)}, {readings}", " or ".join(fits) or None)
        except ValueError:
            n = None
        if n is None or not lo <= n <= hi or n % multiple:
            self.fail(_path(key, name), expected, show(value))
        return n

    def duration(self, t: dict, key: str, name: str, *, positive: bool, default: Any = _REQUIRED) -> Any:
        expected = f'a {"positive " if positive else ""}duration such as "1.5s", "10ms" or nanoseconds'
        value, given = self._get(t, key, name, default, expected)
        if not given:
            return value
        try:
            n = parse_duration(value, name) if isinstance(value, (int, str)) else None
        except (ValueError, OverflowError):
            n = None
        if n is None or n > MAX_TIME or (positive and n == 0):
            self.fail(_path(key, name), expected, show(value))
        return n

    # -- the document --
    def config(self, data: Any) -> Config | DatacenterConfig:
        if isinstance(data, dict) and isinstance(data.get("host"), list):
            return self.datacenter(data)
        for name in ("link", "datacenter"):
            if isinstance(data, dict) and name in data:
                self.fail(name, "[[host]] tables, each with a name, to be a datacenter file (this file's [host] "
                          "makes it a single-host one)", f"[[{name}]]" if name == "link" else f"[{name}]")
        self.table(data, "", _KEYS[""])
        host = self.host(data.get("host", {}))
        switches = tuple(self.switch(t, key) for key, t in self.tables(data, "", "switch"))
        vm_tables = self.tables(data, "", "vm")
        vms = [self.vm(t, key, host) for key, t in vm_tables]
        timeline = tuple(self.at(t, key) for key, t in self.tables(data, "", "at"))
        for i, at in enumerate(timeline):
            if at.action in MIGRATION_ACTIONS:
                self.fail(f"at[{i}].action", "an action of a single host (move and quick-move take a VM to another "
                          "host: a datacenter file, with [[host]] and [[link]] tables)", show(at.action))
        _Checks(self, host, vms, switches, timeline, [t for _, t in vm_tables]).run()
        return Config(host, tuple(self.assign_macs(vms)), switches, timeline)

    def host(self, value: Any, key: str = "host") -> HostConfig:
        t = self.table(value, key, _KEYS["host"])
        lps = self.integer(t, key, "logical_processors", 1, 1024, 4)
        smt = self.integer(t, key, "smt", 1, 8, 1)
        if lps % smt:
            self.fail(f"{key}.smt", f"a number of threads per core that divides logical_processors ({lps})", show(smt))
        memory = self.size(t, key, "memory", 256 * 1024, MAX_HOST_MEMORY, 4096, "16GiB", 4 * GIB)
        scheduler = self.string(t, key, "scheduler", "classic", choices=tuple(SCHEDULERS))
        seed = self.integer(t, key, "seed", 0, MAX_SEED, None) if "seed" in t else None
        costs = self.table(t.get("costs", {}), f"{key}.costs", tuple(COSTS))
        costs = {name: self.duration(costs, f"{key}.costs", name, positive=True) for name in costs}
        return HostConfig(lps, smt, memory, scheduler, seed, costs)

    def datacenter(self, data: dict) -> DatacenterConfig:
        """A datacenter file: [datacenter], [[host]] tables each with its own [[host.vm]] and
        [[host.switch]] tables, [[link]] tables joining two hosts, and one [[at]] timeline whose
        entries name VMs of any host."""
        for name in ("vm", "switch"):
            if name in data:
                self.fail(name, f"each [[{name}]] under the [[host]] it belongs to, as [[host.{name}]] (this is a "
                          "datacenter file: it has [[host]] tables)", f"a top-level [[{name}]]")
        self.table(data, "", _KEYS["datacenter file"])
        dc = self.table(data.get("datacenter", {}), "datacenter", _KEYS["datacenter"])
        seed = self.integer(dc, "datacenter", "seed", 0, MAX_SEED, None) if "seed" in dc else None
        rules = self.table(dc.get("migration", {}), "datacenter.migration", _KEYS["migration"])
        default = StopRules()
        rules = StopRules(self.integer(rules, "datacenter.migration", "min_pages", 0, 1 << 24, default.min_pages),
                          self.integer(rules, "datacenter.migration", "max_rounds", 1, 1000, default.max_rounds),
                          self.number(rules, "datacenter.migration", "max_factor", 0.001, 1000, default.max_factor))
        read = []   # (key, name, HostConfig, switches, vms, vm tables) per [[host]]
        remotes = {}   # name -> (remote address or None, its timeout or None)
        for key, t in self.tables(data, "", "host"):
            self.table(t, key, _KEYS["datacenter host"])
            name = self.string(t, key, "name", pattern=_NAME, expected=_NAME_EXPECTED)
            host = self.host({k: v for k, v in t.items() if k in _KEYS["host"]}, key)
            switches = tuple(self.switch(s, k) for k, s in self.tables(t, key, "switch"))
            vm_tables = self.tables(t, key, "vm")
            read.append((key, name, host, switches, [self.vm(v, k, host) for k, v in vm_tables],
                         [v for _, v in vm_tables]))
            remotes[name] = self.remote(t, key)
        if not read:
            self.fail("host", "at least one [[host]] table", "none")
        names = tuple(name for _, name, *_ in read)
        _unique(self, [(f"{key}.name", name) for key, name, *_ in read], "a host name")
        _unique(self, [(f"{key}.vm[{j}].name", vm.name) for key, _, _, _, vms, _ in read
                       for j, vm in enumerate(vms)], "a VM name (VM names are the datacenter's)")
        _unique(self, [(f"{key}.vm[{j}].disks[{k}].path", str(d.path)) for key, _, _, _, vms, _ in read
                       for j, vm in enumerate(vms) for k, d in enumerate(vm.disks)], "a disk path")
        storage = tuple(self.storage(t, key) for key, t in self.tables(data, "", "storage"))
        _unique(self, [(f"{key}.name", name) for key, name, *_ in read]
                + [(f"storage[{i}].name", s.name) for i, s in enumerate(storage)], "a name (hosts and storages "
                "share one set of names: a [[link]] names either)")
        links, storage = self.storage_links(data, names, storage)
        self.disks_on_storage(read, storage)
        _unique(self, [(f"link[{i}].hosts", tuple(sorted(link.hosts))) for i, link in enumerate(links)],
                "a pair of hosts (one link joins two hosts)")
        timeline = tuple(self.at(t, key) for key, t in self.tables(data, "", "at"))
        where = {vm.name: name for _, name, _, _, vms, _ in read for vm in vms}
        for i, at in enumerate(timeline):
            if at.vm not in where:
                self.fail(f"at[{i}].vm", "the name of a VM of one of the hosts", show(at.vm),
                          _suggest(at.vm, tuple(where)))
        self.moves(timeline, where, links, names)
        hosts = []
        for key, name, host, switches, vms, vm_tables in read:
            # A host's own timeline: the actions on its VMs; moves are the datacenter's.
            mine = [i for i, at in enumerate(timeline) if where[at.vm] == name and at.action not in MIGRATION_ACTIONS]
            own = tuple(timeline[i] for i in mine)
            _Checks(self, host, vms, switches, own, vm_tables, prefix=f"{key}.", at_keys=[f"at[{i}]" for i in mine]).run()
            hosts.append(DatacenterHostConfig(name, Config(host, tuple(self.assign_macs(vms)), switches, own),
                                              *remotes[name]))
        return DatacenterConfig(tuple(hosts), links, timeline, seed, storage=storage, migration=rules)

    def storage(self, value: dict, key: str) -> StorageConfig:
        """A [[storage]]: name, kind ("iscsi" or "fc") and the directory holding its files,
        relative to the file (as disk paths are; default: its name)."""
        t = self.table(value, key, _KEYS["storage"])
        name = self.string(t, key, "name", pattern=_NAME, expected=_NAME_EXPECTED)
        kind = self.string(t, key, "kind", choices=STORAGE_KINDS)
        directory = self.file_path(t, key, "directory", name)
        if directory.exists() and not directory.is_dir():
            self.fail(f"{key}.directory", "a directory (where the storage's disks and saved states are)",
                      show(t.get("directory", name)))
        return StorageConfig(name, kind, directory)

    def storage_links(self, data: dict, hosts: tuple[str, ...], storage: tuple[StorageConfig, ...]
                      ) -> tuple[tuple[LinkConfig, ...], tuple[StorageConfig, ...]]:
        """The [[link]] tables: those joining two hosts, and each storage with the links that join
        it to a host (hosts = ["host-a", "san"]: one host and one storage, in either order)."""
        names = {s.name for s in storage}
        links, reach = [], {s.name: [] for s in storage}
        for key, t in self.tables(data, "", "link"):
            ends = t.get("hosts") if isinstance(t, dict) else None
            on = [e for e in ends if isinstance(e, str) and e in names] if isinstance(ends, list) else []
            if not on:
                links.append(self.link(t, key, hosts))
                continue
            if len(on) == 2:
                self.fail(f"{key}.hosts", "a host and the storage it reaches (a link joins a storage to a host, "
                          "not to another storage)", show(ends))
            self.table(t, key, _KEYS["link"])
            if len(ends) != 2:
                self.fail(f"{key}.hosts", f'a host and the storage it reaches, such as ["a", "{on[0]}"]', show(ends))
            j = 1 if isinstance(ends[0], str) and ends[0] in names else 0
            host = ends[j]
            if not isinstance(host, str) or host not in hosts:
                self.fail(f"{key}.hosts[{j}]", f'the name of the [[host]] that reaches storage "{on[0]}" '
                          f"({_one_of(hosts)})", show(host), _suggest(host, hosts))
            if any(other.host == host for other in reach[on[0]]):
                self.fail(f"{key}.hosts", f'one link from host "{host}" to storage "{on[0]}"', show(ends))
            reach[on[0]].append(StorageLinkConfig(host, self.bandwidth(t, key, "bandwidth"),
                                                  self.duration(t, key, "latency", positive=True)))
        storage = tuple(dataclasses.replace(s, links=tuple(reach[s.name])) for s in storage)
        for i, a in enumerate(storage):
            for b in storage[i + 1:]:
                if a.directory.is_relative_to(b.directory) or b.directory.is_relative_to(a.directory):
                    self.fail(f"storage[{storage.index(b)}].directory", f'a directory apart from storage "{a.name}"\'s '
                              f"({a.directory})", str(b.directory))
        return tuple(links), storage

    def disks_on_storage(self, read: list, storage: tuple[StorageConfig, ...]) -> None:
        """A VM's disk on a storage is reached from its host over a link to that storage."""
        for key, host, _, _, vms, _ in read:
            for j, vm in enumerate(vms):
                for k, disk in enumerate(vm.disks):
                    on = next((s for s in storage if s.holds(disk.path)), None)
                    if on is not None and not any(link.host == host for link in on.links):
                        self.fail(f"{key}.vm[{j}].disks[{k}].path", f'a disk host "{host}" reaches: it is on storage '
                                  f'"{on.name}", and no [[link]] joins them (hosts = ["{host}", "{on.name}"])',
                                  show(str(disk.path)))

    def moves(self, timeline: tuple[AtConfig, ...], where: dict[str, str], links: tuple[LinkConfig, ...],
              hosts: tuple[str, ...]) -> None:
        """Walk the timeline by time (file order at equal times) as the datacenter will: a move
        goes to another host, a live one ("move") to a host a link joins to the one the VM is on
        then (a quick one crosses shared storage, which quick_move checks); a VM that has moved
        takes no other action afterwards (this version runs the rest of a VM's timeline on the
        host it was configured on)."""
        at_host, moved = dict(where), {}
        joined = {frozenset(link.hosts) for link in links}
        for time, i in sorted((at.time, i) for i, at in enumerate(timeline)):
            at = timeline[i]
            if at.action not in MIGRATION_ACTIONS:
                if at.vm in moved:
                    self.fail(f"at[{i}].action", f'an action on VM "{at.vm}" before it moves to another host (at '
                              f"{moved[at.vm]} it moves: only further moves can follow)", show(at.action))
                continue
            here = at_host[at.vm]
            if at.to == here or at.to not in hosts:
                self.fail(f"at[{i}].to", f'the name of a [[host]] other than "{here}", where VM "{at.vm}" is at '
                          f'{_time(time)}', show(at.to), _suggest(at.to, hosts))
            if at.action == "move" and frozenset((here, at.to)) not in joined:   # quick-move: through storage
                self.fail(f"at[{i}].to", f'a host a [[link]] joins to "{here}", where VM "{at.vm}" is at {_time(time)}',
                          show(at.to))
            at_host[at.vm] = at.to
            moved[at.vm] = f"at[{i}]"

    def remote(self, t: dict, key: str) -> tuple[str | None, int | None]:
        """A [[host]]'s `remote` ("HOST:PORT" of `hvsim host serve`) and `remote_timeout`."""
        from partitions.datacenter.wire import parse_address
        expected = 'the address of `hvsim host serve` as "HOST:PORT", such as "127.0.0.1:7000"'
        address, given = self._get(t, key, "remote", None, expected)
        if given:
            try:
                ok = isinstance(address, str) and parse_address(address)[1] != 0
            except ValueError:
                ok = False
            if not ok:
                self.fail(f"{key}.remote", expected, show(address))
        elif "remote_timeout" in t:
            self.fail(f"{key}.remote_timeout", "no timeout for a host in this process (only with remote)",
                      show(t["remote_timeout"]))
        timeout = self.duration(t, key, "remote_timeout", positive=True, default=None)
        return address, timeout

    def link(self, value: dict, key: str, hosts: tuple[str, ...]) -> LinkConfig:
        t = self.table(value, key, _KEYS["link"])
        expected = 'the names of the two hosts it joins, such as ["a", "b"]'
        ends, _ = self._get(t, key, "hosts", _REQUIRED, expected)
        if not (isinstance(ends, list) and len(ends) == 2 and all(isinstance(h, str) for h in ends)):
            self.fail(f"{key}.hosts", expected, show(ends))
        for j, name in enumerate(ends):
            if name not in hosts:
                self.fail(f"{key}.hosts[{j}]", f"the name of a [[host]] ({_one_of(hosts)})", show(name),
                          _suggest(name, hosts))
        if ends[0] == ends[1]:
            self.fail(f"{key}.hosts", "two different hosts (a link joins a host to another one)", show(ends))
        return LinkConfig((ends[0], ends[1]), self.bandwidth(t, key, "bandwidth"),
                          self.duration(t, key, "latency", positive=True))

    def bandwidth(self, t: dict, key: str, name: str) -> int:
        """Bits per second: "10Gbit/s", "100Mbit/s", "1Gbps" (SI prefixes, as links are quoted), or a
        byte rate as hypervisor.quantities.parse_rate reads it ("1.25GB/s"). A bare number is
        refused: bits or bytes is the first thing a reader of a link would ask."""
        expected = (f'a bandwidth with a unit from 1kbit/s to 100Tbit/s, such as "10Gbit/s", "100Mbit/s" or '
                    f'"1.25GB/s"')
        value, _ = self._get(t, key, name, _REQUIRED, expected)
        bits = None
        if isinstance(value, str):
            m = _BITS.fullmatch(value)
            try:
                if m:
                    n = Fraction(m.group(1)) * 1000 ** " kmgt".index(m.group(2).lower() or " ")
                    bits = int(n) if n.denominator == 1 else None
                elif value.strip().endswith("B/s"):
                    bits = 8 * parse_rate(value, name)
            except ValueError:
                bits = None
        if bits is None or not 1000 <= bits <= MAX_BANDWIDTH:
            self.fail(_path(key, name), expected, show(value))
        return bits

    def vm(self, value: dict, key: str, host: HostConfig) -> VmConfig:
        t = self.table(value, key, _KEYS["vm"])
        name = self.string(t, key, "name", pattern=_NAME, expected=_NAME_EXPECTED)
        processors = self.integer(t, key, "processors", 1, min(host.logical_processors, 64), 1)
        memory = self.size(t, key, "memory", 4096, MAX_HOST_MEMORY, 4096, "2GiB", 512 * MIB)
        cpu = self.table(t.get("cpu", {}), f"{key}.cpu", _KEYS["cpu"])
        reserve = self.integer(cpu, f"{key}.cpu", "reserve", 0, 100, 0)
        limit = self.integer(cpu, f"{key}.cpu", "limit", 1, 100, 100)
        if reserve > limit:   # as Hyper-V: a VP cannot be guaranteed more than it may use
            self.fail(f"{key}.cpu.reserve", f"a reserve no higher than the limit ({limit})", show(reserve))
        weight = self.integer(cpu, f"{key}.cpu", "weight", 1, 10000, 100)
        ics = self.table(t.get("integration_services", {}), f"{key}.integration_services", INTEGRATION_SERVICES)
        ics = IntegrationServices(**{s: self.boolean(ics, f"{key}.integration_services", s, True) for s in ics})
        disks, nics = self.tables(t, key, "disks"), self.tables(t, key, "nics")
        if len(disks) > MAX_DISKS:
            self.fail(f"{key}.disks", f"at most {MAX_DISKS} disks (the LUNs of the VM's SCSI controller, as on "
                      "Hyper-V)", f"{len(disks)} disks")
        if len(nics) > MAX_NICS:
            self.fail(f"{key}.nics", f"at most {MAX_NICS} network adapters (Hyper-V's synthetic adapters per VM)",
                      f"{len(nics)} adapters")
        return VmConfig(name, processors, memory, CpuConfig(reserve, limit, weight),
                        tuple(self.disk(d, k) for k, d in disks), tuple(self.nic(n, k) for k, n in nics),
                        ics, self.workloads(t, key), self.boolean(t, key, "autostart", True),
                        tuple(self.device(d, k) for k, d in self.tables(t, key, "devices")),
                        self.kernel(t, key, memory), self.ide(t, key), self.legacy_nic(t, key))

    def ide(self, t: dict, key: str) -> DiskConfig | None:
        """The emulated IDE disk: a VHD file's path (the file must exist), or a table with a
        disk's keys (path, size, type, parent: made if missing, as disks are)."""
        value = t.get("ide")
        if value is None:
            return None
        if isinstance(value, str):
            path = self.file_path(t, key, "ide")
            if not path.exists():
                self.fail(_path(key, "ide"), "an existing VHD file (or a table with a size to make one: "
                          '{ path = "legacy.vhd", size = "64MiB" })', show(value))
            return DiskConfig(path)
        if not isinstance(value, dict):
            self.fail(_path(key, "ide"), 'a VHD file\'s path, or a table such as { path = "legacy.vhd", size = "64MiB" }',
                      show(value))
        disk = self.disk(value, _path(key, "ide"))
        if disk.size is not None and disk.size > IDE_MAX_SIZE:
            self.fail(f"{_path(key, 'ide')}.size", f"at most {format_size_exact(IDE_MAX_SIZE)} (28-bit LBA)",
                      show(value["size"]))
        return disk

    def legacy_nic(self, t: dict, key: str) -> LegacyNicConfig | None:
        """The emulated legacy network adapter: `switch` (a [[switch]]) and an optional `mac`
        (generated from the VM's name when left out, as adapters' are)."""
        if t.get("legacy_nic") is None:
            return None
        where = _path(key, "legacy_nic")
        n = self.table(t["legacy_nic"], where, _KEYS["legacy_nic"])
        switch = self.string(n, where, "switch", expected="the name of a [[switch]]")
        mac = self.string(n, where, "mac", None, pattern=_MAC, expected='a MAC address such as "00:15:5d:00:10:02"')
        if mac is not None:
            raw = bytes.fromhex(mac.replace("-", "").replace(":", ""))
            if raw[0] & 1 or not any(raw):
                self.fail(f"{where}.mac", "a unicast MAC address (first byte even, not all zero)", show(mac))
            mac = ":".join(f"{b:02x}" for b in raw)
        return LegacyNicConfig(switch, mac)   # mac None until assign_macs

    def kernel(self, t: dict, key: str, memory: int) -> Path | None:
        """A native guest's kernel: an x86-64 ELF file (relative to the configuration file) whose
        segments fit the VM's memory; checked now, so a run never starts with a bad image."""
        path = self.file_path(t, key, "kernel", None)
        if path is None:
            return None
        if not path.is_file():
            self.fail(_path(key, "kernel"), "an x86-64 ELF kernel file that exists", show(t["kernel"]))
        from partitions.native_guest.loader import ElfLoadError, load_elf
        try:
            load_elf(path, memory)
        except ElfLoadError as exc:
            self.fail(_path(key, "kernel"), "an x86-64 ELF kernel (ELF64, EM_X86_64, ET_EXEC) that fits the VM's "
                      "memory", f"{show(t['kernel'])}, which {exc.why}")
        return path

    def registry(self):
        """The installed drivers (loaded once per file, and only for a file that names one)."""
        if self._registry is None:
            from drivers.registry import discover
            self._registry = discover()
        return self._registry

    def device(self, t: dict, key: str) -> DeviceConfig:
        from drivers.device import DeviceConfigError
        kind = self.string(t, key, "type", expected='the name of an installed device, such as "echo"')
        if kind in DEVICES_WITH_KEYS:
            self.fail(f"{key}.type", f'a device without a key of its own ("{kind}" is configured with '
                      f"{DEVICES_WITH_KEYS[kind]})", show(kind))
        registry = self.registry()
        device = registry.devices.get(kind)
        if device is None:
            error = registry.failed(kind)
            if error is not None:
                self.fail(f"{key}.type", "an installed device that loads", f"{show(kind)}, which failed to load "
                          f"({error.distribution}): {error.message}")
            choices = tuple(sorted(n for n in registry.devices if n not in DEVICES_WITH_KEYS))
            self.fail(f"{key}.type", f"an installed device ({', '.join(choices) or 'none is'}; see `hvsim drivers`)",
                      show(kind), _suggest(kind, choices))
        settings = {name: value for name, value in t.items() if name != "type"}
        try:
            device.validate_config(settings)
        except DeviceConfigError as exc:
            where = f"{key}.{exc.key}" if exc.key else key
            got = exc.got or (show(settings[exc.key]) if exc.key in settings else
                              "nothing" if exc.key else show(settings))
            self.fail(where, f'{exc.expected} (device "{kind}")', got, f'"{exc.hint}"' if exc.hint else None)
        except ValueError as exc:
            self.fail(key, f'settings device "{kind}" accepts: {exc}', show(settings))
        except Exception as exc:  # noqa: BLE001 - a plugin's check that breaks is the plugin's error, named
            self.fail(key, f'settings device "{kind}" can check', f"{show(settings)}, on which its validate_config "
                      f"failed: {type(exc).__name__}: {exc}")
        return DeviceConfig(kind, settings)

    def file_path(self, t: dict, key: str, name: str, default: Any = _REQUIRED) -> Path | None:
        value = self.string(t, key, name, default, expected="a file path")
        if value is None:
            return None
        if not value or "\0" in value:
            self.fail(_path(key, name), "a file path", show(value))
        return Path(os.path.abspath(self.base / value))

    def disk(self, value: dict, key: str) -> DiskConfig:
        t = self.table(value, key, _KEYS["disk"])
        path = self.file_path(t, key, "path")
        kind = self.string(t, key, "type", "dynamic", choices=DISK_TYPES)
        parent = self.file_path(t, key, "parent", None)
        if (parent is None) != (kind != "differencing"):
            self.fail(f"{key}.parent", "a parent for, and only for, a differencing disk",
                      "nothing" if parent is None else show(t["parent"]))
        size = self.size(t, key, "size", 512, MAX_DISK_SIZE, 512, "4GiB", None)
        if size is not None and kind == "differencing":
            self.fail(f"{key}.size", "no size for a differencing disk (it takes its parent's)", show(t["size"]))
        if size is None and kind != "differencing" and not os.path.exists(path):
            self.fail(f"{key}.size", f"a size, since {path} does not exist yet", "nothing")
        return DiskConfig(path, size, kind, parent)

    def nic(self, value: dict, key: str) -> NicConfig:
        t = self.table(value, key, _KEYS["nic"])
        switch = self.string(t, key, "switch", expected="the name of a [[switch]]")
        vlan = self.integer(t, key, "vlan", 0, 4094, 0)
        mac = self.string(t, key, "mac", None, pattern=_MAC, expected='a MAC address such as "00:15:5d:00:10:02"')
        if mac is not None:
            raw = bytes.fromhex(mac.replace("-", "").replace(":", ""))
            if raw[0] & 1 or not any(raw):
                self.fail(f"{key}.mac", "a unicast MAC address (first byte even, not all zero)", show(mac))
            mac = ":".join(f"{b:02x}" for b in raw)
        ip_expected = 'an IPv4 address with a prefix length, such as "10.0.10.2/24"'
        ip = self.string(t, key, "ip", None, expected=ip_expected)
        gateway = self.string(t, key, "gateway", None, expected="an IPv4 address in the adapter's network")
        interface = None
        if ip is not None:
            try:
                interface = ipaddress.IPv4Interface(ip) if "/" in ip else None
            except ValueError:
                pass
            if interface is None:
                self.fail(f"{key}.ip", ip_expected, show(ip))
            net = interface.network
            if net.prefixlen < 31 and interface.ip in (net.network_address, net.broadcast_address):
                self.fail(f"{key}.ip", f"a host address of {net}, not its network or broadcast address", show(ip))
            ip = interface.with_prefixlen
        if gateway is not None:
            try:
                gw = ipaddress.IPv4Address(gateway)
            except ValueError:
                gw = None
            if interface is None or gw is None or gw not in interface.network or gw == interface.ip:
                where = f"another address in {interface.network}" if interface else "an ip for the adapter first"
                self.fail(f"{key}.gateway", f"an IPv4 address: {where}", show(gateway))
            gateway = str(gw)
        return NicConfig(switch, mac, vlan, ip, gateway)   # mac None until assign_macs

    def workloads(self, t: dict, key: str) -> tuple:
        value, key = t.get("workload"), f"{key}.workload"
        if value is None:
            return ()
        if isinstance(value, dict):
            return (self.workload(value, key),)
        if isinstance(value, list) and all(isinstance(v, dict) for v in value):
            return tuple(self.workload(v, f"{key}[{i}]") for i, v in enumerate(value))
        self.fail(key, 'a table such as { kind = "cpu-burn", duty = 0.6 }, or an array of them', show(value))

    def workload(self, t: dict, key: str):
        kind = self.string(t, key, "kind", choices=tuple(WORKLOADS))
        self.table(t, key, _WORKLOAD_KEYS[kind], f"a {kind} workload")
        if kind == "idle":
            return IdleWorkload()
        if kind == "cpu-burn":
            return CpuBurnWorkload(self.number(t, key, "duty", 0, 1, 1.0),
                                   self.duration(t, key, "period", positive=True, default=10 * MS))
        if kind == "disk-io":
            return DiskIoWorkload(self.string(t, key, "pattern", "random", choices=("sequential", "random")),
                                  self.size(t, key, "block_size", 512, 2 * MIB, 512, "64KiB", 4096),
                                  self.integer(t, key, "queue_depth", 1, 256, 4),
                                  self.number(t, key, "read_fraction", 0, 1, 0.7),
                                  self.integer(t, key, "disk", 0, 255, 0))
        if kind == "net-request-response":
            return NetRequestResponseWorkload(self.string(t, key, "peer", expected="the name of another VM"),
                                              self.integer(t, key, "port", 1, 65535, 5000),
                                              self.integer(t, key, "size", 1, UDP_PAYLOAD_MAX, 64),
                                              self.duration(t, key, "interval", positive=True, default=10 * MS))
        if kind == "memory-counter":
            return MemoryCounterWorkload(self.integer(t, key, "pages", 1, 65536, 64),
                                         self.duration(t, key, "interval", positive=True, default=MS),
                                         self.duration(t, key, "page_work", positive=False, default=1_000))
        target = self.string(t, key, "target", expected='an import path such as "package.module:function"')
        module, _, function = target.partition(":")
        if not all(part.isidentifier() for part in module.split(".") + function.split(".")):
            self.fail(f"{key}.target", 'an import path such as "package.module:function"', show(target))
        args = t.get("args", {})
        if not isinstance(args, dict):
            self.fail(f"{key}.args", "a table of keyword arguments", show(args))
        return PythonWorkload(target, args)

    def switch(self, value: dict, key: str) -> SwitchConfig:
        t = self.table(value, key, _KEYS["switch"])
        return SwitchConfig(self.string(t, key, "name", pattern=_NAME, expected=_NAME_EXPECTED),
                            self.string(t, key, "type", "private", choices=SWITCH_TYPES))

    def at(self, value: dict, key: str) -> AtConfig:
        t = self.table(value, key, _KEYS["at"])
        time = self.duration(t, key, "time", positive=False)
        action = self.string(t, key, "action", choices=ACTIONS + MIGRATION_ACTIONS)
        vm = self.string(t, key, "vm", expected="the name of a [[vm]]")
        name = self.string(t, key, "name", None, expected="a checkpoint name")
        if name is not None and (action not in CHECKPOINT_ACTIONS or not 1 <= len(name) <= 100):
            self.fail(f"{key}.name", "a name of 1 to 100 characters, on a checkpoint action only", show(name))
        if name is None and action in CHECKPOINT_ACTIONS[1:]:
            self.fail(f"{key}.name", f"the name of the checkpoint to {action.partition('-')[0]}", "nothing")
        to = self.string(t, key, "to", None, expected="the name of the [[host]] the VM moves to")
        if (to is None) == (action in MIGRATION_ACTIONS):
            self.fail(f"{key}.to", "the host a VM moves to, on a move or quick-move action only",
                      "nothing" if to is None else show(to))
        kind = self.string(t, key, "kind", None, choices=MOVE_KINDS)
        if kind is not None and action != "move":
            self.fail(f"{key}.kind", 'a kind of live migration, on a "move" action only', show(kind))
        return AtConfig(time, action, vm, name, to, kind)

    def assign_macs(self, vms: list[VmConfig]) -> list[VmConfig]:
        """Give adapters without a MAC one generated from the VM name and index, skipping any MAC
        already taken on the host (given ones, and those generated for earlier adapters)."""
        taken = {nic.mac for vm in vms for nic in (*vm.nics, vm.legacy_nic) if nic is not None and nic.mac is not None}
        out = []
        for vm in vms:
            legacy = vm.legacy_nic
            attempt = 0
            while legacy is not None and legacy.mac is None:
                mac = generated_mac(vm.name, "legacy", attempt)   # apart from the synthetic adapters' indexes
                if mac not in taken:
                    taken.add(mac)
                    legacy = dataclasses.replace(legacy, mac=mac)
                attempt += 1
            vm = dataclasses.replace(vm, legacy_nic=legacy)
            nics = []
            for i, nic in enumerate(vm.nics):
                attempt = 0
                while nic.mac is None:
                    mac = generated_mac(vm.name, i, attempt)
                    if mac not in taken:
                        taken.add(mac)
                        nic = dataclasses.replace(nic, mac=mac)
                    attempt += 1
                nics.append(nic)
            out.append(dataclasses.replace(vm, nics=tuple(nics)))
        return out


def _unique(r: _Reader, items: list[tuple[str, Any]], what: str) -> None:
    """Refuse the second of two equal values: items are (key, value) in file order."""
    seen: dict[Any, str] = {}
    for key, value in items:
        if value in seen:
            r.fail(key, f"{what} used once", f"{show(value)} (also at {seen[value]})")
        seen[value] = key


class _Checks:
    """What ties the tables together; each finding names the key that should change."""

    def __init__(self, r: _Reader, host: HostConfig, vms: list[VmConfig], switches: tuple[SwitchConfig, ...],
                 timeline: tuple[AtConfig, ...], vm_tables: list[dict], *, prefix: str = "",
                 at_keys: list[str] | None = None) -> None:
        self.r, self.host, self.vms, self.switches, self.timeline = r, host, vms, switches, timeline
        self.vm_tables = vm_tables
        # In a datacenter file the host's tables are host[i].vm[j] and host[i].switch[j], and its
        # timeline is the [[at]] entries naming its VMs: at_keys[k] is the key of its k-th one.
        self.p = prefix
        self._at_keys = at_keys

    def at_key(self, i: int) -> str:
        return self._at_keys[i] if self._at_keys is not None else f"at[{i}]"

    def run(self) -> None:
        self.unique([(f"{self.p}switch[{i}].name", s.name) for i, s in enumerate(self.switches)], "a switch name")
        self.unique([(f"{self.p}vm[{i}].name", v.name) for i, v in enumerate(self.vms)], "a VM name")
        self.unique([(f"{self.p}vm[{i}].disks[{j}].path", str(d.path)) for i, v in enumerate(self.vms)
                     for j, d in enumerate(v.disks)]
                    + [(f"{self.p}vm[{i}].ide" + (".path" if isinstance(self.vm_tables[i].get("ide"), dict) else ""),
                        str(v.ide.path)) for i, v in enumerate(self.vms) if v.ide is not None], "a disk path")
        self.network()
        self.disks()
        self.workloads()
        self.capacity()
        self.timeline_entries()

    def unique(self, items: list[tuple[str, Any]], what: str) -> None:
        _unique(self.r, items, what)

    def network(self) -> None:
        names = tuple(s.name for s in self.switches)
        macs: dict[tuple[str, str], str] = {}
        ips: dict[tuple[str, int, Any], str] = {}
        for i, vm in enumerate(self.vms):
            for j, nic in enumerate(vm.nics):
                key = f"{self.p}vm[{i}].nics[{j}]"
                if nic.switch not in names:
                    self.r.fail(f"{key}.switch", "the name of a [[switch]]" + (f" ({_one_of(names)})" if names else
                                " (this file has none)"), show(nic.switch), _suggest(nic.switch, names))
                if nic.mac is not None:
                    if (nic.switch, nic.mac) in macs:
                        self.r.fail(f"{key}.mac", f'a MAC unique on switch "{nic.switch}"',
                                    f"{show(nic.mac)} (also at {macs[nic.switch, nic.mac]})")
                    macs[nic.switch, nic.mac] = f"{key}.mac"
                if nic.ip is not None:
                    where = (nic.switch, nic.vlan, ipaddress.IPv4Interface(nic.ip).ip)
                    if where in ips:
                        self.r.fail(f"{key}.ip", f'an address unique on switch "{nic.switch}" VLAN {nic.vlan}',
                                    f"{show(nic.ip)} (also at {ips[where]})")
                    ips[where] = f"{key}.ip"
            legacy = vm.legacy_nic
            if legacy is not None:
                key = f"{self.p}vm[{i}].legacy_nic"
                if legacy.switch not in names:
                    self.r.fail(f"{key}.switch", "the name of a [[switch]]" + (f" ({_one_of(names)})" if names else
                                " (this file has none)"), show(legacy.switch), _suggest(legacy.switch, names))
                if legacy.mac is not None:
                    if (legacy.switch, legacy.mac) in macs:
                        self.r.fail(f"{key}.mac", f'a MAC unique on switch "{legacy.switch}"',
                                    f"{show(legacy.mac)} (also at {macs[legacy.switch, legacy.mac]})")
                    macs[legacy.switch, legacy.mac] = f"{key}.mac"

    def disks(self) -> None:
        paths = {d.path for vm in self.vms for d in vm.disks}
        for i, vm in enumerate(self.vms):
            for j, d in enumerate(vm.disks):
                if (d.parent is not None and d.parent not in paths and not os.path.exists(d.parent)
                        and not os.path.exists(d.path)):
                    self.r.fail(f"{self.p}vm[{i}].disks[{j}].parent", "an existing VHD or another disk of this file",
                                show(self.vm_tables[i]["disks"][j]["parent"]))

    def workloads(self) -> None:
        names = tuple(vm.name for vm in self.vms)
        for i, vm in enumerate(self.vms):
            single = isinstance(self.vm_tables[i].get("workload"), dict)
            for j, w in enumerate(vm.workloads):
                key = f"{self.p}vm[{i}].workload" + ("" if single else f"[{j}]")
                if isinstance(w, DiskIoWorkload) and w.disk >= len(vm.disks):
                    self.r.fail(f"{key}.disk", f"the index of one of the VM's {len(vm.disks)} disks", show(w.disk))
                if isinstance(w, NetRequestResponseWorkload):
                    others = tuple(n for n in names if n != vm.name)
                    if w.peer not in others:
                        self.r.fail(f"{key}.peer", "the name of another VM", show(w.peer), _suggest(w.peer, others))
                    peer = next(v for v in self.vms if v.name == w.peer)
                    ours = {(n.switch, n.vlan) for n in vm.nics if n.ip}
                    if not any((n.switch, n.vlan) in ours for n in peer.nics if n.ip):
                        self.r.fail(f"{key}.peer", "a VM with an address on a switch and VLAN where this VM has one",
                                    show(w.peer))

    def capacity(self) -> None:
        lps, reserved, memory = self.host.logical_processors, 0, 0
        for i, vm in enumerate(self.vms):
            reserved += vm.cpu.reserve * vm.processors
            if reserved > 100 * lps:
                self.r.fail(f"{self.p}vm[{i}].cpu.reserve",
                            f"reserves the host's {lps} logical processors can admit (sum of reserve x processors "
                            f"at most {100 * lps})", f"{vm.cpu.reserve} (the sum reaches {reserved} here)")
            memory += vm.memory
            if memory > self.host.memory:
                self.r.fail(f"{self.p}vm[{i}].memory", f"VM memory that fits in the host's {format_size_exact(self.host.memory)}",
                            f"{show(format_size_exact(vm.memory))} (the VMs reach {format_size_exact(memory)} here)")

    def timeline_entries(self) -> None:
        vms = {vm.name: vm for vm in self.vms}
        for i, at in enumerate(self.timeline):
            if at.vm not in vms:
                self.r.fail(f"{self.at_key(i)}.vm", "the name of a [[vm]]", show(at.vm), _suggest(at.vm, tuple(vms)))
            if at.action == "stop" and not vms[at.vm].integration_services.shutdown:
                self.r.fail(f"{self.at_key(i)}.action", f'an action VM "{at.vm}" can take (a graceful stop needs its '
                            'shutdown integration service; "turn-off" does not)', show(at.action))
            if at.action in CHECKPOINT_ACTIONS and not vms[at.vm].disks:
                self.r.fail(f"{self.at_key(i)}.action", f'an action VM "{at.vm}" can take: it has no disk, and checkpoints '
                            "are of a VM's disks", show(at.action))
        for vm in self.vms:
            self.lifecycle(vm, sorted((at.time, i) for i, at in enumerate(self.timeline) if at.vm == vm.name))

    def lifecycle(self, vm: VmConfig, entries: list[tuple[int, int]]) -> None:
        """Walk one VM's timeline as the runner will (by time, file order at equal times) and
        refuse an action that no state the VM can be in at that moment allows, and a checkpoint
        name that is taken, or not there to apply or delete."""
        states = {"Running"} if vm.autostart else {"Off"}
        since = "since it starts with the host" if vm.autostart else "since autostart is false"
        checkpoints: dict[str, int] = {}   # name -> the [[at]] that took it
        for time, i in entries:
            at = self.timeline[i]
            allowed, after = LIFECYCLE[at.action]
            if not states & set(allowed):
                now = " or ".join(sorted(states, key=_STATE_ORDER.index))
                needs = " or ".join(allowed) + (f" ({_FIRST[at.action]} first)" if at.action in _FIRST else "")
                self.r.fail(f"{self.at_key(i)}.action", f'an action VM "{vm.name}" can take at {_time(time)}, when it is '
                            f"{now} ({since}): {at.action} needs it {needs}", show(at.action))
            if after is not None:
                states = set(after)
                since = f"since {self.at_key(i)} {at.action}"
            else:
                states &= set(allowed)
            if at.action == "checkpoint":
                name = at.name or f"checkpoint-{time // 1_000_000}ms"   # the name the runner gives it
                if name in checkpoints:
                    self.r.fail(f"{self.at_key(i)}.name", f'a checkpoint name VM "{vm.name}" does not have yet',
                                f"{show(name)} (taken by {self.at_key(checkpoints[name])})")
                checkpoints[name] = i
            elif at.action in CHECKPOINT_ACTIONS and at.name not in checkpoints:
                have = ", ".join(show(n) for n in checkpoints) if checkpoints else "none"
                self.r.fail(f"{self.at_key(i)}.name", f'the name of a checkpoint VM "{vm.name}" has at {_time(time)}, taken '
                            f"by an earlier checkpoint action (it has {have})", show(at.name),
                            _suggest(at.name, tuple(checkpoints)))
            elif at.action == "delete-checkpoint":
                del checkpoints[at.name]


# The VM lifecycle as partitions/vm.py carries it out, for reading a timeline ahead of the run:
# for each [[at]] action, the states it is allowed from and the states it can leave the VM in
# (None: the state it found). A graceful stop leaves the VM Stopping until its guest has shut down,
# and when that happens is not known before the run: then it may be either.
LIFECYCLE: dict[str, tuple[tuple[str, ...], tuple[str, ...] | None]] = {
    "start": (("Off",), ("Running",)),
    "stop": (("Running",), ("Stopping", "Off")),
    "turn-off": (("Running", "Paused", "Stopping", "Saved"), ("Off",)),
    "pause": (("Running",), ("Paused",)),
    "resume": (("Paused",), ("Running",)),
    "quick-reset": (("Running", "Paused"), ("Running",)),
    "save": (("Running", "Paused"), ("Saved",)),
    "restore": (("Saved",), ("Running",)),
    "checkpoint": (("Running", "Paused", "Off"), None),
    "apply-checkpoint": (("Off",), None),
    "delete-checkpoint": (("Running", "Paused", "Off"), None),
}
_STATE_ORDER = ("Off", "Running", "Paused", "Saved", "Stopping")
# What a timeline must do before an action that only one other action makes possible.
_FIRST = {"resume": "a pause", "restore": "a save", "start": "a turn-off or stop",
          "apply-checkpoint": "a turn-off or stop"}


def _time(ns: int) -> str:
    text = format_duration(ns)
    return text if isinstance(text, str) else f"{text}ns"


# ---- the default host ----------------------------------------------------------------------------

def default_config(workdir: str | os.PathLike = ".") -> Config:
    """The host `hvsim run` boots without a file (the same as DEFAULT_TOML): three VMs on two LPs
    that show CPU contention (six VPs, a weight, a reserve and a limit), disk I/O, network
    request/response traffic, heartbeats, a checkpoint and a pause. Disks live in `workdir`."""
    base = Path(os.path.abspath(workdir))
    lan = dict(switch="lan", vlan=10)
    web = VmConfig(
        "web", processors=2, memory=512 * MIB, cpu=CpuConfig(weight=200),
        disks=(DiskConfig(base / "web.vhd", 64 * MIB, "dynamic"),),
        nics=(NicConfig(mac=generated_mac("web", 0), ip="10.0.10.2/24", **lan),),
        workloads=(CpuBurnWorkload(duty=0.6, period=10 * MS),
                   NetRequestResponseWorkload(peer="db", port=5000, size=256, interval=5 * MS)))
    db = VmConfig(
        "db", processors=2, memory=512 * MIB, cpu=CpuConfig(reserve=20, weight=100),
        disks=(DiskConfig(base / "db.vhd", 256 * MIB, "dynamic"),),
        nics=(NicConfig(mac=generated_mac("db", 0), ip="10.0.10.3/24", **lan),),
        workloads=(DiskIoWorkload(pattern="random", block_size=4096, queue_depth=4, read_fraction=0.7),))
    batch = VmConfig("batch", processors=2, memory=256 * MIB, cpu=CpuConfig(limit=50),
                     workloads=(CpuBurnWorkload(duty=1.0),))
    return Config(HostConfig(logical_processors=2, smt=2, memory=8 * GIB, scheduler="classic"),
                  (web, db, batch), (SwitchConfig("lan", "private"),),
                  (AtConfig(2000 * MS, "checkpoint", "db", "before-pause"), AtConfig(3000 * MS, "pause", "batch"),
                   AtConfig(3500 * MS, "resume", "batch")))


#: default_config() as a file (examples/default-host.toml holds the same text).
DEFAULT_TOML = """\
# The built-in default host of `hvsim run`: three VMs on two logical processors.
# web and batch burn CPU on four VPs between them (contention, weight, limit), db keeps its disk
# busy under a CPU reserve, web sends requests to db over the "lan" switch, every VM runs the
# heartbeat service, db takes a checkpoint at 2 s and batch is paused from 3 s to 3.5 s.

[host]
logical_processors = 2
smt = 2
memory = "8GiB"
scheduler = "classic"

[[vm]]
name = "web"
processors = 2
memory = "512MiB"
cpu = { weight = 200 }
workload = [
  { kind = "cpu-burn", duty = 0.6, period = "10ms" },
  { kind = "net-request-response", peer = "db", port = 5000, size = 256, interval = "5ms" },
]
disks = [ { path = "web.vhd", size = "64MiB", type = "dynamic" } ]
nics = [ { switch = "lan", vlan = 10, ip = "10.0.10.2/24" } ]

[[vm]]
name = "db"
processors = 2
memory = "512MiB"
cpu = { reserve = 20, weight = 100 }
workload = { kind = "disk-io", pattern = "random", block_size = "4KiB", queue_depth = 4, read_fraction = 0.7 }
disks = [ { path = "db.vhd", size = "256MiB", type = "dynamic" } ]
nics = [ { switch = "lan", vlan = 10, ip = "10.0.10.3/24" } ]

[[vm]]
name = "batch"
processors = 2
memory = "256MiB"
cpu = { limit = 50 }
workload = { kind = "cpu-burn", duty = 1.0 }

[[switch]]
name = "lan"
type = "private"

[[at]]
time = "2s"
action = "checkpoint"
vm = "db"
name = "before-pause"

[[at]]
time = "3s"
action = "pause"
vm = "batch"

[[at]]
time = "3.5s"
action = "resume"
vm = "batch"
"""
