"""The KVP IC's guest side: five pools of items the host can set, get, delete and enumerate. The
guest publishes its own items from its config (`pools`: {pool: {key: value}}; by default its
intrinsic items in the auto pool). A pool holds at most `max_items` items (default 256): a set
beyond that is answered DISK_FULL. As in Linux, the host may write any pool."""
from __future__ import annotations

from drivers.ic import framing as f
from drivers.ic.kvp import protocol as p
from drivers.ic.vsc import Answer, IcVsc

DEFAULT_POOLS = {p.POOL_AUTO: {"FullyQualifiedDomainName": "guest.hvsim.test",
                               "OSName": "hvsim guest", "OSVersion": "0.1.0"}}


class KvpVsc(IcVsc):
    MSGTYPE = f.KVP_EXCHANGE
    VERSIONS = p.GUEST_VERSIONS

    def __init__(self, channel, config=None, context=None):
        super().__init__(channel, config, context)
        self.max_items = int(self.config.get("max_items", 256))
        self.pools: dict[int, dict[str, str]] = {pool: {} for pool in p.POOLS}
        for pool, items in self.config.get("pools", DEFAULT_POOLS).items():
            if pool not in p.POOLS:
                raise ValueError(f"no KVP pool {pool!r}")
            for key, value in items.items():
                p.text(key, p.MAX_KEY_SIZE)                 # ValueError unless it fits the wire
                p.text(value, p.MAX_VALUE_SIZE, "value")
                self.pools[pool][key] = value

    def handle(self, body: bytes) -> Answer:
        m = p.parse_request(body)
        items = self.pools[m.pool]
        if m.op == p.SET:
            if m.key not in items and len(items) >= self.max_items:
                return Answer(f.HV_ERROR_DISK_FULL)
            items[m.key] = m.value
            return Answer(f.HV_S_OK)
        if m.op == p.DELETE:
            return Answer(f.HV_S_OK if items.pop(m.key, None) is not None else f.HV_S_CONT)
        if m.op == p.GET:
            key, value = m.key, items.get(m.key)
        else:  # ENUMERATE: pools keep insertion order
            listed = list(items.items())
            key, value = listed[m.index] if m.index < len(listed) else (None, None)
        if value is None:
            return Answer(f.HV_S_CONT)
        return Answer(f.HV_S_OK, p.reply(body, key, value))

    def save(self) -> dict:
        return super().save() | {"pools": {str(pool): dict(items) for pool, items in self.pools.items()}}

    def _load(self, state: dict) -> None:
        self.pools = {int(pool): dict(items) for pool, items in state["pools"].items()}
