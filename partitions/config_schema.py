"""The host configuration as plain frozen data: what `partitions.config` loads from TOML, builds as
the default host and writes back.

Values are already parsed: sizes in bytes, durations and times in simulated ns, disk paths
absolute, every network adapter with its MAC. Mappings (`HostConfig.costs`, `PythonWorkload.args`,
`DeviceConfig.settings`) are read-only views and take no part in hashing. docs/configuration.md is the reference for the
keys users type; the field names here are the same. At the end: how values are written as TOML
(tomllib only reads), shared by `dump` and by error messages.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import os
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, Mapping, Union

from hypervisor.quantities import parse_duration

MIB, GIB = 1024**2, 1024**3
MS = 1_000_000

SWITCH_TYPES = ("private", "internal", "external")
DISK_TYPES = ("fixed", "dynamic", "differencing")
ACTIONS = ("start", "stop", "turn-off", "pause", "resume", "save", "restore", "checkpoint",
           "apply-checkpoint", "delete-checkpoint", "quick-reset")
#: Actions that move a VM to another host of a datacenter (`to`; `kind` for "move" only).
MIGRATION_ACTIONS = ("move", "quick-move")
MOVE_KINDS = ("live", "post-copy")
#: Actions that name a checkpoint: optional for "checkpoint", required for the other two.
CHECKPOINT_ACTIONS = ("checkpoint", "apply-checkpoint", "delete-checkpoint")
INTEGRATION_SERVICES = ("heartbeat", "shutdown", "timesync", "kvp", "vss")
#: Hyper-V's limits per VM: disks on its (one) SCSI controller, each a LUN; synthetic network adapters.
MAX_DISKS = 64
MAX_NICS = 8
#: Built-in devices that have keys of their own, so `devices` does not take them.
DEVICES_WITH_KEYS = {"storage": "disks", "network": "nics",
                     **{name: f"integration_services.{name}" for name in INTEGRATION_SERVICES}}
#: Hyper-V's organizationally unique identifier: the first three bytes of every MAC it assigns.
MAC_PREFIX = bytes.fromhex("00155d")


class ConfigError(ValueError):
    """A configuration that cannot be used: which file, which key (a dotted path such as
    `vm[1].cpu.weight`, None for the whole file), what was expected and what was found.

    `str()` reads "web.toml: vm[0].cpu.weight: expected an integer from 1 to 10000, got 0";
    `hint` is a did-you-mean suggestion; `line`/`column` locate TOML syntax errors."""

    def __init__(self, file: str, key: str | None, expected: str, got: str, *, hint: str | None = None,
                 line: int | None = None, column: int | None = None) -> None:
        self.file, self.key, self.expected, self.got = file, key, expected, got
        self.hint, self.line, self.column = hint, line, column
        if line is not None:
            where = f"line {line}, column {column}"
        else:
            where = key if key is not None else "(file)"
        text = f"{file}: {where}: expected {expected}, got {got}"
        super().__init__(text + (f"; did you mean {hint}?" if hint else ""))


@dataclass(frozen=True)
class HostConfig:
    logical_processors: int = 4
    smt: int = 1                       # threads per core; divides logical_processors
    memory: int = 4 * GIB              # bytes
    scheduler: str = "classic"         # a key of hypervisor.host.SCHEDULERS
    seed: int | None = None            # None: the command line's --seed (default 0)
    costs: Mapping[str, int] = field(default_factory=dict, hash=False)  # hypervisor.host.COSTS key -> ns

    def __post_init__(self) -> None:
        object.__setattr__(self, "costs", MappingProxyType(dict(self.costs)))

    def host_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `hypervisor.Host` (without the seed)."""
        return {"logical_processors": self.logical_processors, "smt": self.smt, "memory": self.memory,
                "scheduler": self.scheduler, "costs": dict(self.costs)}


@dataclass(frozen=True)
class CpuConfig:
    reserve: int = 0      # % of one LP guaranteed to each VP, 0..100
    limit: int = 100      # % of one LP each VP may use at most, 1..100
    weight: int = 100     # relative share among the rest, 1..10000


@dataclass(frozen=True)
class DiskConfig:
    path: Path                       # absolute
    size: int | None = None          # bytes; None: the file exists already, or a differencing disk
    type: str = "dynamic"            # one of DISK_TYPES
    parent: Path | None = None       # absolute; a differencing disk's parent, and only that


@dataclass(frozen=True)
class NicConfig:
    switch: str                      # a SwitchConfig name
    mac: str                         # "00:15:5d:xx:xx:xx", lower case
    vlan: int = 0                    # access VLAN on the switch, 0 (untagged) .. 4094
    ip: str | None = None            # "10.0.10.2/24"
    gateway: str | None = None       # "10.0.10.1", inside ip's network


@dataclass(frozen=True)
class LegacyNicConfig:
    """The emulated legacy network adapter (a DEC 21140 on the VM's intercept bus): the switch
    its port joins and its MAC (generated from the VM's name when the file gives none)."""
    switch: str                      # a SwitchConfig name
    mac: str                         # "00:15:5d:xx:xx:xx", lower case


@dataclass(frozen=True)
class DeviceConfig:
    """An installed device (a driver plugin, or the built-in echo device) attached to the VM:
    `type` names it (its `hvsim.drivers` entry point); `settings` are the other keys of its
    table, as written, which the device's VSP checked (`Vsp.validate_config`) when the file was
    read and turns into its config when the host is built."""
    type: str
    settings: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "settings", MappingProxyType(dict(self.settings)))


@dataclass(frozen=True)
class IntegrationServices:
    heartbeat: bool = True
    shutdown: bool = True
    timesync: bool = True
    kvp: bool = True
    vss: bool = True

    def enabled(self) -> tuple[str, ...]:
        return tuple(name for name in INTEGRATION_SERVICES if getattr(self, name))


@dataclass(frozen=True)
class IdleWorkload:
    kind: ClassVar[str] = "idle"


@dataclass(frozen=True)
class CpuBurnWorkload:
    """Every VP computes `duty` of each `period` and sleeps the rest."""
    kind: ClassVar[str] = "cpu-burn"
    duty: float = 1.0                # 0..1
    period: int = 10 * MS            # ns, > 0


@dataclass(frozen=True)
class DiskIoWorkload:
    """Keeps `queue_depth` requests of `block_size` bytes in flight on disk number `disk`."""
    kind: ClassVar[str] = "disk-io"
    pattern: str = "random"          # "sequential" | "random"
    block_size: int = 4096           # bytes, a multiple of 512
    queue_depth: int = 4             # 1..256
    read_fraction: float = 0.7       # 0..1
    disk: int = 0                    # index into the VM's disks


@dataclass(frozen=True)
class NetRequestResponseWorkload:
    """Sends a `size`-byte UDP request to `peer` on `port` every `interval`; the peer answers."""
    kind: ClassVar[str] = "net-request-response"
    peer: str                        # a VM name, sharing a switch and VLAN with this VM
    port: int = 5000                 # 1..65535
    size: int = 64                   # request (and response) payload, bytes, 1..1472
    interval: int = 10 * MS          # ns, > 0


@dataclass(frozen=True)
class MemoryCounterWorkload:
    """Stores an incrementing counter in each of `pages` pages of guest memory, `page_work` of
    computation between two pages, then waits `interval` (a restore or migration canary)."""
    kind: ClassVar[str] = "memory-counter"
    pages: int = 64                  # 1..65536
    interval: int = 1 * MS           # ns, > 0
    page_work: int = 1_000           # ns, >= 0


@dataclass(frozen=True)
class PythonWorkload:
    """A user workload: `target` is "package.module:function", called with the guest context and
    `**args` (the runner imports it; the configuration only checks its form)."""
    kind: ClassVar[str] = "python"
    target: str
    args: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "args", MappingProxyType(dict(self.args)))


Workload = Union[IdleWorkload, CpuBurnWorkload, DiskIoWorkload, NetRequestResponseWorkload, MemoryCounterWorkload,
                 PythonWorkload]
WORKLOADS: dict[str, type] = {w.kind: w for w in Workload.__args__}  # type: ignore[attr-defined]


@dataclass(frozen=True)
class VmConfig:
    name: str
    processors: int = 1
    memory: int = 512 * MIB                       # bytes, a multiple of 4 KiB
    cpu: CpuConfig = CpuConfig()
    disks: tuple[DiskConfig, ...] = ()
    nics: tuple[NicConfig, ...] = ()
    integration_services: IntegrationServices = IntegrationServices()
    workloads: tuple[Workload, ...] = ()          # none: idle
    autostart: bool = True                        # False: Off until an [[at]] start
    devices: tuple[DeviceConfig, ...] = ()        # installed devices, offered after disks and nics
    kernel: Path | None = None                    # a native guest's ELF image: runs on VP 0 instead of the Python kernel
    ide: DiskConfig | None = None                 # an emulated IDE disk (ATA PIO at 0x1F0), beside the synthetic disks
    legacy_nic: LegacyNicConfig | None = None     # an emulated legacy network adapter (DEC 21140)


@dataclass(frozen=True)
class SwitchConfig:
    name: str
    type: str = "private"            # one of SWITCH_TYPES


@dataclass(frozen=True)
class AtConfig:
    time: int                        # ns of simulated time since boot
    action: str                      # one of ACTIONS, or of MIGRATION_ACTIONS in a datacenter file
    vm: str
    name: str | None = None          # checkpoint name (CHECKPOINT_ACTIONS only)
    to: str | None = None            # the host a VM moves to (MIGRATION_ACTIONS only)
    kind: str | None = None          # "move" only: one of MOVE_KINDS (None: "live")


@dataclass(frozen=True)
class Config:
    host: HostConfig = HostConfig()
    vms: tuple[VmConfig, ...] = ()
    switches: tuple[SwitchConfig, ...] = ()
    timeline: tuple[AtConfig, ...] = ()           # in file order; the runner sorts stably by time
    path: Path | None = field(default=None, compare=False)  # the file it came from, if any

    def vm(self, name: str) -> VmConfig:
        for vm in self.vms:
            if vm.name == name:
                return vm
        raise LookupError(f"no VM named {name!r} in this configuration")


@dataclass(frozen=True)
class LinkConfig:
    """A network link between two hosts of a datacenter: full duplex, each direction sending one
    message at a time at `bandwidth`, each message arriving `latency` after its last bit left."""
    hosts: tuple[str, str]           # two different DatacenterHostConfig names
    bandwidth: int                   # bits per second, > 0
    latency: int                     # ns, > 0 (the datacenter's window is at most the smallest)


STORAGE_KINDS = ("iscsi", "fc")


@dataclass(frozen=True)
class StorageLinkConfig:
    """A host's link to a shared storage: `bandwidth` bits per second, each request arriving
    `latency` ns after its last bit left (partitions/datacenter/storage.py)."""
    host: str
    bandwidth: int
    latency: int


@dataclass(frozen=True)
class StorageConfig:
    """A storage several hosts see (an iSCSI or Fibre Channel SAN): a VM disk whose path lies under
    `directory` is on it, and is owned by one host at a time."""
    name: str
    kind: str                        # one of STORAGE_KINDS (for the summary)
    directory: Path                  # absolute
    links: tuple[StorageLinkConfig, ...] = ()

    def holds(self, path: Path) -> bool:
        """Whether the file `path` (absolute) is on this storage."""
        return Path(path).is_relative_to(self.directory)


@dataclass(frozen=True)
class DatacenterHostConfig:
    """One host of a datacenter: its name and its own configuration ([host] keys, its VMs and
    switches, and the [[at]] entries that name its VMs, in file order). A `remote` host runs in
    the process `hvsim host serve` started at that address, which gets `config` at hello."""
    name: str
    config: Config
    remote: str | None = None        # "HOST:PORT" of `hvsim host serve`; None: in this process
    remote_timeout: int | None = None   # ns of wall clock to wait for each answer; None: wire's default


@dataclass(frozen=True)
class StopRules:
    """When live migration's pre-copy stops iterating and copies the rest with the VM frozen
    (Clark et al.; Xen's defaults): fewer than `min_pages` pages dirty after a round, `max_rounds`
    rounds done (round 0, the whole memory, counts), or `max_factor` times the VM's pages sent in
    all. A datacenter file's [datacenter] migration table (docs/migration.md)."""
    min_pages: int = 50
    max_rounds: int = 30
    max_factor: float = 3.0

    def __post_init__(self) -> None:
        if self.min_pages < 0 or self.max_rounds < 1 or self.max_factor <= 0:
            raise ValueError(f"stop rules: expected min_pages >= 0, max_rounds >= 1, max_factor > 0, got {self}")


@dataclass(frozen=True)
class DatacenterConfig:
    """Hosts advancing in one simulated time, joined by links (partitions.datacenter runs it)."""
    hosts: tuple[DatacenterHostConfig, ...]
    links: tuple[LinkConfig, ...] = ()
    timeline: tuple[AtConfig, ...] = ()           # every [[at]], in file order (each host has its own)
    seed: int | None = None                       # [datacenter] seed; None: the command line's (default 0)
    path: Path | None = field(default=None, compare=False)
    storage: tuple[StorageConfig, ...] = ()       # [[storage]] tables, each with its hosts' links
    migration: StopRules = StopRules()            # [datacenter] migration: pre-copy's stop rules

    def host(self, name: str) -> DatacenterHostConfig:
        for host in self.hosts:
            if host.name == name:
                return host
        raise LookupError(f"no host named {name!r} in this datacenter")

    def host_of(self, vm: str) -> str:
        """The name of the host VM `vm` is configured on."""
        for host in self.hosts:
            if any(v.name == vm for v in host.config.vms):
                return host.name
        raise LookupError(f"no VM named {vm!r} in this datacenter")


def generated_mac(vm: str, index: int, attempt: int = 0) -> str:
    """The MAC of adapter `index` of `vm` when the configuration gives none: Hyper-V's prefix and
    three bytes of a hash of the name and index, so it is the same on every run. `attempt` > 0
    gives the alternatives used when the first one is already taken on the host."""
    tail = hashlib.sha256(f"{vm}\0{index}\0{attempt}".encode()).digest()[:3]
    return ":".join(f"{b:02x}" for b in MAC_PREFIX + tail)


# ---- values as TOML text (for dump and for error messages) --------------------------------------

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def format_size_exact(n: int) -> str:
    """"64GiB", "1536MiB", "512B": the largest binary unit that divides `n` exactly."""
    for unit, scale in (("TiB", 1024**4), ("GiB", GIB), ("MiB", MIB), ("KiB", 1024)):
        if n and n % scale == 0:
            return f"{n // scale}{unit}"
    return f"{n}B"


def format_duration(ns: int) -> str | int:
    """"2s", "3.5s", "250us", "999ns": the largest unit that reads back to exactly `ns` (units go
    through a float); past float precision, the bare integer of ns."""
    if ns == 0:
        return "0s"
    for unit, scale in (("s", 10**9), ("ms", 10**6), ("us", 10**3), ("ns", 1)):
        if ns >= scale:
            whole, frac = divmod(ns, scale)
            digits = f".{frac:0{len(str(scale)) - 1}d}".rstrip("0") if frac else ""
            text = f"{whole}{digits}{unit}"
            if parse_duration(text) == ns:
                return text
    return ns


def toml_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else toml_value(key)


def toml_value(value: Any) -> str:
    """One TOML value, inline (tables as inline tables); None entries of tables are left out."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        # TOML basic strings: escape quotes, backslashes and every control character (DEL too).
        return '"' + "".join(_ESCAPES.get(c) or (f"\\u{ord(c):04X}" if ord(c) < 0x20 or ord(c) == 0x7F else c)
                             for c in value) + '"'
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        items = [f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items() if v is not None]
        return "{ " + ", ".join(items) + " }" if items else "{}"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def show(value: Any, limit: int = 60) -> str:
    """A value as the user would have typed it, shortened, for an error message."""
    try:
        text = toml_value(value)
    except TypeError:
        text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def emit(document: Mapping[str, Any]) -> str:
    """A TOML document: top-level tables as [name], arrays of tables as [[name]], everything below
    them inline. None values and empty arrays are left out (they mean "the default"). A dotted
    name ("host.vm") is a table path: [[host.vm]] belongs to the [[host]] written before it."""
    out: list[str] = []
    for name, value in document.items():
        rows = [value] if isinstance(value, Mapping) else value
        name = ".".join(toml_key(part) for part in name.split("."))
        header = f"[{name}]" if isinstance(value, Mapping) else f"[[{name}]]"
        for row in rows:
            out.append(header)
            for key, v in row.items():
                if v is None or (isinstance(v, list) and not v):
                    continue
                if isinstance(v, list) and len(v) > 1:
                    out.append(f"{toml_key(key)} = [\n" + "".join(f"  {toml_value(x)},\n" for x in v) + "]")
                else:
                    out.append(f"{toml_key(key)} = {toml_value(v)}")
            out.append("")
    return "\n".join(out)


# ---- a whole configuration as TOML --------------------------------------------------------------

def dump(config: Config | DatacenterConfig, relative_to: str | os.PathLike | None = None) -> str:
    """The configuration as TOML that loads back to an equal Config (or DatacenterConfig: a
    datacenter file). Disk paths under `relative_to` (default: the directory of the file the
    config came from) are written relative to it; the others absolute."""
    base = Path(relative_to) if relative_to is not None else (config.path.parent if config.path else None)

    def path(p: Path) -> str:
        if base is not None:
            try:
                return p.relative_to(os.path.abspath(base)).as_posix()
            except ValueError:
                pass
        return str(p)

    def workload(w) -> dict:
        out = {"kind": w.kind, **{f.name: getattr(w, f.name) for f in dataclasses.fields(w)}}
        for name, text in (("period", format_duration), ("interval", format_duration),
                           ("block_size", format_size_exact), ("args", dict)):
            if name in out:
                out[name] = text(out[name])
        return out

    def tables(config: Config) -> tuple[dict, list, list]:
        h = config.host
        host = {"logical_processors": h.logical_processors, "smt": h.smt, "memory": format_size_exact(h.memory),
                "scheduler": h.scheduler, "seed": h.seed,
                "costs": {k: format_duration(v) for k, v in h.costs.items()} or None}
        vms = []
        for vm in config.vms:
            workloads = [workload(w) for w in vm.workloads]
            vms.append({
                "name": vm.name, "processors": vm.processors, "memory": format_size_exact(vm.memory),
                "autostart": vm.autostart, "cpu": dataclasses.asdict(vm.cpu),
                "workload": workloads[0] if len(workloads) == 1 else workloads or None,
                "disks": [{"path": path(d.path), "size": None if d.size is None else format_size_exact(d.size),
                           "type": d.type, "parent": None if d.parent is None else path(d.parent)} for d in vm.disks],
                "nics": [dataclasses.asdict(n) for n in vm.nics],
                "devices": [{"type": d.type, **d.settings} for d in vm.devices],
                "kernel": None if vm.kernel is None else path(vm.kernel),
                "ide": None if vm.ide is None else {
                    "path": path(vm.ide.path), "size": None if vm.ide.size is None else format_size_exact(vm.ide.size),
                    "type": vm.ide.type, "parent": None if vm.ide.parent is None else path(vm.ide.parent)},
                "legacy_nic": None if vm.legacy_nic is None else dataclasses.asdict(vm.legacy_nic),
                "integration_services": dataclasses.asdict(vm.integration_services),
            })
        return host, vms, [dataclasses.asdict(s) for s in config.switches]

    def timeline(entries: tuple[AtConfig, ...]) -> list[dict]:
        return [{"time": format_duration(a.time), "action": a.action, "vm": a.vm, "name": a.name, "to": a.to,
                 "kind": a.kind} for a in entries]

    if isinstance(config, DatacenterConfig):
        rules = {} if config.migration == StopRules() else {"migration": dataclasses.asdict(config.migration)}
        top = ({"seed": config.seed} if config.seed is not None else {}) | rules
        out = [emit({"datacenter": top})] if top else []
        for h in config.hosts:
            host, vms, switches = tables(h.config)
            remote = {"remote": h.remote,
                      "remote_timeout": None if h.remote_timeout is None else format_duration(h.remote_timeout)}
            out.append(emit({"host": [{"name": h.name, **remote, **host}], "host.switch": switches, "host.vm": vms}))
        out.append(emit({"storage": [{"name": s.name, "kind": s.kind, "directory": path(s.directory)}
                                     for s in config.storage],
                         "link": [{"hosts": list(link.hosts), "bandwidth": f"{link.bandwidth}bit/s",
                                   "latency": format_duration(link.latency)} for link in config.links]
                         + [{"hosts": [link.host, s.name], "bandwidth": f"{link.bandwidth}bit/s",
                             "latency": format_duration(link.latency)} for s in config.storage for link in s.links],
                         "at": timeline(config.timeline)}))
        return "\n".join(out)
    host, vms, switches = tables(config)
    return emit({"host": host, "vm": vms, "switch": switches, "at": timeline(config.timeline)})
