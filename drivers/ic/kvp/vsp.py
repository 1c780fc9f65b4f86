"""The KVP IC's parent side: `set`, `get`, `delete` and `enumerate` items in the guest's pools.
Each is an asynchronous exchange: it returns an `Exchange` at once (and calls `on_done(ex)` when
it completes); `ex.status` is the guest's HRESULT, `ex.reply` a GET's value or an ENUMERATE's
(key, value). Keys and values too large to encode raise ValueError here: never truncated."""
from __future__ import annotations

from drivers.ic import framing as f
from drivers.ic.kvp import protocol as p
from drivers.ic.vsp import Exchange, IcVsp


_OPERATIONS = {p.GET: "get", p.SET: "set", p.DELETE: "delete", p.ENUMERATE: "enumerate"}


class KvpVsp(IcVsp):
    MSGTYPE = f.KVP_EXCHANGE
    VERSIONS = p.VERSIONS

    def describe(self, request) -> dict:
        return {"operation": _OPERATIONS.get(request.op, request.op), "pool": request.pool, "key": request.key}

    def set(self, pool: int, key: str, value: str, on_done=None) -> Exchange:
        return self._ask(p.KvpMessage(p.SET, pool, key, value), on_done)

    def get(self, pool: int, key: str, on_done=None) -> Exchange:
        return self._ask(p.KvpMessage(p.GET, pool, key), on_done)

    def delete(self, pool: int, key: str, on_done=None) -> Exchange:
        return self._ask(p.KvpMessage(p.DELETE, pool, key), on_done)

    def enumerate(self, pool: int, index: int, on_done=None) -> Exchange:
        return self._ask(p.KvpMessage(p.ENUMERATE, pool, index=index), on_done)

    def _ask(self, message: p.KvpMessage, on_done) -> Exchange:
        return self._submit(f.KVP_EXCHANGE, p.request(message), request=message,
                            decode=p.parse_reply, on_done=on_done)
