// The live cluster view. The server pushes every node's state (`node` events) over one
// event stream; this page draws a card per node and tells what changed as events.
"use strict";

const LOG_CELLS = 20;
const MAX_EVENTS = 200;

const state = { controls: false, endpoints: [], nodes: new Map(), seen: new Set(), drawn: new Map() };
const $ = (id) => document.getElementById(id);

const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
// Neighbouring terms get far-apart hues (the golden angle).
const termColor = (t) => `hsl(${Math.round(t * 137.5) % 360} 60% 42%)`;
const CROWN = '<svg class="crown" viewBox="0 0 24 18" aria-label="leader"><path d="M2 16h20l2-12-7 5-5-8-5 8-7-5z"/></svg>';

// ---- events -------------------------------------------------------------------

function say(text, kind = "") {
  const li = document.createElement("li");
  li.className = kind;
  const time = document.createElement("time");
  time.textContent = new Date().toLocaleTimeString();
  const span = document.createElement("span");
  span.textContent = text;
  li.append(time, span);
  const list = $("events");
  list.prepend(li);
  while (list.children.length > MAX_EVENTS) list.lastChild.remove();
}

// What changed between two states of one node, in words.
function tell(old, n) {
  const name = n.name || n.endpoint;
  if (!old) return;
  if (old.up && !n.up) { say(`${name} stopped answering${n.error ? ` (${n.error})` : ""}`, "down"); return; }
  if (!old.up && n.up) {
    if (state.seen.has(n.endpoint)) say(`${name} is back: ${n.role} in term ${n.term}`, "minor");
    return;
  }
  if (old.process !== n.process && n.process) {
    const what = { isolated: "is cut off from every other node (a partition)", paused: "is paused (SIGSTOP)", stopped: "was stopped",
      running: old.process === "isolated" ? "is reconnected" : "is running" }[n.process] || `is ${n.process}`;
    say(`${name} ${what}`, n.process === "running" ? "minor" : "down");
  }
  if (!n.up) return;
  if (n.role === "candidate" && (old.role !== "candidate" || n.term > old.term)) {
    say(`${name} heard from no leader: it starts an election for term ${n.term} and votes for itself`, "election");
  }
  if (n.voted_for && n.voted_for !== name && (n.voted_for !== old.voted_for || n.term !== old.term)) {
    say(`${name} votes for ${n.voted_for} in term ${n.term}`, "election");
  }
  if (n.role === "leader" && (old.role !== "leader" || n.term !== old.term)) {
    say(`${name} won a majority of votes: leader of term ${n.term}`, "leader");
  }
  if (old.role === "leader" && n.role !== "leader") say(`${name} is no longer the leader (term ${n.term})`, "minor");
  if (n.role === "follower" && n.leader && (n.leader !== old.leader || n.term !== old.term)) {
    say(`${name} follows ${n.leader} in term ${n.term}`, "minor");
  }
}

// ---- drawing --------------------------------------------------------------------

function leaderNode() {
  let best = null;
  for (const n of state.nodes.values()) {
    if (n.up && n.role === "leader" && (!best || n.term > best.term)) best = n;
  }
  return best;
}

function summary() {
  const nodes = [...state.nodes.values()];
  const up = nodes.filter((n) => n.up && n.process !== "paused").length;
  const leader = leaderNode();
  const term = Math.max(0, ...nodes.filter((n) => n.up).map((n) => n.term));
  const lead = leader ? `leader <b>${esc(leader.name)}</b>` : "<b>no leader</b>";
  $("summary").innerHTML = `${lead} · term <b>${term}</b> · ${up} of ${nodes.length} nodes answering` +
    (leader ? ` · commit index <b>${leader.commit}</b>` : "");
}

function cells(n, hi) {
  if (!n.up || !n.log) return "";
  const byIndex = new Map(n.log.map(([index, term, kind]) => [index, [term, kind]]));
  const drawn = state.drawn.get(n.endpoint) || new Set();
  const now = new Set();
  let html = "";
  for (let i = Math.max(1, hi - LOG_CELLS + 1); i <= hi; i++) {
    const e = byIndex.get(i);
    if (!e && i < n.first) { html += `<div class="cell snap" title="index ${i}: compacted into this node's snapshot"></div>`; continue; }
    if (!e) { html += `<div class="cell missing" title="index ${i}: not in this node's log"></div>`; continue; }
    const [term, kind] = e;
    const committed = i <= n.commit;
    const cls = ["cell", committed ? "" : "open", kind === "noop" ? "noop" : "", drawn.has(i) ? "" : "fresh"].join(" ");
    const what = kind === "command" ? "a client write" : kind === "noop" ? "a new leader's empty entry" : "a membership change";
    const title = `index ${i}, term ${term}: ${what}, ${committed ? "committed" : "not committed yet"}`;
    html += `<div class="${cls}" style="--c:${termColor(term)}" data-index="${i}" data-term="${term}" data-committed="${committed}" title="${title}"><span>${i}</span><span class="t">${term}</span></div>`;
    now.add(i);
  }
  state.drawn.set(n.endpoint, now);
  return html;
}

// A card's two parts: what the node says, and the buttons (redrawn apart, and only when
// they change, so that a click is not lost to a redraw).
function card(n, hi) {
  const paused = n.process === "paused";
  const badge = paused ? "paused" : !n.up ? (n.process === "stopped" ? "stopped" : "down") : n.role;
  const crown = n.up && n.role === "leader" ? CROWN : "";
  const dd = (v) => (n.up ? esc(v === "" || v === undefined ? "—" : v) : "—");
  let buttons = "";
  if (n.up && n.role !== "leader") buttons += `<button data-action="transfer" data-name="${esc(n.name)}" title="hand leadership to this node">Make leader</button>`;
  if (state.controls) {
    if (n.process === "stopped") buttons += `<button data-action="restart">Restart</button>`;
    else buttons += `<button class="danger" data-action="kill" title="kill -9">Kill</button>`;
    if (paused) buttons += `<button data-action="resume">Resume</button>`;
    else if (n.process === "running" || n.process === "isolated") buttons += `<button data-action="pause" title="SIGSTOP: the process freezes, its connections stay open">Pause</button>`;
    if (n.process === "isolated") buttons += `<button data-action="heal">Heal</button>`;
    else if (n.process === "running") buttons += `<button data-action="isolate" title="cut it off from every other node, both ways">Partition</button>`;
  }
  const info = `
    <h3>${crown}${esc(n.name || n.endpoint)} <span class="badge ${esc(badge)}">${esc(badge)}</span>${n.process === "isolated" ? '<span class="badge cut">cut off</span>' : ""}<span class="endpoint">${esc(n.endpoint)}</span></h3>
    <dl>
      <dt>term</dt><dd>${dd(n.term)}</dd><dt>voted for</dt><dd>${dd(n.voted_for)}</dd>
      <dt>leader</dt><dd>${dd(n.leader)}</dd><dt>revision</dt><dd>${dd(n.revision)}</dd>
      <dt>commit</dt><dd>${dd(n.commit)}</dd><dt>applied</dt><dd>${dd(n.applied)}</dd>
    </dl>
    <div class="log">${cells(n, hi)}</div>
    <div class="error">${n.up || paused ? "" : esc(n.error || "")}</div>`;
  return [info, buttons];
}

// Sets `el`'s HTML only if it changed.
function put(el, html) {
  if (el._html !== html) { el.innerHTML = html; el._html = html; }
}

let pending = false;
function render() {
  if (pending) return;
  pending = true;
  requestAnimationFrame(() => {
    pending = false;
    const box = $("nodes");
    const hi = Math.max(0, ...[...state.nodes.values()].filter((n) => n.up).map((n) => n.last));
    for (const ep of state.endpoints) {
      const n = state.nodes.get(ep);
      if (!n) continue;
      let el = box.querySelector(`.node[data-endpoint="${CSS.escape(ep)}"]`);
      if (!el) {
        el = document.createElement("article");
        el.className = "node";
        el.dataset.endpoint = ep;
        el.innerHTML = '<div class="info"></div><div class="buttons"></div>';
        box.append(el);
      }
      el.dataset.name = n.name || ep;
      el.dataset.up = n.up;
      el.dataset.role = n.up ? n.role : "down";
      el.dataset.term = n.up ? n.term : "";
      el.dataset.process = n.process || "";
      const [info, buttons] = card(n, hi);
      put(el.querySelector(".info"), info);
      put(el.querySelector(".buttons"), buttons);
    }
    summary();
  });
}

// ---- actions --------------------------------------------------------------------

async function post(path, body) {
  const r = await fetch(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  const answer = await r.json().catch(() => ({ error: `HTTP ${r.status}` }));
  if (!r.ok) throw new Error(answer.error || `HTTP ${r.status}`);
  return answer;
}

$("put-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const key = $("put-key").value, value = $("put-value").value;
  const out = $("put-result");
  out.className = "result";
  out.textContent = `putting ${key} = ${value}…`;
  try {
    const a = await post("/api/put", { key, value });
    out.textContent = a.message;
    out.dataset.index = a.index;
    say(a.message, "leader");
  } catch (err) {
    out.className = "result failed";
    out.textContent = err.message;
    delete out.dataset.index;
    say(`put ${key} failed: ${err.message}`, "down");
  }
});

$("nodes").addEventListener("click", async (e) => {
  const b = e.target.closest("button[data-action]");
  if (!b) return;
  const ep = b.closest(".node").dataset.endpoint;
  const name = state.nodes.get(ep)?.name || ep;
  b.disabled = true;
  try {
    const a = b.dataset.action === "transfer"
      ? await post("/api/transfer", { to: b.dataset.name })
      : await post("/api/node", { endpoint: ep, action: b.dataset.action });
    say(`${b.dataset.action} ${name}: ${a.message}`, "minor");
  } catch (err) {
    say(`${b.dataset.action} ${name} failed: ${err.message}`, "down");
  } finally {
    b.disabled = false;
  }
});

// ---- the event stream ---------------------------------------------------------------

const events = new EventSource("/events");
events.addEventListener("hello", (e) => {
  const h = JSON.parse(e.data);
  state.controls = h.controls;
  state.endpoints = h.endpoints;
  $("link").className = "link";
  render();
});
events.addEventListener("node", (e) => {
  const n = JSON.parse(e.data);
  tell(state.nodes.get(n.endpoint), n);
  if (n.up) state.seen.add(n.endpoint);
  state.nodes.set(n.endpoint, n);
  render();
});
events.onerror = () => { $("link").className = "link lost"; $("summary").textContent = "lost the view server; reconnecting…"; };
