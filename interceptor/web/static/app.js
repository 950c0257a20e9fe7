// The flow UI: a list paged by the store's seq, live through Server-Sent Events, and one
// flow's detail. Plain JavaScript on purpose: nothing to build, nothing to fetch at install.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { filter: "", oldest: null, newest: 0, selected: null, source: null, rows: new Map() };

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

async function api(path, options = {}) {
  const resp = await fetch(path, { credentials: "same-origin", ...options });
  const data = await resp.json().catch(() => ({ error: `${resp.status} ${resp.statusText}` }));
  if (!resp.ok) throw new Error(data.error || `${resp.status}`);
  return data;
}

function notice(text, error = false) {
  const box = $("notice");
  box.textContent = text;
  box.className = error ? "error" : "";
  box.hidden = !text;
}

const pad = (n, w = 2) => String(n).padStart(w, "0");
function clock(t) {
  const d = new Date(t * 1000);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}
function size(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}
const ms = (s) => (s < 1 ? `${(s * 1000).toFixed(1)} ms` : `${s.toFixed(2)} s`);

function row(flow) {
  const tr = el("tr", { "data-id": flow.id },
    el("td", { class: "t", text: clock(flow.started) }),
    el("td", {}, el("span", { class: `kind ${flow.kind}`, text: flow.kind + (flow.is_replay ? " ↻" : "") })),
    el("td", { class: "c", text: flow.client }),
    el("td", { text: flow.method || "-" }),
    el("td", { class: "u", text: flow.url || "-", title: flow.url || "" }),
    el("td", { class: `s${Math.floor(flow.status / 100)}`, text: flow.status ? String(flow.status) : (flow.error ? "error" : "-"), title: flow.error || "" }),
    el("td", { class: "n", text: size(flow.response_size) }),
    el("td", { class: "n", text: ms(flow.ended - flow.started) }),
  );
  tr.addEventListener("click", () => show(flow.id));
  if (flow.id === state.selected) tr.classList.add("selected");
  return tr;
}

function query(extra = {}, filter = state.filter) {
  const params = new URLSearchParams(extra);
  if (filter) params.set("filter", filter);
  const text = params.toString();
  return text ? `?${text}` : "";
}

// One page of the list: newer than nothing (the first page, replacing the list) or older than
// the last row (`older`). `filter` is the expression to list with; the state takes it only once
// the store accepted it, so a bad filter leaves the list, its paging and its stream as they were.
// True when the page came.
async function load(older = false, filter = state.filter) {
  const params = older && state.oldest !== null ? { before: state.oldest } : {};
  let page;
  try {
    page = await api(`/api/flows${query(params, filter)}`);
  } catch (e) {
    $("filter").classList.add("bad");
    notice(e.message, true);
    return false;
  }
  $("filter").classList.remove("bad");
  notice("");
  const body = $("flows").tBodies[0];
  if (!older) {
    state.filter = filter;
    state.oldest = null;
    state.newest = page.flows.length ? page.flows[0].seq : 0;
    body.replaceChildren();
  }
  for (const flow of page.flows) body.append(row(flow));
  if (page.flows.length) state.oldest = page.flows[page.flows.length - 1].seq;
  $("older").hidden = !page.more;
  $("empty").hidden = body.rows.length > 0;
  $("har-all").href = `/api/har${query()}`;
  return true;
}

function listen() {
  if (state.source) state.source.close();
  const after = state.newest ? { after: state.newest } : {};
  const source = new EventSource(`/api/events${query(after)}`);
  state.source = source;
  source.onopen = () => { $("live").textContent = "live"; $("live").className = "live on"; };
  source.onerror = () => { $("live").textContent = "reconnecting"; $("live").className = "live off"; };
  source.addEventListener("flow", (event) => {
    const flow = JSON.parse(event.data);
    if (flow.seq <= state.newest) return; // sent again after a reconnect
    state.newest = Math.max(state.newest, flow.seq);
    const tr = row(flow);
    tr.classList.add("new");
    $("flows").tBodies[0].prepend(tr);
    $("empty").hidden = true;
  });
}

function heads(table, pairs) {
  table.replaceChildren(...pairs.map(([name, value]) => el("tr", {}, el("td", { text: name }), el("td", { text: value }))));
}

function bodyView(box, view) {
  box.replaceChildren();
  const label = [];
  if (view.kind !== "none") label.push(`${size(view.size)}${view.mime ? ` ${view.mime}` : ""}`);
  if (view.encoding && view.decoded !== undefined) label.push(`decoded from ${view.encoding} (${size(view.decoded)})`);
  if (view.note) label.push(view.note);
  if (view.cut) label.push("cut");
  if (label.length) box.append(el("div", { class: view.cut || view.note ? "note" : "", text: label.join(" · ") }));
  if (view.kind === "json" || view.kind === "text") box.append(el("pre", { text: view.text }));
  else if (view.kind === "image") box.append(el("img", { src: `data:${view.mime};base64,${view.data}`, alt: "image body" }));
  else if (view.kind === "binary") box.append(el("pre", { text: `${view.hex}${view.stored > view.shown ? " …" : ""}` }));
}

function timing(box, t) {
  box.replaceChildren();
  if (!t) return;
  const points = [["blocked", t.start, t.tcp_start], ["connect", t.tcp_start, t.tcp_done],
    ["ssl", t.tcp_done, t.tls_done], ["send", t.tls_done || t.tcp_done || t.start, t.request_end],
    ["wait", t.request_end, t.response_start], ["receive", t.response_start, t.end]];
  const total = Math.max(t.end - t.start, 1e-6);
  const bar = el("div", { class: "bar" });
  const legend = el("div", { class: "legend" });
  for (const [name, from, to] of points) {
    if (from === undefined || to === undefined || to < from) continue;
    const part = el("span", { class: name, title: `${name} ${ms(to - from)}` });
    part.style.width = `${(100 * (to - from)) / total}%`;
    bar.append(part);
    legend.append(el("span", { class: name, text: `${name} ${ms(to - from)}` }));
  }
  box.append(bar, legend);
}

function tls(box, flow) {
  box.replaceChildren();
  for (const [leg, info] of [["client", flow.client_tls], ["server", flow.server_tls]]) {
    if (!info) continue;
    const parts = [info.version, info.sni && `SNI ${info.sni}`, info.alpn && `ALPN ${info.alpn}`, info.cipher].filter(Boolean);
    box.append(el("div", { class: "tls", text: `TLS ${leg}: ${parts.join(", ")}` }));
  }
}

function curlCommand(flow) {
  const quote = (s) => `'${String(s).replaceAll("'", "'\\''")}'`;
  const words = ["curl"];
  if (flow.method !== "GET") words.push("-X", quote(flow.method));
  for (const [name, value] of flow.request_headers) {
    if (["host", "content-length", "connection", "proxy-connection"].includes(name.toLowerCase()) || value === "<redacted>") continue;
    words.push("-H", quote(`${name}: ${value}`));
  }
  const body = flow.request_body;
  if (body.kind === "text" || body.kind === "json") words.push("--data-binary", quote(body.text));
  words.push(quote(flow.url));
  return words.join(" ");
}

async function show(id) {
  let flow;
  try {
    flow = await api(`/api/flows/${encodeURIComponent(id)}`);
  } catch (e) {
    notice(e.message, true);
    return;
  }
  state.selected = id;
  for (const tr of $("flows").tBodies[0].rows) tr.classList.toggle("selected", tr.dataset.id === id);
  $("detail").hidden = false;
  $("d-title").textContent = `${flow.method || ""} ${flow.url || ""}`;
  const status = flow.status ? `${flow.status} ${flow.reason || ""}` : "no response";
  $("d-meta").textContent = [`${flow.kind}`, status, `client ${flow.client}`, `server ${flow.server || "-"}`,
    ms(flow.ended - flow.started), flow.error ? `error: ${flow.error}` : "", flow.is_replay ? "replay" : ""].filter(Boolean).join(" · ");
  timing($("d-timing"), flow.timings);
  tls($("d-tls"), flow);
  heads($("d-req-heads"), flow.request_headers);
  bodyView($("d-req-body"), flow.request_body);
  heads($("d-resp-heads"), flow.response_headers);
  bodyView($("d-resp-body"), flow.response_body);
  $("har-one").href = `/api/flows/${encodeURIComponent(id)}/har`;
  $("action-result").textContent = "";
  $("replay").onclick = async () => {
    $("action-result").textContent = "replaying…";
    try {
      const out = await api(`/api/flows/${encodeURIComponent(id)}/replay`, { method: "POST" });
      $("action-result").textContent = `${out.status_line}, ${size(out.body_bytes)} in ${out.elapsed_ms} ms`;
    } catch (e) {
      $("action-result").textContent = e.message;
    }
  };
  $("curl").onclick = async () => {
    const text = curlCommand(flow);
    try {
      await navigator.clipboard.writeText(text);
      $("action-result").textContent = "copied";
    } catch {
      $("action-result").textContent = text;
    }
  };
}

async function start() {
  let status;
  try {
    status = await api("/api/status");
  } catch (e) {
    notice(e.message, true);
    return;
  }
  if (!status.capture) {
    notice("Capture is off: set [capture] store = \"flows.db\" in the proxy's config (or INTERCEPTOR_CAPTURE_STORE) and restart it to record flows.");
    $("live").textContent = "off";
    return;
  }
  $("filter-form").addEventListener("submit", (event) => {
    event.preventDefault();
    load(false, $("filter").value.trim()).then((ok) => { if (ok) listen(); });
  });
  $("older").addEventListener("click", () => load(true));
  $("close").addEventListener("click", () => { $("detail").hidden = true; state.selected = null; });
  await load();
  listen();
}

start();
