"""The device contract: a VMBus device is a class GUID, a VSP (parent side) and a VSC (guest side),
each driven by the channel end it is given.

Both sides are plain objects with the same shape: built on an open channel end, told when the
channel opens, handed every batch of packets the peer's signal brought, told when it closes. A
side that can carry its state across save/restore returns a plain record from `save()` and is
rebuilt by `restore(channel, state)`; one that cannot raises `SaveUnsupported` (the default).

A VSP is also quiesced before its VM's memory is saved and resumed after the restore (as Hyper-V
does): between `quiesce()` and `resume()` nothing of the VSP may touch the guest's memory, which
is wiped while the VM is Saved. The parent's VMBus service enforces the part it can see for every
VSP, so the defaults (do nothing) are safe for a device that writes to the guest only from
`on_packets` and its timers: no packets are delivered, its timers are held (time stands still for
them, see partitions/device_context.py) and `channel.send` raises `DeviceQuiesced`. A VSP that
writes on its own account (frames from a switch, a host API) overrides `quiesce`/`resume`.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, ClassVar

from vmbus.channel import ChannelEnd
from vmbus.ring import Packet, RingFull


class DeviceContext:
    """What a device side may ask of the partition it runs in: simulated time, timers, CPU time,
    a log. The parent's VMBus service and a guest's VMBus stack each provide one; tests use
    ManualContext. All times are simulated nanoseconds."""

    def now(self) -> int:
        raise NotImplementedError

    def call_later(self, delay_ns: int, fn) -> None:
        """Call fn() after delay_ns of simulated time (from the side's own partition's loop)."""
        raise NotImplementedError

    def charge(self, ns: int) -> None:
        """Account ns of CPU time for work this side just did (its partition pays it)."""

    def log(self, event: str, **fields: Any) -> None:
        """A structured event."""

    # ---- GPADLs beyond the ring (receive/send buffers, I/O pools) ----------------------------
    def gpadl_view(self, gpadl_id: int):
        """Parent side: the memory of a GPADL the guest created on this VMBus connection (a
        writable memoryview of its pages, in GPADL order), or None if there is no such GPADL."""
        return None

    def create_gpadl(self, relid: int, pages: list[int], done) -> int:
        """Guest side: offer some of the guest's own pages to the parent as a GPADL of channel
        `relid`; `done(gpadl_id, ok)` is called when the parent answers. Returns the GPADL id."""
        raise NotImplementedError

    def own_view(self, pages: list[int]):
        """Guest side: a writable view of some of the guest's own pages (to fill a buffer it
        shares through a GPADL)."""
        raise NotImplementedError


class ManualContext(DeviceContext):
    """A context with a clock that moves only when told: for testing one device without a host."""

    def __init__(self) -> None:
        self.time = 0
        self.charged = 0
        self.events: list[tuple[int, str, dict]] = []
        self._timers: list[tuple[int, int, Any]] = []
        self._seq = 0
        self._held: int | None = None   # when hold() stopped the timers

    def now(self) -> int:
        return self.time

    def call_later(self, delay_ns: int, fn) -> None:
        self._seq += 1
        start = self.time if self._held is None else self._held  # held: it counts from the release
        self._timers.append((start + max(0, int(delay_ns)), self._seq, fn))
        self._timers.sort(key=lambda t: (t[0], t[1]))

    def charge(self, ns: int) -> None:
        self.charged += ns

    def log(self, event: str, **fields: Any) -> None:
        self.events.append((self.time, event, fields))

    def advance(self, ns: int) -> None:
        """Move the clock by ns, running each timer due on the way, in order (none while held)."""
        end = self.time + ns
        while self._held is None and self._timers and self._timers[0][0] <= end:
            when, _, fn = self._timers.pop(0)
            self.time = when
            fn()
        self.time = end

    def hold(self) -> None:
        """Stop the timers as the parent does for a quiesced VSP (its VM saved): from now until
        release() none runs, and each then has the time it had left."""
        if self._held is None:
            self._held = self.time

    def release(self) -> None:
        if self._held is not None:
            gap, self._held = self.time - self._held, None
            self._timers = [(when + gap, seq, fn) for when, seq, fn in self._timers]


class SaveUnsupported(RuntimeError):
    """This device cannot save its state (its VM cannot be saved while it is open)."""


class DeviceQuiesced(RingFull):
    """The channel's VM is being saved or is Saved: its rings cannot be written until the VSP is
    resumed. A RingFull, so that a VSP which keeps what the ring refused sends it later."""


class DeviceSide:
    """What a VSP and a VSC have in common."""

    #: The device this side belongs to (set by DeviceType).
    device: ClassVar[DeviceType]

    def __init__(self, channel: ChannelEnd, config: dict[str, Any] | None = None,
                 context: DeviceContext | None = None):
        self.channel = channel
        self.config = dict(config or {})
        self.context = context or ManualContext()

    def on_open(self) -> None:
        """The channel is open: rings are ready. A VSC usually starts its negotiation here."""

    def on_packets(self, packets: list[Packet]) -> None:
        """Packets from the peer (one call per signal, in ring order)."""

    def on_close(self) -> None:
        """The channel is closing (or was rescinded): fail what is outstanding."""

    def save(self) -> dict[str, Any]:
        raise SaveUnsupported(f"{type(self).__name__} cannot save its state")

    @classmethod
    def restore(cls, channel: ChannelEnd, state: dict[str, Any], config: dict[str, Any] | None = None,
                context: DeviceContext | None = None):
        raise SaveUnsupported(f"{cls.__name__} cannot restore a saved state")


class Vsp(DeviceSide):
    """The parent side of a device (a virtualization service provider)."""

    @classmethod
    def validate_config(cls, settings: dict[str, Any]) -> dict[str, Any]:
        """Check the settings a host file gives this device (`devices = [{ type = "NAME", ... }]`,
        every key but `type`, as TOML values) and return the config the VSP is built with.
        Refuse with DeviceConfigError(key, expected) (or any ValueError). The default takes only
        keys of the device type's `defaults`, over those defaults; override it to check values."""
        defaults = cls.device.defaults
        for key in settings:
            if key not in defaults:
                known = f"one of the settings {', '.join(sorted(defaults))}" if defaults else "no setting: it takes none"
                raise DeviceConfigError(key, known, got="an unknown key", hint=_closest(key, tuple(defaults)))
        return {**defaults, **settings}

    def quiesce(self) -> None:
        """The VM is about to be saved: stop producing into the rings and guest buffers until
        resume(). Work in flight either completes into the ring now (before the memory snapshot)
        or stays in this object's state and finishes after resume(). Timers need no care: the
        parent holds them until resume(). Called once per save, with the channel open."""

    def resume(self) -> None:
        """The VM's memory and processors are back (a restore, or a save that failed): carry on
        from where quiesce() left off. Packets the guest sent meanwhile come next."""


class Vsc(DeviceSide):
    """The guest side of a device (a virtualization service client)."""


class DeviceConfigError(ValueError):
    """A device setting from a host file that the device refuses: which setting (`key`, None for
    the settings as a whole), what the device expects there, optionally what it found instead
    (`got`; by default the host file's error shows the value) and a did-you-mean `hint`."""

    def __init__(self, key: str | None, expected: str, *, got: str | None = None, hint: str | None = None):
        super().__init__(f"{key}: expected {expected}" if key else f"expected {expected}")
        self.key, self.expected, self.got, self.hint = key, expected, got, hint


def _closest(word: str, choices: tuple[str, ...]) -> str | None:
    import difflib
    close = difflib.get_close_matches(word, choices, n=1)
    return close[0] if close else None


@dataclass(frozen=True)
class DeviceType:
    """A device as the registry knows it: what `hvsim.drivers` entry points point at."""

    name: str
    class_id: uuid.UUID
    vsp: type[Vsp]
    vsc: type[Vsc]
    description: str = ""
    ring_pages: int = 4           # pages per ring the VSC asks for (control page included)
    guest_buffer_pages: int = 0   # guest pages the guest stack hands the VSC as config["buffer_pages"]
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
        # Each side knows its device (the classes belong to exactly one device type).
        self.vsp.device = self
        self.vsc.device = self

    def validate_config(self, settings: dict[str, Any]) -> dict[str, Any]:
        """The VSP config for settings from a host file, as the device's VSP checks them
        (`Vsp.validate_config`): raises DeviceConfigError, or another ValueError, when refused."""
        config = self.vsp.validate_config(dict(settings))
        if not isinstance(config, dict):
            raise TypeError(f"device {self.name!r}: validate_config returned {type(config).__name__}, not a dict")
        return config
