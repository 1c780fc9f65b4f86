"""The device contract: a VMBus device is a class GUID, a VSP (parent side) and a VSC (guest side),
each driven by the channel end it is given.

Both sides are plain objects with the same shape: built on an open channel end, told when the
channel opens, handed every batch of packets the peer's signal brought, told when it closes. A
side that can carry its state across save/restore returns a plain record from `save()` and is
rebuilt by `restore(channel, state)`; one that cannot raises `SaveUnsupported` (the default).
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, ClassVar

from vmbus.channel import ChannelEnd
from vmbus.ring import Packet


class SaveUnsupported(RuntimeError):
    """This device cannot save its state (its VM cannot be saved while it is open)."""


class DeviceSide:
    """What a VSP and a VSC have in common."""

    #: The device this side belongs to (set by DeviceType).
    device: ClassVar[DeviceType]

    def __init__(self, channel: ChannelEnd, config: dict[str, Any] | None = None):
        self.channel = channel
        self.config = dict(config or {})

    def on_open(self) -> None:
        """The channel is open: rings are ready. A VSC usually starts its negotiation here."""

    def on_packets(self, packets: list[Packet]) -> None:
        """Packets from the peer (one call per signal, in ring order)."""

    def on_close(self) -> None:
        """The channel is closing (or was rescinded): fail what is outstanding."""

    def save(self) -> dict[str, Any]:
        raise SaveUnsupported(f"{type(self).__name__} cannot save its state")

    @classmethod
    def restore(cls, channel: ChannelEnd, state: dict[str, Any], config: dict[str, Any] | None = None):
        raise SaveUnsupported(f"{cls.__name__} cannot restore a saved state")


class Vsp(DeviceSide):
    """The parent side of a device (a virtualization service provider)."""


class Vsc(DeviceSide):
    """The guest side of a device (a virtualization service client)."""


@dataclass(frozen=True)
class DeviceType:
    """A device as the registry knows it: what `hvsim.drivers` entry points point at."""

    name: str
    class_id: uuid.UUID
    vsp: type[Vsp]
    vsc: type[Vsc]
    description: str = ""
    ring_pages: int = 4           # pages per ring the VSC asks for (control page included)
    defaults: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.class_id, uuid.UUID):
            raise TypeError(f"device {self.name!r}: class_id must be a uuid.UUID")
        if not (isinstance(self.vsp, type) and issubclass(self.vsp, Vsp)):
            raise TypeError(f"device {self.name!r}: vsp must be a Vsp subclass")
        if not (isinstance(self.vsc, type) and issubclass(self.vsc, Vsc)):
            raise TypeError(f"device {self.name!r}: vsc must be a Vsc subclass")
        if self.ring_pages < 2:
            raise ValueError(f"device {self.name!r}: a ring needs at least 2 pages")
