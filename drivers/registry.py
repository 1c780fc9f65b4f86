"""The driver registry: every device found through the `hvsim.drivers` entry-point group, the
built-in ones included. A plugin that fails to load is recorded with a clear error and skipped;
it never stops the host, and it never displaces a built-in device.

Built-in devices are the entry points of hvsim's own distribution (`BUILTIN_DISTRIBUTION`); they
are loaded before any plugin, so a plugin that takes a built-in's name or class GUID is the one
refused and reported, whatever its entry point's name sorts as. Loading a plugin runs its code:
whatever that code raises at import, `SystemExit` included, is that plugin's load error (only
`KeyboardInterrupt` goes through, so Ctrl-C still stops the command).
"""
from __future__ import annotations

import difflib
import uuid
from dataclasses import dataclass, field
from importlib import metadata

from drivers.device import DeviceType

GROUP = "hvsim.drivers"
BUILTIN_DISTRIBUTION = "hvsim"


@dataclass
class LoadError:
    entry_point: str   # "name = module:attr"
    distribution: str  # the package that declared it
    message: str


@dataclass
class Registry:
    devices: dict[str, DeviceType] = field(default_factory=dict)
    errors: list[LoadError] = field(default_factory=list)
    distributions: dict[str, str] = field(default_factory=dict)   # device name -> its distribution

    def by_class(self, class_id: uuid.UUID) -> DeviceType | None:
        for device in self.devices.values():
            if device.class_id == class_id:
                return device
        return None

    def __getitem__(self, name: str) -> DeviceType:
        try:
            return self.devices[name]
        except KeyError:
            raise KeyError(self.missing(name)) from None

    def failed(self, name: str) -> LoadError | None:
        """The load error of the entry point named `name`, if one by that name failed to load."""
        return next((e for e in self.errors if e.entry_point.split(" = ", 1)[0] == name), None)

    def closest(self, name: str, among: tuple[str, ...] | None = None) -> str | None:
        """The installed device name nearest to `name` (a did-you-mean), or None."""
        close = difflib.get_close_matches(name, among if among is not None else tuple(self.devices), n=1)
        return close[0] if close else None

    def missing(self, name: str) -> str:
        """Why there is no device `name`: it failed to load (and the error), or what is installed
        and the nearest name."""
        error = self.failed(name)
        if error is not None:
            return f"device {name!r} is installed ({error.distribution}) but failed to load: {error.message}"
        hint = self.closest(name)
        return (f"no device named {name!r}; installed: {', '.join(sorted(self.devices)) or 'none'}"
                + (f"; did you mean {hint!r}?" if hint else ""))

    def add(self, device: DeviceType, distribution: str = "?") -> None:
        """Add `device` (from `distribution`), unless a device already here has its name or its
        class GUID: the first one added wins, and discover() adds the built-in devices first."""
        taken = self.devices.get(device.name) or self.by_class(device.class_id)
        if taken is not None:
            what = "name" if taken.name == device.name else f"class GUID {device.class_id}"
            raise ValueError(f"device {device.name!r} has the {what} of device {taken.name!r} from "
                             f"{self.distributions.get(taken.name, '?')}, which is kept (built-in devices "
                             "and earlier plugins win)")
        self.devices[device.name] = device
        self.distributions[device.name] = distribution


def _distribution(ep) -> str:
    return getattr(getattr(ep, "dist", None), "name", None) or "?"


def discover(group: str = GROUP) -> Registry:
    """Load every entry point of `group`; each must name a DeviceType. hvsim's own come first,
    then the plugins by entry-point name."""
    registry = Registry()
    entry_points = sorted(metadata.entry_points(group=group),
                          key=lambda e: (_distribution(e) != BUILTIN_DISTRIBUTION, e.name, e.value))
    for ep in entry_points:
        where = f"{ep.name} = {ep.value}"
        dist = _distribution(ep)
        try:
            device = ep.load()
            if not isinstance(device, DeviceType):
                raise TypeError(f"it names {type(device).__name__}, not a drivers.device.DeviceType")
            if device.name != ep.name:
                raise ValueError(f"the entry point is named {ep.name!r} but the device {device.name!r}")
            registry.add(device, dist)
        except KeyboardInterrupt:
            raise                     # the user stopping the command, not the plugin failing
        except BaseException as exc:  # a broken plugin (even one calling sys.exit) must not stop the host
            registry.errors.append(LoadError(where, dist, f"{type(exc).__name__}: {exc}"))
    # A DeviceType ties its VSP and VSC classes to itself when made; a refused plugin that made
    # one out of a built-in's classes must not leave them tied to it.
    for device in registry.devices.values():
        device.vsp.device = device.vsc.device = device
    return registry
