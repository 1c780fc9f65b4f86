"""The management service's HTTP API: a FastAPI app over an Engine (the simulation) and an
Authorizer (users, roles, the audit log), JSON under /v1, its OpenAPI document at
/v1/openapi.json, the web console at /console/.

    app = create_app(engine, Authorizer.local())
    uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=8450)).run()

How a request goes (the `_Guard` ASGI middleware, then the endpoint):
1. Its body is read whole before anything else, at most MAX_BODY bytes: a Content-Length above
   that, or a body that turns out longer, is answered 413 without being parsed.
2. Its route's operationId is its action (the contract's names: "vms.start", ...). The caller is
   authenticated (`authorizer.authenticate`: 401) and the action checked (`authorizer.check`, with
   the owner of the VM the path names: 403). So no endpoint runs for a caller that may not use it.
3. The endpoint reads the engine's published view (`snapshot()`, the CPU history, the event ring)
   or goes through the engine's sim thread (`engine.call` and the methods over it). The API never
   runs simulation code itself. The reads of the view (the clock, hosts, VMs, one VM) answer JSON
   bytes built once per publish and visibility scope (`_ViewJson`), and the guard answers them
   itself with the function their endpoint uses: most of what a request cost was the framework's
   per-request work (dependency solving, response validation), not the answer.
4. Whatever the outcome, one audit line (`authorizer.audit`) with the status sent.

Errors are `{"error": {"type", "message", ...}}` with the messages the CLI shows: BadRequest 400
(malformed JSON, a bad field), Unauthorized 401, Forbidden 403, NotFound 404, Conflict and
InvalidTransition 409, TooLarge 413, ConfigError 422 (a bad TOML fragment: names the key),
Unavailable 503 (the simulation stopped). A request that fails changes nothing: checks come before
the one command that acts, which the sim thread applies whole or not at all.

Why FastAPI with uvicorn: both are widely used and well kept; FastAPI derives the OpenAPI document
(and docs/api.md from it) from the endpoints' own type annotations, so the reference cannot drift
from the code; uvicorn is an ASGI server that runs in the service's own process, beside the
simulation thread, on TCP or a Unix socket; with httptools installed (the `service` extra) it parses
HTTP in C, which cut a request's server CPU by about a third (bench api, docs/service.md).
"""
from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any, Callable, Literal, Union

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from partitions.config_schema import ConfigError
from partitions.service.auth import Forbidden, Unauthorized
from partitions.service.engine import NotFound, ServiceError, _check_speed
from partitions.vm import InvalidTransition

logger = logging.getLogger("hvsim.service")

#: The largest request body accepted (bytes).
MAX_BODY = 1024 * 1024
#: Events a GET /v1/events answers at most (and by default).
MAX_EVENTS = 10_000
#: How often an event stream looks for new events, and sends a keep-alive comment when idle (s).
STREAM_POLL_S = 0.05
STREAM_KEEPALIVE_S = 15.0
STATIC = Path(__file__).with_name("static")


# ---- the models (the OpenAPI document's schemas) ------------------------------------------------------

class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str = Field(description="BadRequest, Unauthorized, Forbidden, NotFound, Conflict, InvalidTransition, "
                                  "TooLarge, ConfigError, Unavailable or Internal")
    message: str = Field(description="what went wrong, as the command line shows it")


class ErrorBody(BaseModel):
    error: ErrorDetail


class Whoami(BaseModel):
    user: str
    role: str
    actions: list[str] = Field(description="the actions (operationIds) this caller may use")


Speed = Union[float, Literal["max"]]


class Clock(BaseModel):
    now_ns: int = Field(description="simulated time since boot, in ns")
    speed: Speed = Field(description='simulated seconds per wall second, or "max"')
    paused: bool
    windows: int = Field(description="windows of simulated time run so far")


class ClockSet(BaseModel):
    model_config = ConfigDict(extra="forbid")
    speed: Speed | None = Field(None, description='a positive number (1 = real time) or "max"')
    paused: bool | None = None


class ClockStep(BaseModel):
    model_config = ConfigDict(extra="forbid")
    by: str = Field(description='simulated time to advance, with a unit: "100ms", "1s"', examples=["100ms"])


class HostRow(BaseModel):
    name: str
    logical_processors: int
    memory_bytes: int
    vms: list[str]


class VmRow(BaseModel):
    """A row of Get-VM, with the host the VM is on and the user who created it."""
    model_config = ConfigDict(populate_by_name=True)
    Name: str
    State: str = Field(description="Off, Starting, Running, Paused, Saving, Saved, Stopping, Resetting, Migrating")
    CPUUsage: float = Field(alias="CPUUsage(%)", description="use of the host's LPs over the last simulated second")
    MemoryAssigned: int = Field(alias="MemoryAssigned(M)", description="MiB")
    Uptime: str = Field(description="hh:mm:ss.mmm of simulated time")
    Status: str
    Host: str
    Owner: str | None = Field(description="the user who created it through the API (null: from the configuration)")


class CheckpointRow(BaseModel):
    name: str
    time_ns: int
    consistent: bool


class VmDetail(VmRow):
    processors: int
    memory_bytes: int
    checkpoints: list[CheckpointRow]
    devices: list[str]
    measure: dict[str, Any] = Field(description="Measure-VM's figures")
    cpu: list[tuple[int, float]] = Field(description="[time_ns, CPU %] per 100 ms of simulated time, the last 600")


class VmCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    toml: str | None = Field(None, description="the keys of a [[vm]] table, as TOML")
    template: str | None = Field(None, description="a template's name (GET /v1/templates)")
    name: str | None = Field(None, description="the VM's name (required with a template; wins over the TOML's)")
    host: str | None = Field(None, description="the host to create it on (default: the first)")


class CheckpointBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, description="default: checkpoint-<simulated ms>")


class ApplyBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    checkpoint: str


class MoveBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    to: str = Field(description="the host to move it to")
    kind: Literal["live", "post-copy", "quick"] = "live"


class SwitchRow(BaseModel):
    name: str
    host: str
    type: str
    stats: dict[str, int]


class DiskRow(BaseModel):
    vm: str
    host: str
    lun: int
    path: str
    size: int | None
    type: str
    parent: str | None


class TemplateRow(BaseModel):
    name: str
    description: str
    source: str
    vm: dict[str, Any] = Field(description="the [[vm]] keys it makes (strings may hold {name})")


class Event(BaseModel):
    model_config = ConfigDict(extra="allow")
    seq: int
    time_ns: int
    event: str
    vm: str | None = None


ERRORS = {status: {"model": ErrorBody} for status in (400, 401, 403, 404, 409, 413, 422, 503)}


# ---- errors -----------------------------------------------------------------------------------------

def error(status: int, type_: str, message: str, **fields: Any) -> JSONResponse:
    return JSONResponse({"error": {"type": type_, "message": message, **fields}}, status_code=status)


def service_error_response(exc: ServiceError) -> JSONResponse:
    return error({"NotFound": 404, "Conflict": 409, "Unavailable": 503}.get(exc.type, 409), exc.type, str(exc))


class BadRequest(ValueError):
    """A request the API refuses as malformed (400)."""


def _validation_message(exc: RequestValidationError) -> str:
    errors = exc.errors()
    for e in errors:
        if e.get("type") == "json_invalid":
            return f"malformed JSON: {e.get('ctx', {}).get('error', 'cannot be parsed')}"
    parts = []
    for e in errors[:3]:
        loc = [str(x) for x in e.get("loc", ()) if x != "body"]
        where = ".".join(loc) or "the body"
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    return "bad request: " + "; ".join(parts)


def _install_errors(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError):
        return service_error_response(exc)

    @app.exception_handler(Unauthorized)
    async def unauthorized(request: Request, exc: Unauthorized):
        return error(401, "Unauthorized", str(exc))

    @app.exception_handler(Forbidden)
    async def forbidden(request: Request, exc: Forbidden):
        request.state.allowed = False   # a create over its quota or outside its templates
        return error(403, "Forbidden", str(exc))

    @app.exception_handler(InvalidTransition)
    async def invalid_transition(request: Request, exc: InvalidTransition):
        return error(409, "InvalidTransition", str(exc), vm=exc.vm, state=exc.state.value)

    @app.exception_handler(ConfigError)
    async def config_error(request: Request, exc: ConfigError):
        return error(422, "ConfigError", str(exc), key=exc.key, expected=exc.expected, got=exc.got)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        return error(400, "BadRequest", _validation_message(exc))

    @app.exception_handler(ValueError)
    async def value_error(request: Request, exc: ValueError):
        return error(400, "BadRequest", str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        kind = {404: "NotFound", 405: "MethodNotAllowed"}.get(exc.status_code, "HTTPError")
        message = f"no such endpoint: {request.method} {request.url.path}" if exc.status_code == 404 else str(exc.detail)
        return error(exc.status_code, kind, message)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):
        logger.exception("%s %s failed", request.method, request.url.path)
        return error(500, "Internal", f"{type(exc).__name__}: {exc}")


# ---- the guard: body limit, authentication, authorization, audit ------------------------------------------

class _Guard:
    """ASGI middleware in front of the app (see the module's docstring, steps 1, 2 and 4)."""

    #: Requests (method, path) whose route is remembered, at most: matching a path against every
    #: route (regular expressions) was a tenth of a request's CPU; a full table is cleared.
    ROUTES_KEPT = 4096

    def __init__(self, app, *, api: FastAPI, engine, authorizer, reads: dict | None = None):
        self.app, self.api, self.engine, self.authorizer = app, api, engine, authorizer
        self.reads = reads or {}
        self._routes: dict[tuple[str, str], tuple[str | None, dict]] = {}

    def _route(self, scope) -> tuple[str | None, dict]:
        """(the action of the route the request is for, its path parameters); None: no route.
        The routes are fixed once the app is made, and a match depends on the method and path only."""
        key = (scope.get("method", ""), scope["path"])
        found = self._routes.get(key)
        if found is None:
            found = None, {}
            for route in self.api.router.routes:
                match, child = route.matches(scope)
                if match is Match.FULL:
                    found = getattr(route, "operation_id", None), child.get("path_params", {})
                    break
            if len(self._routes) >= self.ROUTES_KEPT:
                self._routes.clear()
            self._routes[key] = found
        return found[0], dict(found[1])

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        sent = {"status": None}

        client = scope.get("client")
        client_host = client[0] if client and client[0] else None
        action, params = self._route(scope)
        principal = None

        def audit(status: int) -> None:
            """4. one audit line per API request (the console's static files are not audited)."""
            if action is None and not scope["path"].startswith("/v1/"):
                return
            try:
                self.authorizer.audit(principal, action or f"{scope['method']} {scope['path']}",
                                      state.get("target", params.get("name")), bool(state.get("allowed")), status,
                                      self.engine.snapshot()["clock"]["now_ns"], client_host)
            except Exception:
                logger.exception("the audit log could not be written")

        async def send_noting(message):
            if message["type"] == "http.response.start":
                sent["status"] = message["status"]
                audit(message["status"])   # before the client has its answer: a client never finds it missing
            await send(message)
        try:
            # 1. the body, whole and bounded
            length = dict(scope.get("headers") or []).get(b"content-length")
            if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
                await error(413, "TooLarge", f"the request body is larger than {MAX_BODY} bytes")(scope, receive,
                                                                                                  send_noting)
                return
            body, more, first = bytearray(), True, []
            while more:
                message = await receive()
                if message["type"] != "http.request":
                    first.append(message)
                    break
                body += message.get("body", b"")
                more = message.get("more_body", False)
                if len(body) > MAX_BODY:
                    await error(413, "TooLarge", f"the request body is larger than {MAX_BODY} bytes")(
                        scope, receive, send_noting)
                    return
            replay = [{"type": "http.request", "body": bytes(body), "more_body": False}] + first

            async def receive_again():
                return replay.pop(0) if replay else await receive()

            # 2. who, and may they
            if action is not None:
                headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or []}
                try:
                    principal = self.authorizer.authenticate(headers.get("authorization"), client_host)
                    state["principal"] = principal
                    owner = self.engine.owner(params["name"]) if "name" in params else None
                    self.authorizer.check(principal, action, owner=owner)
                    state["allowed"] = True   # what the audit calls allowed: past the role check
                except Unauthorized as exc:
                    await error(401, "Unauthorized", str(exc))(scope, receive_again, send_noting)
                    return
                except Forbidden as exc:
                    await error(403, "Forbidden", str(exc))(scope, receive_again, send_noting)
                    return
                # 3. a read of the published view is answered here, by the function its endpoint
                # answers with: the same bytes, without the framework's per-request work (its
                # dependency solving and exception middleware were most of such a request's CPU).
                read = self.reads.get(action) if scope["method"] in ("GET", "HEAD") else None
                if read is not None:
                    try:
                        answer = _json(read(principal, params))
                    except ServiceError as exc:
                        answer = service_error_response(exc)
                    except Exception as exc:
                        logger.exception("%s %s failed", scope["method"], scope["path"])
                        answer = error(500, "Internal", f"{type(exc).__name__}: {exc}")
                    await answer(scope, receive_again, send_noting)
                    return
            await self.app(scope, receive_again, send_noting)
        finally:
            if sent["status"] is None:   # no answer at all (the app failed before it sent one)
                audit(500)


# ---- reads from the published view ------------------------------------------------------------------------

class _ViewJson:
    """The JSON bytes of the read endpoints, built from the engine's published view at most once
    per publish and key (the endpoint and the caller's visibility scope: everyone's VMs, or one
    Self-service user's), then answered as they are by every request until the next publish.
    Only the event loop's thread uses it. Each publish is a new dict that is never changed
    afterwards (engine.snapshot()), so its identity says whether the bytes are still current; the
    CPU history changes by itself (a sample per 100 ms of simulated time), so its JSON is kept per
    VM and history version apart."""

    def __init__(self, engine):
        self.engine = engine
        self._view: dict | None = None
        self._bytes: dict[Any, bytes] = {}
        self._cpu: dict[str, tuple[int, bytes]] = {}   # vm -> (history version, its JSON)

    def get(self, key, build: Callable[[dict], Any]) -> bytes:
        view = self.engine.snapshot()
        if view is not self._view:
            self._view, self._bytes = view, {}
        data = self._bytes.get(key)
        if data is None:
            data = self._bytes[key] = _dumps(build(view))
        return data

    def detail(self, name: str) -> bytes:
        """GET /v1/vms/{name}'s body: the row and details of the view, then the CPU history."""
        def build(view):
            row = next((r for r in view["vms"] if r["Name"] == name), None)
            if row is None:
                raise NotFound(f"no VM named {name!r}")
            return {**row, **view["details"][name]}
        head = self.get(("vm", name), build)
        version = self.engine.snapshot()["cpu_samples"]
        cached = self._cpu.get(name)
        if cached is None or cached[0] != version:
            if len(self._cpu) > 4 * len(self.engine.snapshot()["vms"]) + 64:
                self._cpu.clear()   # deleted VMs' histories go (bounded by the VMs there are)
            cached = self._cpu[name] = (version, _dumps(self.engine.cpu_history(name)))
        return head[:-1] + b',"cpu":' + cached[1] + b"}"


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _json(data: bytes) -> Response:
    return Response(data, media_type="application/json")


# ---- one send per answer -----------------------------------------------------------------------------------

class _OneSend:
    """A transport whose writes made in one turn of the event loop reach the socket as one send,
    at the end of that turn. uvicorn writes a response's head and its body apart, two sends on
    the socket; on loopback each costs the kernel's whole delivery, the reader's wake-up included,
    which under a paced load (each request alone) was most of the server's CPU per request
    (py-spy: the sends and the audit write). Everything else is the transport's own. Invariants:
    bytes go out in the order written; close() sends what is pending first, abort() drops it."""

    def __init__(self, transport):
        self._transport = transport
        self._pending: list[bytes] = []
        self._loop = asyncio.get_running_loop()

    def write(self, data) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(bytes(data))

    def _flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def set_protocol(self, protocol) -> None:
        self._flush()
        self._transport.set_protocol(protocol)

    def abort(self) -> None:
        self._pending.clear()
        self._transport.abort()

    def __getattr__(self, name):
        return getattr(self._transport, name)


def http_protocol():
    """The HTTP protocol class for uvicorn (`uvicorn.Config(http=...)`): its httptools protocol
    with one send per answer (_OneSend); None without httptools (uvicorn's own choice then)."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return None

    class HttpProtocol(HttpToolsProtocol):
        def connection_made(self, transport) -> None:
            super().connection_made(_OneSend(transport))
    return HttpProtocol


# ---- the app ----------------------------------------------------------------------------------------------

def create_app(engine, authorizer, *, templates: dict | None = None) -> FastAPI:
    """The API over `engine` (started) with `authorizer`; `templates` (name -> Template, default
    the built-in ones for the engine's configuration) are what vms.create and templates.list offer."""
    if templates is None:
        from partitions.service.templates import builtin_templates
        templates = builtin_templates(engine.config)
    app = FastAPI(title="hvsim management service", version="1",
                  description="Manage a simulated Hyper-V host or datacenter while it runs: its VMs, clock and "
                              "events. Every operationId is the action name roles are checked against.",
                  openapi_url="/v1/openapi.json", docs_url="/v1/docs", redoc_url=None,
                  strict_content_type=False)
    _install_errors(app)

    def principal(request: Request):
        return request.state.principal

    view = _ViewJson(engine)

    def scope(p) -> str | None:
        """The caller's visibility scope: None sees every VM, else the user who sees its own only."""
        return None if authorizer.visible(p, None) else p.user

    def hosts(p, params) -> bytes:
        def build(v):
            owners = {row["Name"]: row["Owner"] for row in v["vms"]}
            return [{**h, "vms": [n for n in h["vms"] if authorizer.visible(p, owners.get(n))]} for h in v["hosts"]]
        return view.get(("hosts", scope(p)), build)

    # The reads of the published view: (principal, path parameters) -> the JSON body. Their
    # endpoints below answer with them, and so does the guard, before the framework (see _Guard).
    reads = {"clock.get": lambda p, params: view.get("clock", lambda v: v["clock"]),
             "hosts.list": hosts,
             "vms.list": lambda p, params: view.get(("vms", scope(p)), lambda v: [
                 row for row in v["vms"] if authorizer.visible(p, row["Owner"])]),
             "vms.get": lambda p, params: view.detail(params["name"])}

    @app.get("/", include_in_schema=False)
    async def root():
        return RedirectResponse("/console/")

    if STATIC.is_dir():
        from fastapi.staticfiles import StaticFiles
        app.mount("/console", StaticFiles(directory=STATIC, html=True), name="console")

    @app.get("/v1/whoami", operation_id="whoami.get", response_model=Whoami, responses=ERRORS,
             summary="Who the caller is and what it may do")
    async def whoami(request: Request):
        p = principal(request)
        return {"user": p.user, "role": p.role, "actions": authorizer.actions(p)}

    # -- the clock --
    @app.get("/v1/clock", operation_id="clock.get", response_model=Clock, responses=ERRORS,
             summary="The simulation's clock")
    async def clock_get(request: Request):
        return _json(reads["clock.get"](principal(request), {}))

    @app.put("/v1/clock", operation_id="clock.set", response_model=Clock, responses=ERRORS,
             summary="Set the clock's speed, pause or resume it")
    async def clock_set(body: ClockSet):
        def apply():   # on the sim thread, so that the two change together or not at all: a resume
            if body.paused is True:      # can be refused (a step in progress), the speed was checked
                engine.pause()
            elif body.paused is False:
                engine.resume()
            if body.speed is not None:
                engine.set_speed(None if body.speed == "max" else body.speed)
        if body.speed is not None and body.speed != "max":
            _check_speed(body.speed)
        await engine.call_async(apply)
        return engine.snapshot()["clock"]

    @app.post("/v1/clock/step", operation_id="clock.step", response_model=Clock, responses=ERRORS,
              summary="Advance a paused clock by exactly this much simulated time")
    def clock_step(body: ClockStep):
        engine.step(body.by)
        return engine.snapshot()["clock"]

    # -- hosts, VMs --
    @app.get("/v1/hosts", operation_id="hosts.list", response_model=list[HostRow], responses=ERRORS,
             summary="The hosts, with their LPs, memory and VMs")
    async def hosts_list(request: Request):
        return _json(reads["hosts.list"](principal(request), {}))

    @app.get("/v1/vms", operation_id="vms.list", response_model=list[VmRow], responses=ERRORS,
             summary="Get-VM: every VM the caller may see")
    async def vms_list(request: Request):
        return _json(reads["vms.list"](principal(request), {}))

    @app.get("/v1/vms/{name}", operation_id="vms.get", response_model=VmDetail, responses=ERRORS,
             summary="One VM: its row, configuration, checkpoints, devices, figures and CPU history")
    async def vms_get(name: str, request: Request):
        return _json(reads["vms.get"](principal(request), {"name": name}))   # from the view: no window waited for

    @app.post("/v1/vms", operation_id="vms.create", status_code=201, response_model=VmRow, responses=ERRORS,
              summary="Create a VM (Off) from a TOML fragment or a template")
    async def vms_create(body: VmCreate, request: Request):
        p = principal(request)
        if (body.toml is None) == (body.template is None):
            raise BadRequest('give either "toml" (the keys of a [[vm]] table) or "template" with "name"')
        if body.template is not None:
            template = templates.get(body.template)
            if template is None:
                raise NotFound(f"no template named {body.template!r} (templates: {', '.join(templates)})")
            if not body.name:
                raise BadRequest('"name": a VM made from a template needs a name')
        # May this caller create from this template (or from TOML) at all: before anything is
        # parsed. Its quota is checked on the sim thread, against the VMs it owns then.
        authorizer.check_create(p, body.template, {"name": body.name, "processors": 0, "memory": 0}, [])
        source: Any = template.fragment(body.name) if body.template is not None else body.toml
        request.state.target = body.name

        def check(cfg, owned):
            request.state.target = cfg.name
            authorizer.check_create(p, body.template, {"name": cfg.name, "processors": cfg.processors,
                                                       "memory": cfg.memory}, owned)
        row = await engine.call_async(lambda: engine.create_vm(source, owner=p.user, host=body.host,
                                                               name=body.name, check=check))
        return JSONResponse(row, status_code=201)

    @app.delete("/v1/vms/{name}", operation_id="vms.delete", status_code=204, responses=ERRORS,
                summary="Delete a VM that is Off or Saved")
    async def vms_delete(name: str, request: Request):
        user = principal(request).user
        await engine.call_async(lambda: engine.delete_vm(name, user=user))
        return Response(status_code=204)

    def lifecycle(action: str, summary: str, body_model=None):
        path = f"/v1/vms/{{name}}/{action}"

        def act(name: str, request: Request, **kw):
            user = principal(request).user
            return engine.call_async(lambda: engine.act(name, action, user=user, **kw))

        if body_model is None:
            async def endpoint(name: str, request: Request):
                return await act(name, request)
        elif body_model is CheckpointBody:
            async def endpoint(name: str, request: Request, body: CheckpointBody | None = None):
                return await act(name, request, checkpoint=body.name if body else None)
        elif body_model is ApplyBody:
            async def endpoint(name: str, request: Request, body: ApplyBody):
                return await act(name, request, checkpoint=body.checkpoint)
        else:
            async def endpoint(name: str, request: Request, body: MoveBody):
                return await act(name, request, to=body.to, kind=body.kind)
        endpoint.__name__ = f"vms_{action.replace('-', '_')}"
        app.post(path, operation_id=f"vms.{action}", response_model=VmRow, responses=ERRORS, summary=summary)(endpoint)

    lifecycle("start", "Start a VM (a Saved one resumes from its saved state)")
    lifecycle("stop", "Shut a VM down through its guest (the shutdown integration service)")
    lifecycle("turn-off", "Turn a VM off at once (a saved state is discarded)")
    lifecycle("pause", "Pause a running VM")
    lifecycle("resume", "Resume a paused VM")
    lifecycle("save", "Save a VM's state into the state directory")
    lifecycle("restore", "Restore a Saved VM")
    lifecycle("checkpoint", "Take a production checkpoint of a VM's disks", CheckpointBody)
    lifecycle("apply", "Apply a checkpoint to a VM that is Off", ApplyBody)
    lifecycle("move", "Move a VM to another host of the datacenter", MoveBody)

    # -- the rest --
    @app.get("/v1/switches", operation_id="switches.list", response_model=list[SwitchRow], responses=ERRORS,
             summary="The hosts' virtual switches and their counters")
    async def switches_list():
        return await engine.call_async(engine.switches)

    @app.get("/v1/disks", operation_id="disks.list", response_model=list[DiskRow], responses=ERRORS,
             summary="The VMs' disks")
    async def disks_list():
        return await engine.call_async(engine.disks)

    @app.get("/v1/templates", operation_id="templates.list", response_model=list[TemplateRow], responses=ERRORS,
             summary="The templates the caller may create VMs from")
    async def templates_list(request: Request):
        allowed = authorizer.templates_for(principal(request), templates)
        return [templates[n].row() for n in allowed]

    @app.get("/v1/events", operation_id="events.get", response_model=list[Event], responses={
        **ERRORS, 200: {"description": "a JSON list, or with Accept: text/event-stream (or follow=true) a stream "
                                       "of server-sent events: id = seq, event = the event's name, data = the "
                                       "event as JSON", "content": {"text/event-stream": {}}}},
             summary="The events since a sequence number, or a stream of them as they happen")
    async def events_get(request: Request, since: int = 0, limit: int = MAX_EVENTS, follow: bool = False,
                         vm: list[str] | None = Query(None, description="only these VMs' events"),
                         tail: int | None = Query(None, description="only the last N events (after since); a "
                                                  "stream starts with them, unless Last-Event-ID is sent")):
        if limit < 1 or limit > MAX_EVENTS:
            raise BadRequest(f"limit: expected 1 to {MAX_EVENTS}, got {limit}")
        if tail is not None and not 1 <= tail <= MAX_EVENTS:
            raise BadRequest(f"tail: expected 1 to {MAX_EVENTS}, got {tail}")
        p = principal(request)
        wanted = set(vm) if vm else None

        def allowed() -> set[str] | None:
            """The VMs whose events this caller sees (None: every event, the host's too)."""
            seen = None if authorizer.visible(p, None) else {
                row["Name"] for row in engine.snapshot()["vms"] if authorizer.visible(p, row["Owner"])}
            if wanted is None:
                return seen
            return wanted if seen is None else wanted & seen
        streaming = follow or "text/event-stream" in request.headers.get("accept", "")
        if not streaming:
            return engine.events(since, allowed(), limit, tail=tail)
        last = request.headers.get("last-event-id")
        if last is not None:
            if not last.strip().isdigit():
                raise BadRequest(f"Last-Event-ID: expected a sequence number, got {last!r}")
            since = int(last)
        elif tail is not None:   # start just before the last `tail` events this caller sees
            newest = engine.last_seq
            recent = engine.events(since, allowed(), tail=tail)
            since = recent[0]["seq"] - 1 if recent else max(since, newest)
        return StreamingResponse(_stream(engine, since, allowed, app), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    app.state.closing = False
    app.add_middleware(_Guard, api=app, engine=engine, authorizer=authorizer, reads=reads)
    return app


async def _stream(engine, since: int, allowed, app: FastAPI):
    """Server-sent events from `since` on, as the engine records them; ends when the engine stops
    or the server is closing (`app.state.closing`, set by whoever shuts the server down, so that
    open streams do not hold its shutdown up). A client that goes away cancels this generator (at
    its next await): nothing else is touched."""
    idle = 0.0
    while True:
        batch = engine.events(since, None, 1000)
        if batch:
            since = batch[-1]["seq"]
            vms = allowed()
            out = [f"id: {e['seq']}\nevent: {e['event']}\ndata: {json.dumps(e)}\n\n" for e in batch
                   if vms is None or e.get("vm") in vms]
            if out:
                idle = 0.0
                yield "".join(out)
                continue
        if (not engine.running and since >= engine.last_seq) or getattr(app.state, "closing", False):
            return
        await asyncio.sleep(STREAM_POLL_S)
        idle += STREAM_POLL_S
        if idle >= STREAM_KEEPALIVE_S:
            idle = 0.0
            yield ": keep-alive\n\n"

