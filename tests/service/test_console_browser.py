"""The web console (partitions/service/static) in a real headless browser: Playwright driving
Debian's Chromium against a real server (the engine over the default host, the FastAPI app, uvicorn
on a free loopback port), checking what it shows against what the API says."""
from __future__ import annotations

import json
import re
import shutil
import socket
import struct
import threading
import time
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass

import pytest
from playwright.sync_api import expect, sync_playwright

# The page polls once a second and the machine may be busy: give each expectation room (a
# deadline, not a delay: they pass as soon as the page shows what they expect).
expect.set_options(timeout=15_000)

# Actions the console offers and the API actions behind them (partitions/service/static/console.js).
BUTTONS = ("start", "stop", "turn-off", "pause", "resume", "save", "restore", "checkpoint", "delete")


# ---- a real server --------------------------------------------------------------------------------

@dataclass
class Served:
    url: str
    tokens: dict[str, str]     # user -> bearer token ({} without --users)

    def call(self, method: str, path: str, body=None, *, user: str | None = None) -> tuple[int, object]:
        """(status, JSON answer) of one API request, as the given user (None: no token)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if user is not None:
            req.add_header("Authorization", f"Bearer {self.tokens[user]}")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"null")

    def get(self, path: str, *, user: str | None = None):
        status, doc = self.call("GET", path, user=user)
        assert status == 200, (path, status, doc)
        return doc

    def state(self, vm: str, *, user: str | None = None) -> str:
        return self.get(f"/v1/vms/{vm}", user=user)["State"]

    def wait_state(self, vm: str, state: str, *, user: str | None = None, timeout: float = 15.0) -> None:
        """Poll the API until `vm` is in `state` (a deadline, not a sleep: the simulation moves
        at its own pace on a loaded machine)."""
        deadline = time.monotonic() + timeout
        while (now := self.state(vm, user=user)) != state:
            assert time.monotonic() < deadline, f"vm {vm!r} is {now}, not {state}, after {timeout} s"
            time.sleep(0.05)

    def ensure_running(self, vm: str, *, user: str | None = None) -> None:
        state = self.state(vm, user=user)
        if state in ("Off", "Saved"):
            status, doc = self.call("POST", f"/v1/vms/{vm}/start", {}, user=user)
            assert status == 200, doc
        elif state == "Paused":
            status, doc = self.call("POST", f"/v1/vms/{vm}/resume", {}, user=user)
            assert status == 200, doc
        self.wait_state(vm, "Running", user=user)


def _serve(tmp_path, *, users: dict[str, str] | None = None, paused: bool = False, speed: float = 1.0):
    """A generator fixture body: the service over the default host, its console's URL and tokens;
    the server and the engine are stopped at the end, their threads joined."""
    import uvicorn

    from partitions.config import default_config
    from partitions.service import auth
    from partitions.service.api import create_app
    from partitions.service.engine import Engine

    tokens = {}
    if users is None:
        authorizer = auth.Authorizer.local(audit=tmp_path / "audit.jsonl")
    else:
        records = {}
        for name, role in users.items():
            token, token_id, digest = auth.new_token()
            tokens[name] = token
            records[name] = auth.User(name, role, token_id, digest)
        auth.write_users(tmp_path / "users.toml", records)
        authorizer = auth.Authorizer.from_file(tmp_path / "users.toml", audit=tmp_path / "audit.jsonl")
    engine = Engine(default_config(tmp_path), seed=7, workdir=tmp_path / "state", speed=speed, paused=paused)
    engine.start()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server = uvicorn.Server(uvicorn.Config(create_app(engine, authorizer), log_level="warning",
                                           timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="console-test-uvicorn")
    try:
        sock.bind(("127.0.0.1", 0))
        thread.start()
        deadline = time.monotonic() + 20
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        yield Served(f"http://127.0.0.1:{sock.getsockname()[1]}", tokens)
    finally:
        server.should_exit = True
        if thread.ident is not None:
            thread.join(15)
        sock.close()
        engine.stop()
        authorizer.close()
        assert not thread.is_alive(), "the server's thread did not stop"


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """A service without --users (loopback clients are the local Administrator), its clock running
    at half of real time (enough to see it move, and it leaves the CPU to the browser)."""
    yield from _serve(tmp_path_factory.mktemp("console-local"), speed=0.5)


@pytest.fixture(scope="module")
def with_users(tmp_path_factory):
    """A service with a users file (an Administrator and a Viewer), paused at time 0."""
    yield from _serve(tmp_path_factory.mktemp("console-users"), paused=True,
                      users={"alice": "Administrator", "victor": "Viewer"})


# ---- the browser ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("Debian's chromium is not installed (tools/ensure-debian-packages installs it; "
                    "`make test` runs that): the console's browser tests need it")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser):
    """A fresh browser context (its own sessionStorage) and page; a script error on the page
    fails the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    pg = context.new_page()
    errors = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    yield pg
    context.close()
    assert errors == [], f"script errors on the console page: {errors}"


def sign_in(page, served: Served, user: str) -> None:
    page.goto(served.url + "/console/")
    expect(page.get_by_test_id("signin")).to_be_visible()
    page.get_by_test_id("token-input").fill(served.tokens[user])
    page.get_by_test_id("signin-submit").click()
    expect(page.get_by_test_id("whoami")).to_contain_text(user)


def chart_ink(page) -> int:
    """How many pixels of the CPU chart are drawn in the chart's line colour (--accent)."""
    return page.evaluate("""() => {
        const c = document.querySelector('[data-testid=cpu-chart]');
        const accent = getComputedStyle(document.documentElement).getPropertyValue('--accent').trim();
        const probe = document.createElement('canvas').getContext('2d');
        probe.fillStyle = accent; probe.fillRect(0, 0, 1, 1);
        const [r, g, b] = probe.getImageData(0, 0, 1, 1).data;
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0;
        for (let i = 0; i < d.length; i += 4)
            if (d[i] === r && d[i + 1] === g && d[i + 2] === b && d[i + 3] > 200) n++;
        return n;
    }""")


def png_colours(data: bytes, *, enough: int | None = None) -> set[tuple[int, ...]]:
    """The distinct colours of an 8-bit RGB or RGBA, non-interlaced PNG (what Chromium's screenshots
    are): its chunks, zlib and the five scanline filters, with the stdlib only. With `enough`, it
    stops decoding after the row where it has seen that many."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, ihdr = 8, [], None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    width, height, depth, colour, _, _, interlace = ihdr
    assert depth == 8 and colour in (2, 6) and interlace == 0, f"unexpected PNG layout {ihdr}"
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(b"".join(idat))
    stride = width * bpp
    # Up adds the row above bytewise: done on whole rows as integers, the carries kept inside
    # each byte (the low seven bits add, the top bit is the XOR of both tops and that carry).
    low, high = int.from_bytes(b"\x7f" * stride, "big"), int.from_bytes(b"\x80" * stride, "big")
    prev = bytearray(stride)
    colours = set()
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        if kind == 1:      # Sub
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 0xFF
        elif kind == 2:    # Up
            a, b = int.from_bytes(line, "big"), int.from_bytes(prev, "big")
            line = bytearray((((a & low) + (b & low)) ^ ((a ^ b) & high)).to_bytes(stride, "big"))
        elif kind == 3:    # Average
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 0xFF
        elif kind == 4:    # Paeth
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b, c = prev[i], (prev[i - bpp] if i >= bpp else 0)
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        colours.update(zip(*(line[k::bpp] for k in range(bpp))))
        if enough is not None and len(colours) >= enough:
            break
        prev = line
    return colours


def test_png_colours_counts_the_colours_of_each_filter():
    """The screenshot check's decoder: a 3x2 image written with every filter type (bytes that
    wrap around 256 included) decodes to the colours it was made of."""
    rows = [bytes.fromhex("102030 ff0000 102030"), bytes.fromhex("0000ff 010203 ffffff")]
    made_of = {(0x10, 0x20, 0x30), (0xFF, 0, 0), (0, 0, 0xFF), (1, 2, 3), (0xFF, 0xFF, 0xFF)}

    def predict(kind, a, b, c):     # left, above, above-left (PNG's filter predictors)
        p = a + b - c
        paeth = a if abs(p - a) <= abs(p - b) and abs(p - a) <= abs(p - c) else b if abs(p - b) <= abs(p - c) else c
        return (0, a, b, (a + b) >> 1, paeth)[kind]

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    for kinds in ((0, 0), (1, 2), (3, 4), (4, 3)):
        raw, prev = b"", bytes(9)
        for kind, line in zip(kinds, rows):
            raw += bytes([kind]) + bytes(
                (v - predict(kind, line[i - 3] if i >= 3 else 0, prev[i], prev[i - 3] if i >= 3 else 0)) & 0xFF
                for i, v in enumerate(line))
            prev = line
        png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 3, 2, 8, 2, 0, 0, 0))
               + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
        assert png_colours(png) == made_of, kinds
        assert len(png_colours(png, enough=2)) == 2


# ---- the tests ------------------------------------------------------------------------------------

def test_console_shows_the_default_hosts_vms_live(local, page):
    page.goto(local.url + "/")
    expect(page).to_have_url(re.compile(r"/console/$"))
    hosts = local.get("/v1/hosts")
    rows = local.get("/v1/vms")
    assert sorted(r["Name"] for r in rows) == ["batch", "db", "web"]
    host = hosts[0]["name"]
    table = page.get_by_test_id(f"vms-{host}")
    expect(table).to_be_visible()
    assert [th.text_content() for th in table.locator("th").all()] == \
        ["Name", "State", "CPU %", "Memory", "Uptime", "Status", "Actions"]
    for row in rows:
        expect(page.get_by_test_id(f"vm-row-{row['Name']}")).to_be_visible()
        expect(page.get_by_test_id(f"vm-row-{row['Name']}")).to_contain_text(f"{row['MemoryAssigned(M)']} MB")
    # The page follows the simulation: its clock moves, and it shows what the API shows.
    clock = page.get_by_test_id("clock-now")
    expect(clock).to_have_text(re.compile(r"^\d\d:\d\d:\d\d\.\d{3}$"))
    first = clock.text_content()
    expect(clock).not_to_have_text(first)
    expect(page.get_by_test_id("clock-speed")).to_have_text("0.5× real time")
    expect(page.get_by_test_id("vm-state-web")).to_have_text(local.state("web"))
    expect(page.get_by_test_id("events").locator("li")).not_to_have_count(0)


def enabled_buttons(page, vm: str) -> set[str]:
    return set(page.get_by_test_id(f"vm-row-{vm}").locator("button[data-op]:enabled").evaluate_all(
        "buttons => buttons.map(b => b.dataset.op)"))


def test_start_and_stop_clicks_change_the_vms_state_through_the_api(local, page):
    local.ensure_running("web")
    page.goto(local.url + "/console/")
    stop, start = page.get_by_test_id("action-stop-web"), page.get_by_test_id("action-start-web")
    expect(stop).to_be_enabled()
    expect(start).to_be_disabled()
    assert enabled_buttons(page, "web") == {"stop", "turn-off", "pause", "save", "checkpoint"}
    stop.click()
    local.wait_state("web", "Off")
    expect(page.get_by_test_id("vm-state-web")).to_have_text("Off")
    expect(stop).to_be_disabled()
    expect(start).to_be_enabled()
    assert enabled_buttons(page, "web") == {"start", "checkpoint", "delete"}
    start.click()
    local.wait_state("web", "Running")
    expect(page.get_by_test_id("vm-state-web")).to_have_text("Running")
    expect(page.get_by_test_id("error")).to_be_hidden()
    # Both changes reached the event list, latest first.
    events = page.get_by_test_id("events").locator("li[data-event='vm.state']", has_text="web")
    expect(events.first).to_contain_text("new=Running")
    seqs = [int(s) for s in page.get_by_test_id("events").locator("li").evaluate_all(
        "items => items.map(li => li.dataset.seq)")]
    assert seqs == sorted(seqs, reverse=True) and len(seqs) == len(set(seqs))


def test_an_action_the_state_forbids_shows_the_apis_message(local, page):
    """A view that is out of date (another client turned the VM off after the page last looked)
    offers Stop; the click reaches the API, which refuses, and the page says why in its words."""
    local.ensure_running("web")
    stale, served_stale = {}, []

    def vms_list(route):
        if "body" in stale:
            served_stale.append(1)
            route.fulfill(status=200, content_type="application/json", body=stale["body"])
        else:
            route.continue_()
    page.route(re.compile(r"/v1/vms$"), vms_list)
    page.route(re.compile(r"/v1/events"), lambda route: route.abort())   # it would tell the page
    page.goto(local.url + "/console/")
    expect(page.get_by_test_id("action-stop-web")).to_be_enabled()
    stale["body"] = json.dumps(local.get("/v1/vms"))                      # web Running
    status, _ = local.call("POST", "/v1/vms/web/turn-off", {})
    assert status == 200
    status, refusal = local.call("POST", "/v1/vms/web/stop", {})
    assert status == 409 and refusal["error"]["type"] == "InvalidTransition"
    message = refusal["error"]["message"]
    assert "web" in message and "Off" in message
    # Wait until the page has polled again (stale), so no answer from before the turn-off is
    # still on its way, then act on what it shows.
    deadline = time.monotonic() + 10
    while not served_stale:       # page.wait_for_timeout lets Playwright run the route handler
        assert time.monotonic() < deadline, "the page stopped polling"
        page.wait_for_timeout(50)
    expect(page.get_by_test_id("vm-state-web")).to_have_text("Running")
    page.get_by_test_id("action-stop-web").click()
    expect(page.get_by_test_id("error")).to_be_visible()
    expect(page.get_by_test_id("error-message")).to_have_text(message)
    expect(page.get_by_test_id("error-title")).to_have_text("Stop web:")
    assert local.state("web") == "Off"    # a refused request changes nothing
    local.ensure_running("web")


def test_out_of_contact_the_page_says_so_and_offers_no_action(local, page):
    local.ensure_running("web")
    page.goto(local.url + "/console/")
    stop = page.get_by_test_id("action-stop-web")
    expect(stop).to_be_enabled()
    api_paths = re.compile(r"/v1/")
    page.route(api_paths, lambda route: route.abort())      # as a server that went away
    expect(page.get_by_test_id("connection")).to_have_text("Cannot reach the server: retrying")
    expect(page.get_by_test_id("clock-state")).to_have_text("no contact")
    expect(page.locator("button[data-op]:enabled")).to_have_count(0)
    page.unroute(api_paths)
    expect(page.get_by_test_id("connection")).to_have_text("Connected")
    expect(page.get_by_test_id("clock-state")).to_have_text("running")
    expect(stop).to_be_enabled()


def test_a_vm_created_from_a_template_and_deleted_in_the_console(local, page):
    page.goto(local.url + "/console/")
    expect(page.get_by_test_id("create")).to_be_visible()
    templates = [t["name"] for t in local.get("/v1/templates")]
    assert page.get_by_test_id("create-template").locator("option").all_text_contents() == templates
    page.get_by_test_id("create-template").select_option("small")
    page.get_by_test_id("create-name").fill("from-console")
    page.get_by_test_id("create-submit").click()
    expect(page.get_by_test_id("vm-state-from-console")).to_have_text("Off")
    row = local.get("/v1/vms/from-console")
    assert (row["State"], row["Owner"], row["processors"]) == ("Off", "local", 1)
    # The same name again: the API's refusal, on the page.
    page.get_by_test_id("create-name").fill("from-console")
    page.get_by_test_id("create-submit").click()
    expect(page.get_by_test_id("error-message")).to_contain_text("from-console")
    # Delete asks first; a dismissed question changes nothing, an accepted one deletes.
    page.once("dialog", lambda dialog: dialog.dismiss())
    page.get_by_test_id("action-delete-from-console").click()
    expect(page.get_by_test_id("action-delete-from-console")).to_be_enabled()
    assert local.state("from-console") == "Off"
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_test_id("action-delete-from-console").click()
    expect(page.get_by_test_id("vm-row-from-console")).to_have_count(0)
    assert local.call("GET", "/v1/vms/from-console")[0] == 404


def test_a_viewer_signs_in_and_sees_no_action_buttons(with_users, page):
    page.goto(with_users.url + "/console/")
    expect(page.get_by_test_id("signin")).to_be_visible()
    expect(page.get_by_test_id("hosts")).to_be_hidden()
    # A token the server does not know: its refusal is shown, nothing else.
    page.get_by_test_id("token-input").fill("hvsim_00000000_" + "x" * 43)
    page.get_by_test_id("signin-submit").click()
    expect(page.get_by_test_id("signin-message")).to_contain_text("did not accept")
    page.get_by_test_id("token-input").fill(with_users.tokens["victor"])
    page.get_by_test_id("signin-submit").click()
    expect(page.get_by_test_id("whoami")).to_have_text("victor · Viewer")
    for name in ("web", "db", "batch"):
        expect(page.get_by_test_id(f"vm-row-{name}")).to_be_visible()
    assert "Actions" not in page.locator("th").all_text_contents()
    expect(page.locator("td.actions button, button[data-op]")).to_have_count(0)
    expect(page.get_by_test_id("clock-pause")).to_be_hidden()
    expect(page.get_by_test_id("create")).to_be_hidden()
    # The same page signed in as the Administrator shows every lifecycle button of every VM.
    page.get_by_test_id("sign-out").click()
    page.get_by_test_id("token-input").fill(with_users.tokens["alice"])
    page.get_by_test_id("signin-submit").click()
    expect(page.get_by_test_id("whoami")).to_have_text("alice · Administrator")
    expect(page.locator("button[data-op]")).to_have_count(3 * len(BUTTONS))
    for op in BUTTONS:
        expect(page.get_by_test_id(f"action-{op}-web")).to_be_visible()


def test_event_stream_sends_the_token_and_resumes_after_the_last_event(with_users, page):
    """The stream is read with fetch() (EventSource cannot send the token); when it ends, the page
    connects again with Last-Event-ID, and shows each event once."""
    first = with_users.get("/v1/events?limit=3", user="alice")
    assert len(first) == 3
    seen = []

    def stream(route):
        seen.append((route.request.headers.get("authorization"), route.request.headers.get("last-event-id")))
        if len(seen) == 1:     # the first connection ends after three events
            body = "".join(f"id: {e['seq']}\nevent: {e['event']}\ndata: {json.dumps(e)}\n\n" for e in first)
            route.fulfill(status=200, headers={"Content-Type": "text/event-stream"}, body=body)
        else:
            route.continue_()
    page.route(re.compile(r"/v1/events"), stream)
    sign_in(page, with_users, "alice")
    page.wait_for_function(f"() => window.hvsimConsole.state.lastSeq > {first[-1]['seq']}", timeout=15_000)
    token = f"Bearer {with_users.tokens['alice']}"
    assert seen[:2] == [(token, None), (token, str(first[-1]["seq"]))]
    expect(page.get_by_test_id("stream-state")).to_have_text("live")
    seqs = page.get_by_test_id("events").locator("li").evaluate_all("items => items.map(li => li.dataset.seq)")
    assert len(seqs) == len(set(seqs))


def test_clock_controls_step_a_paused_clock(with_users, page):
    sign_in(page, with_users, "alice")
    clock = with_users.get("/v1/clock", user="alice")
    assert clock["paused"]
    expect(page.get_by_test_id("clock-state")).to_have_text("paused")
    expect(page.get_by_test_id("clock-pause")).to_be_disabled()
    page.get_by_test_id("clock-step").click()
    expect(page.get_by_test_id("clock-now")).to_have_text(
        time.strftime("%H:%M:%S", time.gmtime((clock["now_ns"] + 100_000_000) // 10**9))
        + f".{(clock['now_ns'] + 100_000_000) // 10**6 % 1000:03d}")
    assert with_users.get("/v1/clock", user="alice")["now_ns"] == clock["now_ns"] + 100_000_000


def test_cpu_chart_draws_after_the_clock_advances(with_users, page):
    sign_in(page, with_users, "alice")
    page.get_by_test_id("select-web").click()
    chart = page.get_by_test_id("cpu-chart")
    before = len(with_users.get("/v1/vms/web", user="alice")["cpu"])
    expect(chart).to_have_attribute("data-samples", str(before))
    ink_before = chart_ink(page)
    status, doc = with_users.call("POST", "/v1/clock/step", {"by": "300ms"}, user="alice")
    assert status == 200, doc
    after = len(with_users.get("/v1/vms/web", user="alice")["cpu"])
    assert after > before
    expect(chart).to_have_attribute("data-samples", str(after))
    assert chart_ink(page) > ink_before
    expect(page.get_by_test_id("detail-now")).to_contain_text("%")


def test_screenshot_of_the_console_is_not_blank(local, page):
    page.goto(local.url + "/console/")
    expect(page.get_by_test_id("vm-row-web")).to_be_visible()
    expect(page.get_by_test_id("cpu-chart")).to_have_attribute("data-samples", re.compile(r"^([2-9]|\d\d+)$"))
    shot = page.screenshot()
    assert shot, "an empty screenshot"
    assert len(png_colours(shot, enough=100)) >= 100
    # The measure tells a page from an empty one.
    page.goto("about:blank")
    assert len(png_colours(page.screenshot())) == 1
