// The operator console: no framework, no build step.  Every value from the
// server goes into the page as text (textContent), never as markup.
"use strict";

const POINTS = 360;
const history = {};
let lastGauges = null;

function $(id) { return document.getElementById(id); }

function el(tag, text) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = String(text);
  return node;
}

async function call(method, path, body) {
  const options = { method, headers: { "X-Presence-Admin": "1" }, credentials: "same-origin" };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  const text = await response.text();
  const data = text ? JSON.parse(text) : {};
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

function spark(name) {
  const svg = $("s-" + name);
  const values = history[name] || [];
  if (!svg || values.length < 2) return;
  const max = Math.max(1, ...values);
  const w = 300, h = 28;
  const step = w / (POINTS - 1);
  const start = POINTS - values.length;
  const points = values.map((v, i) => `${((start + i) * step).toFixed(1)},${(h - 2 - (v / max) * (h - 4)).toFixed(1)}`);
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  svg.setAttribute("preserveAspectRatio", "none");
  let line = svg.querySelector("polyline");
  if (!line) {
    line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    svg.appendChild(line);
  }
  line.setAttribute("points", points.join(" "));
}

function addSample(point) {
  for (const key of Object.keys(point)) {
    if (key === "t") continue;
    const series = history[key] || (history[key] = []);
    series.push(point[key]);
    if (series.length > POINTS) series.shift();
    spark(key);
    if (key.endsWith("_per_s")) $("g-" + key).textContent = point[key];
  }
}

function showGauges(g) {
  lastGauges = g;
  $("box").textContent = "· " + g.box;
  for (const key of ["held", "sessions", "online_users", "guests"]) $("g-" + key).textContent = g[key];
  const ready = $("ready");
  ready.textContent = g.ready ? "ready" : "not ready: " + g.not_ready.join(", ");
  ready.className = "status " + (g.ready ? "ok" : "error");
}

function stream() {
  const events = new EventSource("/events");
  events.onopen = () => { $("stream").textContent = "live"; $("stream").className = "status ok"; };
  events.onerror = () => { $("stream").textContent = "reconnecting…"; $("stream").className = "status error"; };
  events.onmessage = (message) => {
    const event = JSON.parse(message.data);
    if (event.gauges) showGauges(event.gauges);
    if (event.sample) addSample(event.sample);
  };
}

async function loadHistory() {
  const data = await call("GET", "/api/history");
  for (const [key, values] of Object.entries(data.series)) {
    history[key] = values.slice(-POINTS);
    spark(key);
    if (key.endsWith("_per_s") && values.length) $("g-" + key).textContent = values[values.length - 1];
  }
}

async function loadRefusals() {
  const data = await call("GET", "/api/refusals");
  const body = $("refusals");
  body.replaceChildren();
  for (const r of data.refusals.slice(0, 20)) {
    const row = el("tr");
    row.append(el("td", new Date(r.time * 1000).toLocaleTimeString()), el("td", r.kind), el("td", r.address));
    body.appendChild(row);
  }
}

function status(id, text, ok) {
  const node = $(id);
  node.textContent = text;
  node.className = "status " + (ok ? "ok" : "error");
}

async function act(path, body, done) {
  try {
    const answer = await call("POST", path, body);
    status("user-status", done(answer), true);
    await showUser($("q").value);
  } catch (e) {
    status("user-status", e.message, false);
  }
}

function button(label, id, handler) {
  const b = el("button", label);
  b.type = "button";
  if (id) b.id = id;
  b.addEventListener("click", handler);
  return b;
}

async function showUser(name) {
  const box = $("user");
  box.replaceChildren();
  let user;
  try {
    user = await call("GET", "/api/user?name=" + encodeURIComponent(name));
  } catch (e) {
    status("user-status", e.message, false);
    return;
  }
  const facts = el("p", `${user.name}: ${user.state}${user.locked ? ", locked" : ""}, ` +
    `${user.unread} unread in the message box (${user.unread_bytes} bytes)`);
  facts.id = "user-facts";
  box.appendChild(facts);
  const table = el("table");
  const head = el("tr");
  for (const h of ["host box", "since", "mailbox", "address", "heartbeat", ""]) head.appendChild(el("th", h));
  table.appendChild(head);
  user.sessions.forEach((s, i) => {
    const row = el("tr");
    row.append(el("td", s.host_box), el("td", new Date(s.since * 1000).toLocaleString()),
      el("td", s.mailbox === null ? "on its box" : s.mailbox), el("td", s.address),
      el("td", s.heartbeat === null ? "on its box" : s.heartbeat ? "held" : "–"));
    const cell = el("td");
    cell.appendChild(button("End session", "end-" + i, () =>
      act("/api/session/end", { name: user.name, handle: s.handle },
        (a) => `ended a session of ${a.ended}`)));
    row.appendChild(cell);
    table.appendChild(row);
  });
  box.appendChild(table);
  if (user.registered) {
    box.appendChild(user.locked
      ? button("Unlock account", "unlock", () => act("/api/user/unlock", { name: user.name }, () => "unlocked"))
      : button("Lock account", "lock", () => act("/api/user/lock", { name: user.name },
        (a) => `locked; ${a.sessions_ended} sessions ended`)));
    const from = el("input");
    from.type = "text"; from.id = "purge-from"; from.placeholder = "from (empty: every sender)"; from.maxLength = 64;
    box.append(el("br"), from, button("Remove unread messages", "purge", () =>
      act("/api/user/purge", { name: user.name, from: from.value }, (a) => `removed ${a.removed} messages`)));
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("search").addEventListener("submit", (e) => { e.preventDefault(); status("user-status", "", true); showUser($("q").value); });
  $("notice").addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      const a = await call("POST", "/api/notice", { text: $("notice-text").value });
      status("notice-status", `sent to ${a.sessions} sessions`, true);
    } catch (err) {
      status("notice-status", err.message, false);
    }
  });
  $("logout").addEventListener("click", async () => { await call("POST", "/logout"); location.href = "/"; });
  loadHistory().catch(() => {});
  loadRefusals().catch(() => {});
  setInterval(() => loadRefusals().catch(() => {}), 5000);
  stream();
});
