"""The driver registry: every device found through the `hvsim.drivers` entry-point group, the
built-in ones included. A plugin that fails to load is recorded with a clear error and skipped;
it never stops the host."""
from __future__ import annotations

import difflib
import uuid
from dataclasses import dataclass, field
from importlib import metadata

from drivers.device import DeviceType

GROUP = "hvsim.drivers"


@dataclass
class LoadError:
    entry_point: str   # "name = module:attr"
    distribution: str  # the package that declared it
    message: str


@dataclass
class Registry:
    devices: dict[str, DeviceType] = field(default_factory=dict)
    errors: list[LoadError] = field(default_factory=list)

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

    def add(self, device: DeviceType) -> None:
        clash = self.by_class(device.class_id)
        if device.name in self.devices or clash:
            raise ValueError(f"device {device.name!r} clashes with {(clash or self.devices[device.name]).name!r}")
        self.devices[device.name] = device


def discover(group: str = GROUP) -> Registry:
    """Load every entry point of `group`; each must name a DeviceType."""
    registry = Registry()
    for ep in sorted(metadata.entry_points(group=group), key=lambda e: e.name):
        where = f"{ep.name} = {ep.value}"
        dist = getattr(getattr(ep, "dist", None), "name", "?")
        try:
            device = ep.load()
            if not isinstance(device, DeviceType):
                raise TypeError(f"it names {type(device).__name__}, not a drivers.device.DeviceType")
            if device.name != ep.name:
                raise ValueError(f"the entry point is named {ep.name!r} but the device {device.name!r}")
            registry.add(device)
        except Exception as exc:  # a broken plugin must not stop the host
            registry.errors.append(LoadError(where, dist, f"{type(exc).__name__}: {exc}"))
    return registry
