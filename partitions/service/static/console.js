// The hvsim web console's logic: signs in, polls the /v1 API once a second, follows the event
// stream, draws the selected VM's CPU history and sends the lifecycle actions the principal may use.
//
// Invariants: the page never builds HTML from server data (text nodes only); a VM's row and its
// buttons are created once and updated in place, so a click never lands on a replaced element;
// the buttons shown are the principal's actions (GET /v1/whoami), the buttons enabled are those
// the VM's state allows (the same table as partitions/vm.py) and no action of that VM is in flight.
"use strict";

(function () {
  const TOKEN_KEY = "hvsim.token";
  const POLL_MS = 1000;          // modest: one round of GETs a second
  const HOSTS_EVERY = 5;         // the host list changes rarely: every fifth round
  const EVENTS_KEPT = 200;       // the event list is bounded, latest first
  const CHART_WINDOW_NS = 60e9;  // the chart shows the last minute of simulated time

  // The lifecycle buttons: the API's action name (vms.<op>), the label, and the states that allow
  // it (partitions/vm.py's VirtualMachine._require calls).
  const ACTIONS = [
    // N.B. not from Saved: the API starts a Saved VM only when its saved state is from an earlier
    // service (the VM itself Off); Restore resumes either kind.
    { op: "start", label: "Start", from: ["Off"] },
    { op: "stop", label: "Stop", from: ["Running"] },
    { op: "turn-off", label: "Turn off", from: ["Running", "Paused", "Stopping", "Saved", "Migrating"] },
    { op: "pause", label: "Pause", from: ["Running"] },
    { op: "resume", label: "Resume", from: ["Paused"] },
    { op: "save", label: "Save", from: ["Running", "Paused"] },
    { op: "restore", label: "Restore", from: ["Saved"] },
    { op: "checkpoint", label: "Checkpoint", from: ["Running", "Paused", "Off"] },
    { op: "delete", label: "Delete", from: ["Off", "Saved"], method: "DELETE",
      confirm: (name) => `Delete VM ${name}? It goes with its saved state; its virtual disk files stay.` },
  ];

  // A live migration (datacenters only): the states VirtualMachine.freeze allows.
  const MOVE = { op: "move", label: "Move", from: ["Running", "Paused"] };

  const state = {
    principal: null,      // GET /v1/whoami
    allowed: new Set(),   // its actions
    hosts: [],            // GET /v1/hosts
    rows: new Map(),      // VM name -> {row (API), asOf (its poll's simulated time), tr, cells, buttons, move}
    selected: null,       // the VM the chart shows
    detail: null,         // GET /v1/vms/{selected}
    clock: null,
    busy: new Set(),      // VM names with an action in flight
    round: 0,             // polls since sign-in (the hosts are fetched every HOSTS_EVERY)
    pollTimer: null,
    stream: null,         // AbortController of the event stream
    lastSeq: 0,           // the last event shown (Last-Event-ID of the next connection)
    running: false,       // signed in: polling and streaming
    templates: [],        // GET /v1/templates (the new-VM form)
    lost: false,          // out of contact with the server (setConnection)
    polling: 0,           // the generation of the poll awaiting its answers (0: none)
    generation: 0,        // bumped at each sign-in and sign-out: one poll loop at a time
  };

  const $ = (id) => document.getElementById(id);

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v);
    }
    for (const c of children) node.append(c);
    return node;
  }

  // ---- the API ----------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, type, message) {
      super(message);
      this.status = status;
      this.type = type;
    }
  }

  function headers(extra) {
    const h = Object.assign({ Accept: "application/json" }, extra || {});
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) h.Authorization = "Bearer " + token;
    return h;
  }

  async function api(method, path, body) {
    const init = { method, headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }) };
    if (body !== undefined) init.body = JSON.stringify(body);
    const resp = await fetch(path, init);
    let data = null;
    const text = await resp.text();
    if (text) {
      try { data = JSON.parse(text); } catch (e) { data = null; }
    }
    if (!resp.ok) {
      const err = data && data.error;
      throw new ApiError(resp.status, err ? err.type : "HTTP " + resp.status,
                         err && err.message ? err.message : resp.status + " " + resp.statusText);
    }
    return data;
  }

  // ---- formatting --------------------------------------------------------------------------------

  function simTime(ns) {
    const ms = Math.floor(ns / 1e6);
    const h = Math.floor(ms / 3600000), m = Math.floor(ms / 60000) % 60, s = Math.floor(ms / 1000) % 60;
    const pad = (x, n) => String(x).padStart(n, "0");
    return `${pad(h, 2)}:${pad(m, 2)}:${pad(s, 2)}.${pad(ms % 1000, 3)}`;
  }

  function speedText(speed) {
    return speed === "max" || speed === null ? "as fast as possible" : `${speed}× real time`;
  }

  function bytesText(n) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return `${Number.isInteger(n) ? n : n.toFixed(1)} ${units[i]}`;
  }

  function stateClass(s) {
    return "state state-" + String(s || "unknown").toLowerCase();
  }

  // ---- messages ----------------------------------------------------------------------------------

  function showError(title, message) {
    $("error-title").textContent = title;
    $("error-message").textContent = message;
    $("error").hidden = false;
  }

  function clearError() {
    $("error").hidden = true;
  }

  // Out of contact (the server gone, or answering errors), the page greys what it shows, which is
  // no longer live, and offers no action.
  function setConnection(text, bad) {
    const c = $("connection");
    c.textContent = text;
    c.classList.toggle("bad", !!bad);
    if (state.lost === !!bad) return;
    state.lost = !!bad;
    document.body.classList.toggle("lost", state.lost);
    if (state.lost) {
      const pill = $("clock-state");
      pill.textContent = "no contact";
      pill.className = "pill pill-bad";
    }
    for (const entry of state.rows.values()) if (entry.row) updateButtons(entry);
  }

  // ---- sign-in -----------------------------------------------------------------------------------

  async function signIn() {
    let who;
    try {
      who = await api("GET", "/v1/whoami");
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) return showSignIn(sessionStorage.getItem(TOKEN_KEY)
        ? "The server did not accept this token: " + e.message : "");
      if (e instanceof ApiError) return showSignIn(e.message);
      setConnection("Cannot reach the server: retrying", true);
      setTimeout(signIn, 2000);
      return;
    }
    state.principal = who;
    state.allowed = new Set(who.actions || []);
    $("whoami").textContent = `${who.user} · ${who.role}`;
    $("sign-out").hidden = !sessionStorage.getItem(TOKEN_KEY);
    $("signin").hidden = true;
    $("main").hidden = false;
    $("clock").hidden = false;
    $("clock-controls").hidden = !state.allowed.has("clock.set");
    $("clock-step").hidden = !state.allowed.has("clock.step");
    resetView();
    loadTemplates();
    state.running = true;
    state.generation++;
    startStream();
    poll(state.generation);
  }

  function showSignIn(message) {
    stopLive();
    state.principal = null;
    $("whoami").textContent = "";
    $("sign-out").hidden = true;
    $("main").hidden = true;
    $("create").hidden = true;
    $("clock").hidden = true;
    $("clock-controls").hidden = true;
    $("signin").hidden = false;
    $("signin-message").textContent = message || "";
    $("token-input").focus();
  }

  function stopLive() {
    state.running = false;
    state.generation++;      // a poll still awaiting its answers ends there
    clearTimeout(state.pollTimer);
    if (state.stream) state.stream.abort();
    state.stream = null;
  }

  function resetView() {
    state.rows.clear();
    state.hosts = [];
    state.round = 0;
    state.lastSeq = 0;
    state.detail = null;
    state.selected = null;
    $("hosts").replaceChildren();
    $("events").replaceChildren();
  }

  // ---- polling -----------------------------------------------------------------------------------

  async function poll(generation) {
    const current = () => state.running && state.generation === generation;
    if (!current()) return;
    if (document.hidden) {     // a tab nobody looks at costs the server nothing but its stream
      state.pollTimer = setTimeout(() => poll(generation), POLL_MS);
      return;
    }
    state.polling = generation;
    try {
      const wantHosts = state.round % HOSTS_EVERY === 0;
      const [clock, vms, hosts] = await Promise.all([
        api("GET", "/v1/clock"), api("GET", "/v1/vms"), wantHosts ? api("GET", "/v1/hosts") : null]);
      if (!current()) return;
      if (hosts) { state.hosts = hosts; renderCreateHosts(); }
      state.clock = clock;
      renderClock();
      renderVms(vms, clock.now_ns);
      if (state.selected && state.allowed.has("vms.get")) {
        try {
          state.detail = await api("GET", "/v1/vms/" + encodeURIComponent(state.selected));
        } catch (e) {
          if (!(e instanceof ApiError) || e.status !== 404) throw e;
          state.detail = null;   // the VM went away between the list and its detail
        }
        if (!current()) return;
        renderDetail();
      }
      state.round++;
      setConnection("Connected");
    } catch (e) {
      if (!current()) return;
      if (e instanceof ApiError && e.status === 401) return showSignIn("The server no longer accepts this token.");
      setConnection(e instanceof ApiError ? "Server error: " + e.message : "Cannot reach the server: retrying", true);
    } finally {
      if (state.polling === generation) state.polling = 0;
    }
    if (current()) state.pollTimer = setTimeout(() => poll(generation), POLL_MS);
  }

  function renderClock() {
    const c = state.clock;
    $("clock-now").textContent = simTime(c.now_ns);
    $("clock-speed").textContent = speedText(c.speed);
    const pill = $("clock-state");
    pill.textContent = c.paused ? "paused" : "running";
    pill.className = "pill " + (c.paused ? "pill-warn" : "pill-ok");
    $("clock-pause").disabled = c.paused;
    $("clock-resume").disabled = !c.paused;
    $("clock-step").disabled = !c.paused;
    const sel = $("clock-speed-select");
    const value = c.speed === null ? "max" : String(c.speed);
    if (![...sel.options].some((o) => o.value === value)) sel.append(el("option", { value, text: value + "×" }));
    if (document.activeElement !== sel) sel.value = value;
  }

  // ---- hosts and VMs -----------------------------------------------------------------------------

  function hostOf(row) {
    if (row.Host) return row.Host;
    const h = state.hosts.find((h) => (h.vms || []).includes(row.Name));
    return h ? h.name : (state.hosts[0] ? state.hosts[0].name : "host");
  }

  function lifecycle() {
    return ACTIONS.filter((a) => state.allowed.has("vms." + a.op));
  }

  // A move needs the right to and a host to move to (a datacenter's; a single host has none).
  function movable() {
    return state.allowed.has("vms.move") && state.hosts.length > 1;
  }

  function hostSection(name) {
    const id = "host-" + name;
    let section = document.getElementById(id);
    if (section) return section;
    const cols = ["Name", "State", "CPU %", "Memory", "Uptime", "Status"];
    if (lifecycle().length || movable()) cols.push("Actions");
    const thead = el("thead", {}, el("tr", {}, ...cols.map((c) => el("th", { scope: "col", text: c }))));
    section = el("section", { class: "panel host", id, "data-testid": "host-" + name, "data-host": name },
      el("div", { class: "panel-head" },
        el("h2", { text: name }),
        el("span", { class: "muted host-facts", "data-testid": "host-facts-" + name })),
      el("div", { class: "table-wrap" },
        el("table", { class: "vms", "data-testid": "vms-" + name },
          el("caption", { class: "sr-only", text: `Virtual machines on host ${name}` }), thead, el("tbody"))),
      el("p", { class: "empty muted", text: "No virtual machines on this host that you may see." }));
    $("hosts").append(section);
    return section;
  }

  function renderHosts() {
    // Every host the API lists gets a section, even one without VMs; a section whose host left
    // (no longer listed and without VMs) goes.
    for (const h of state.hosts) {
      const section = hostSection(h.name);
      const facts = section.querySelector(".host-facts");
      const n = section.querySelector("tbody").children.length;   // the VMs shown, as they are now
      facts.textContent = `${h.logical_processors} logical processors · ${bytesText(h.memory_bytes)} · ` +
        `${n} VM${n === 1 ? "" : "s"}`;
    }
    for (const section of [...$("hosts").children]) {
      const listed = state.hosts.some((h) => h.name === section.dataset.host);
      const empty = !section.querySelector("tbody").children.length;
      if (!listed && empty) section.remove();
      // A principal may see none of a host's VMs (a Self-service user before its first VM).
      section.querySelector(".empty").hidden = !empty;
    }
  }

  function makeRow(name) {
    const cells = {
      name: el("td", { class: "name" }),
      state: el("td", {}),
      cpu: el("td", { class: "num" }),
      memory: el("td", { class: "num" }),
      uptime: el("td", { class: "num mono" }),
      status: el("td", { class: "status" }),
    };
    const select = el("button", { type: "button", class: "link", "data-testid": "select-" + name,
                                  title: "Show this VM's CPU history", text: name,
                                  onclick: () => selectVm(name) });
    cells.name.append(select);
    cells.stateBadge = el("span", { "data-testid": "vm-state-" + name });
    cells.state.append(cells.stateBadge);
    cells.cpuBar = el("span", { class: "bar-fill" });
    cells.cpuText = el("span", { class: "bar-text", "data-testid": "vm-cpu-" + name });
    cells.cpu.append(el("span", { class: "bar" }, cells.cpuBar), cells.cpuText);
    const tr = el("tr", { "data-testid": "vm-row-" + name, "data-vm": name },
      cells.name, cells.state, cells.cpu, cells.memory, cells.uptime, cells.status);
    const buttons = new Map();
    const allowed = lifecycle();
    let move = null;
    if (allowed.length || movable()) {
      const td = el("td", { class: "actions" });
      for (const a of allowed) {
        const b = el("button", { type: "button", "data-testid": `action-${a.op}-${name}`, "data-op": a.op,
                                 "aria-label": `${a.label} ${name}`, text: a.label, onclick: () => act(name, a) });
        buttons.set(a.op, b);
        td.append(b);
      }
      if (movable()) {
        // A live migration to another host of the datacenter: choosing a host sends it.
        move = el("select", { class: "move", "data-testid": `move-${name}`, "aria-label": `Move ${name} to another host`,
                              onchange: (e) => {
                                const to = e.target.value;
                                e.target.value = "";
                                if (to) act(name, MOVE, { to, kind: "live" });
                              } });
        td.append(move);
      }
      tr.append(td);
    }
    return { tr, cells, buttons, move, row: null };
  }

  function updateRow(entry, row) {
    entry.row = row;
    const { cells } = entry;
    cells.stateBadge.textContent = row.State;
    cells.stateBadge.className = stateClass(row.State);
    const cpu = Number(row["CPUUsage(%)"] || 0);
    cells.cpuBar.style.width = Math.max(0, Math.min(100, cpu)) + "%";
    cells.cpuText.textContent = cpu.toFixed(1);
    cells.memory.textContent = `${row["MemoryAssigned(M)"]} MB`;
    cells.uptime.textContent = row.Uptime;
    cells.status.textContent = row.Status || "";
    cells.status.title = row.Status || "";
    entry.tr.classList.toggle("selected", state.selected === row.Name);
    updateButtons(entry);
  }

  function updateButtons(entry) {
    const busy = state.busy.has(entry.row.Name) || state.lost;
    for (const a of ACTIONS) {
      const b = entry.buttons.get(a.op);
      if (b) b.disabled = busy || !a.from.includes(entry.row.State);
    }
    if (entry.move) {
      const host = hostOf(entry.row);
      const targets = state.hosts.map((h) => h.name).filter((h) => h !== host);
      if (entry.move.dataset.from !== host || entry.move.options.length !== targets.length + 1) {
        entry.move.replaceChildren(el("option", { value: "", text: "Move to…" }),
                                   ...targets.map((h) => el("option", { value: h, text: h })));
        entry.move.dataset.from = host;
      }
      entry.move.disabled = busy || !MOVE.from.includes(entry.row.State);
    }
  }

  // `asOf`: the simulated time the rows are (about) from; an event of a VM's state applies to its
  // row only if it is later (the stream replays old events after a (re)connect).
  function renderVms(vms, asOf) {
    renderHosts();
    const seen = new Set();
    for (const row of vms) {
      seen.add(row.Name);
      let entry = state.rows.get(row.Name);
      const host = hostOf(row);
      if (!entry) {
        entry = makeRow(row.Name);
        state.rows.set(row.Name, entry);
      }
      const tbody = hostSection(host).querySelector("tbody");
      if (entry.tr.parentNode !== tbody) tbody.append(entry.tr);   // new, or moved to another host
      entry.asOf = asOf;
      updateRow(entry, row);
    }
    for (const name of [...state.rows.keys()]) {
      if (!seen.has(name)) removeRow(name);
    }
    renderHosts();
    if (!state.selected || !state.rows.has(state.selected)) {
      const first = vms.find((r) => r.State === "Running") || vms[0];
      if (first) selectVm(first.Name, true);
      else { state.selected = null; state.detail = null; renderDetail(); }
    }
  }

  function removeRow(name) {
    const entry = state.rows.get(name);
    if (!entry) return;
    entry.tr.remove();
    state.rows.delete(name);
    if (state.selected === name) { state.selected = null; state.detail = null; renderDetail(); }
  }

  function selectVm(name, quiet) {
    state.selected = name;
    for (const [n, entry] of state.rows) entry.tr.classList.toggle("selected", n === name);
    state.detail = state.detail && state.detail.Name === name ? state.detail : null;
    renderDetail();
    if (!quiet && state.allowed.has("vms.get")) {
      api("GET", "/v1/vms/" + encodeURIComponent(name)).then((d) => {
        if (state.selected === name) { state.detail = d; renderDetail(); }
      }).catch(() => {});
    }
  }

  // ---- actions -----------------------------------------------------------------------------------

  async function act(name, action, body) {
    if (action.confirm && !window.confirm(action.confirm(name))) return;
    const entry = state.rows.get(name);
    state.busy.add(name);
    if (entry) updateButtons(entry);
    clearError();
    try {
      const path = `/v1/vms/${encodeURIComponent(name)}`;
      if (action.method === "DELETE") {
        await api("DELETE", path);
        removeRow(name);
        return;
      }
      const row = await api("POST", `${path}/${action.op}`, body || {});
      const current = state.rows.get(name);
      if (current && row && row.Name === name) updateRow(current, row);
    } catch (e) {
      showError(`${action.label} ${name}:`, e.message);
      if (e instanceof ApiError && e.status === 401) showSignIn("The server no longer accepts this token.");
    } finally {
      state.busy.delete(name);
      const current = state.rows.get(name);
      if (current && current.row) updateButtons(current);
    }
  }

  async function setClock(body) {
    clearError();
    try {
      state.clock = await api("PUT", "/v1/clock", body);
      renderClock();
    } catch (e) {
      showError("Clock:", e.message);
    }
  }

  async function stepClock() {
    clearError();
    try {
      state.clock = await api("POST", "/v1/clock/step", { by: "100ms" });
      renderClock();
    } catch (e) {
      showError("Clock:", e.message);
    }
  }

  // ---- new VMs -----------------------------------------------------------------------------------

  // The form shows the templates this principal may use (GET /v1/templates: a Self-service user's
  // own) and, in a datacenter, the host to create on.
  async function loadTemplates() {
    const form = $("create");
    form.hidden = true;
    if (!state.allowed.has("vms.create") || !state.allowed.has("templates.list")) return;
    let templates;
    try {
      templates = await api("GET", "/v1/templates");
    } catch (e) {
      return;
    }
    state.templates = templates;
    const sel = $("create-template");
    sel.replaceChildren(...templates.map((t) => el("option", { value: t.name, text: t.name, title: t.description || "" })));
    describeTemplate();
    form.hidden = templates.length === 0;
  }

  function describeTemplate() {
    const t = (state.templates || []).find((t) => t.name === $("create-template").value);
    $("create-description").textContent = t && t.description ? t.description : "";
  }

  function renderCreateHosts() {
    const sel = $("create-host");
    const names = state.hosts.map((h) => h.name);
    const several = names.length > 1;
    for (const node of document.querySelectorAll(".create-host")) node.hidden = !several;
    if ([...sel.options].map((o) => o.value).join("\n") !== names.join("\n")) {
      sel.replaceChildren(...names.map((n) => el("option", { value: n, text: n })));
    }
  }

  async function createVm(e) {
    e.preventDefault();
    const name = $("create-name").value.trim();
    const body = { template: $("create-template").value, name };
    if (state.hosts.length > 1) body.host = $("create-host").value;
    clearError();
    $("create-submit").disabled = true;
    try {
      const row = await api("POST", "/v1/vms", body);
      $("create-name").value = "";
      const entry = makeRow(row.Name);
      state.rows.set(row.Name, entry);
      hostSection(hostOf(row)).querySelector("tbody").append(entry.tr);
      updateRow(entry, row);
      renderHosts();
      selectVm(row.Name);
      state.round = 0;          // the next poll fetches the hosts again
    } catch (err) {
      showError(`Create ${name}:`, err.message);
    } finally {
      $("create-submit").disabled = false;
    }
  }

  // ---- the event stream --------------------------------------------------------------------------

  // EventSource cannot send an Authorization header, so the stream is read with fetch() and parsed
  // here (text/event-stream: "field: value" lines, a blank line ends an event). It reconnects from
  // the last sequence number seen (Last-Event-ID), so a dropped connection loses nothing the
  // server's ring still holds.
  async function startStream() {
    const ctl = new AbortController();
    state.stream = ctl;
    let delay = 1000;
    while (state.running && state.stream === ctl) {
      try {
        const h = headers({ Accept: "text/event-stream" });
        if (state.lastSeq) h["Last-Event-ID"] = String(state.lastSeq);
        const url = state.lastSeq ? `/v1/events?follow=true&since=${state.lastSeq}`
          : `/v1/events?follow=true&tail=${EVENTS_KEPT}`;   // the list shows EVENTS_KEPT: not the whole ring
        const resp = await fetch(url, { headers: h, signal: ctl.signal });
        if (!resp.ok) {
          if (resp.status === 401) return showSignIn("The server no longer accepts this token.");
          if (resp.status === 403) { setStream("not allowed", "pill-warn"); return; }
          throw new Error("HTTP " + resp.status);
        }
        setStream("live", "pill-ok");
        delay = 1000;
        await readStream(resp.body.getReader());
      } catch (e) {
        if (ctl.signal.aborted) return;
      }
      if (!state.running || state.stream !== ctl) return;
      setStream("reconnecting", "pill-warn");
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 8000);
    }
  }

  function setStream(text, cls) {
    const s = $("stream-state");
    s.textContent = text;
    s.className = "pill " + cls;
  }

  async function readStream(reader) {
    const decoder = new TextDecoder();
    let buffer = "";
    let fields = { data: [] };
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      let nl;
      while ((nl = buffer.search(/\r\n|\r|\n/)) >= 0) {
        const line = buffer.slice(0, nl);
        buffer = buffer.slice(nl + (buffer.startsWith("\r\n", nl) ? 2 : 1));
        if (line === "") {
          if (fields.data.length) dispatch(fields);
          fields = { data: [] };
        } else if (!line.startsWith(":")) {
          const colon = line.indexOf(":");
          const key = colon < 0 ? line : line.slice(0, colon);
          let val = colon < 0 ? "" : line.slice(colon + 1);
          if (val.startsWith(" ")) val = val.slice(1);
          if (key === "data") fields.data.push(val);
          else fields[key] = val;
        }
      }
    }
  }

  function dispatch(fields) {
    let ev;
    try { ev = JSON.parse(fields.data.join("\n")); } catch (e) { return; }
    const seq = Number(ev.seq || fields.id || 0);
    if (seq && seq <= state.lastSeq) return;   // a replay after a reconnect
    if (seq) state.lastSeq = seq;
    addEvent(ev, fields.event || ev.event);
    // A state change shows at once, not at the next poll.
    if (ev.event === "vm.state" && ev.vm && state.rows.has(ev.vm)) {
      const entry = state.rows.get(ev.vm);
      if (entry.row && !(ev.time_ns <= entry.asOf)) {   // the stream is in order: later ones win
        updateRow(entry, Object.assign({}, entry.row, { State: ev.new }));
        if (ev.vm === state.selected) renderDetail();
      }
    }
  }

  const SKIP = new Set(["seq", "time_ns", "t_ns", "event", "vm", "host"]);

  function addEvent(ev, name) {
    const list = $("events");
    const details = Object.entries(ev).filter(([k]) => !SKIP.has(k)).map(([k, v]) =>
      `${k}=${typeof v === "object" && v !== null ? JSON.stringify(v) : v}`);
    const t = ev.time_ns !== undefined ? ev.time_ns : ev.t_ns;
    const li = el("li", { class: "event", "data-testid": "event", "data-event": name || "",
                          "data-seq": String(ev.seq || "") },
      el("span", { class: "event-time mono", text: t !== undefined ? simTime(t) : "" }),
      el("span", { class: "event-name", text: name || "" }),
      el("span", { class: "event-vm", text: ev.vm ? ev.vm + (ev.host ? "@" + ev.host : "") : (ev.host || "") }),
      el("span", { class: "event-details", text: details.join("  ") }));
    if (name && (/(failed|abort)$/.test(name) || name === "vm.crashed")) li.classList.add("event-bad");
    li.dataset.match = `${name || ""} ${ev.vm || ""} ${ev.host || ""}`.toLowerCase();
    li.hidden = !matches(li);
    list.prepend(li);
    while (list.children.length > EVENTS_KEPT) list.lastChild.remove();
  }

  // The filter hides events (it keeps them: clearing it shows the last EVENTS_KEPT again).
  function matches(li) {
    const words = $("events-filter").value.trim().toLowerCase().split(/\s+/).filter(Boolean);
    return words.every((w) => li.dataset.match.includes(w));
  }

  function applyFilter() {
    for (const li of $("events").children) li.hidden = !matches(li);
  }

  // ---- the CPU chart -----------------------------------------------------------------------------

  function niceStep(span, ticks) {
    const raw = span / ticks;
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    for (const m of [1, 2, 5, 10]) if (m * mag >= raw) return m * mag;
    return 10 * mag;
  }

  function renderDetail() {
    const d = state.detail;
    $("detail-title").textContent = state.selected ? `CPU usage · ${state.selected}` : "CPU usage";
    const facts = $("detail-facts");
    facts.replaceChildren();
    if (d) {
      const add = (k, v) => facts.append(el("dt", { text: k }), el("dd", { text: v }));
      const entry = state.rows.get(d.Name);
      add("State", entry && entry.row ? entry.row.State : d.State);   // the row may be newer (an event)
      if (d.processors !== undefined) add("Processors", String(d.processors));
      if (d.memory_bytes !== undefined) add("Memory", bytesText(d.memory_bytes));
      add("Host", d.Host || hostOf(d));
      if (d.Owner) add("Owner", d.Owner);
      const names = (xs) => (xs || []).map((x) => typeof x === "string" ? x : (x.name || x.checkpoint || JSON.stringify(x)));
      add("Checkpoints", names(d.checkpoints).join(", ") || "none");
      if (d.devices) add("Devices", names(d.devices).join(", ") || "none");
    }
    drawChart($("cpu-chart"), d && d.cpu ? d.cpu : []);
  }

  function drawChart(canvas, samples) {
    const cssW = canvas.clientWidth || 600, cssH = canvas.clientHeight || 220;
    const dpr = window.devicePixelRatio || 1;
    if (canvas.width !== Math.round(cssW * dpr) || canvas.height !== Math.round(cssH * dpr)) {
      canvas.width = Math.round(cssW * dpr);
      canvas.height = Math.round(cssH * dpr);
    }
    const g = canvas.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, cssW, cssH);
    canvas.dataset.samples = String(samples.length);

    const css = getComputedStyle(document.documentElement);
    const ink = css.getPropertyValue("--ink-muted").trim() || "#666";
    const grid = css.getPropertyValue("--grid").trim() || "#e5e5e5";
    const line = css.getPropertyValue("--accent").trim() || "#1f6feb";
    const fill = css.getPropertyValue("--accent-soft").trim() || "rgba(31,111,235,0.15)";

    const pad = { left: 48, right: 12, top: 12, bottom: 36 };
    const w = cssW - pad.left - pad.right, h = cssH - pad.top - pad.bottom;
    const tEnd = samples.length ? samples[samples.length - 1][0] : (state.clock ? state.clock.now_ns : 0);
    const t0 = Math.max(0, tEnd - CHART_WINDOW_NS);
    const t1 = Math.max(tEnd, t0 + 10e9);
    const x = (t) => pad.left + (t - t0) / (t1 - t0) * w;
    const y = (p) => pad.top + (1 - Math.max(0, Math.min(100, p)) / 100) * h;

    g.font = "11px system-ui, sans-serif";
    g.lineWidth = 1;
    g.strokeStyle = grid;
    g.fillStyle = ink;
    g.textAlign = "right";
    g.textBaseline = "middle";
    for (let p = 0; p <= 100; p += 25) {
      g.beginPath(); g.moveTo(pad.left, y(p) + 0.5); g.lineTo(pad.left + w, y(p) + 0.5); g.stroke();
      g.fillText(String(p), pad.left - 6, y(p));
    }
    const step = niceStep((t1 - t0) / 1e9, 6);
    g.textAlign = "center";
    g.textBaseline = "top";
    for (let s = Math.ceil(t0 / 1e9 / step) * step; s <= t1 / 1e9 + 1e-9; s += step) {
      const xs = Math.round(x(s * 1e9)) + 0.5;
      g.beginPath(); g.moveTo(xs, pad.top); g.lineTo(xs, pad.top + h); g.stroke();
      g.fillText(Number(s.toFixed(3)).toString(), xs, pad.top + h + 4);
    }
    g.fillText("simulated time (s)", pad.left + w / 2, pad.top + h + 20);
    g.save();
    g.translate(12, pad.top + h / 2);
    g.rotate(-Math.PI / 2);
    g.textBaseline = "middle";
    g.fillText("CPU %", 0, 0);
    g.restore();

    const shown = samples.filter(([t]) => t >= t0);
    if (!shown.length) {
      g.textAlign = "center";
      g.textBaseline = "middle";
      g.fillText(state.selected ? "no samples yet" : "no VM selected", pad.left + w / 2, pad.top + h / 2);
      $("detail-now").textContent = "";
      return;
    }
    g.beginPath();
    g.moveTo(x(shown[0][0]), y(0));
    for (const [t, p] of shown) g.lineTo(x(t), y(p));
    g.lineTo(x(shown[shown.length - 1][0]), y(0));
    g.closePath();
    g.fillStyle = fill;
    g.fill();
    g.beginPath();
    shown.forEach(([t, p], i) => (i ? g.lineTo(x(t), y(p)) : g.moveTo(x(t), y(p))));
    g.strokeStyle = line;
    g.lineWidth = 1.75;
    g.lineJoin = "round";
    g.stroke();
    const [tl, pl] = shown[shown.length - 1];
    $("detail-now").textContent = `${pl.toFixed(1)} % of the host's logical processors at ${simTime(tl)}`;
    canvas.setAttribute("aria-label", `CPU usage of ${state.selected} over simulated time: ` +
                        `${pl.toFixed(1)} % at ${simTime(tl)}`);
  }

  // ---- wiring ------------------------------------------------------------------------------------

  function init() {
    $("signin-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const token = $("token-input").value.trim();
      if (!token) return;
      sessionStorage.setItem(TOKEN_KEY, token);
      $("token-input").value = "";
      signIn();
    });
    $("sign-out").addEventListener("click", () => {
      stopLive();
      sessionStorage.removeItem(TOKEN_KEY);
      clearError();
      signIn();
    });
    $("error-dismiss").addEventListener("click", clearError);
    $("events-filter").addEventListener("input", applyFilter);
    $("create").addEventListener("submit", createVm);
    $("create-template").addEventListener("change", describeTemplate);
    $("clock-pause").addEventListener("click", () => setClock({ paused: true }));
    $("clock-resume").addEventListener("click", () => setClock({ paused: false }));
    $("clock-step").addEventListener("click", stepClock);
    $("clock-speed-select").addEventListener("change", (e) => {
      const v = e.target.value;
      setClock({ speed: v === "max" ? "max" : Number(v) });
    });
    window.addEventListener("resize", () => renderDetail());
    document.addEventListener("visibilitychange", () => {
      // Poll at once on coming back, unless a poll is on its way (one loop at a time).
      if (!document.hidden && state.running && state.polling !== state.generation) {
        clearTimeout(state.pollTimer);
        poll(state.generation);
      }
    });
    signIn();
  }

  // For the browser tests and the curious: the console's state, read-only by convention.
  window.hvsimConsole = { state };
  init();
})();
