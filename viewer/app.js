// Wharf viewer: follows encrypted logs on a Wharf relay and decrypts them in this browser.
// Read-only: it sends RequestChanges, StopChanges and Ping, never WriteEntries or WriteSnapshot
// (the wasm module cannot even encode them). A log opens from its newest snapshot when the relay
// has one: the snapshot's records come first, then the entries after it, then live ones. Keys never leave the page: the x25519 secret and the grants sealed to
// it live in localStorage; grants also arrive in the URL fragment, which browsers do not send.
import init, { Reader, GrantKeys, encodeRequestChanges, encodeStopChanges, encodePing } from "./pkg/wharf_wasm.js"

const $ = (id) => document.getElementById(id)
const PROBE = 2 ** 32 // a start past any log: the relay answers Head, then nothing
const PING_EVERY = 10_000
const PONG_TIMEOUT = 10_000

const store = {
  get(key, fallback = null) {
    try { const v = localStorage.getItem(key); return v === null ? fallback : JSON.parse(v) } catch { return fallback }
  },
  set(key, value) {
    try { localStorage.setItem(key, JSON.stringify(value)) } catch { /* private mode: keys live for this page only */ }
  }
}

const b64 = {
  encode: (bytes) => btoa(String.fromCharCode(...bytes)),
  decode: (s) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0))
}

// ---------------------------------------------------------------------------------------------
// State

const state = {
  reader: null,
  keys: null,
  grants: [], // grant strings, in the order added
  logs: new Map(), // log name → LogState
  rows: [], // every kept row, in arrival order (per log: sequence order)
  window: 5000,
  selected: null, // `${log}/${sequence}`
  paused: false,
  pausedNew: 0,
  filter: { event: "", text: "" },
  events: new Set(),
  dirty: true,
  follow: true, // keep the newest row in view
  stats: { frames: 0, rows: 0, started: performance.now(), decryptMs: 0 },
  remoteId: null
}

const conn = { ws: null, want: false, attempt: 0, retryTimer: null, countdown: null, pingTimer: null, pingId: 0, awaitingPong: null, lastClose: "" }
// The Effect v4 connection (/v4/t/{tenant}), opened when a v4 log is followed.
const v4conn = { ws: null, attempt: 0, retryTimer: null, pingTimer: null }

function logState(name) {
  let s = state.logs.get(name)
  if (!s) {
    s = { name, follow: true, color: colorOf(name), mode: "live", next: null, head: null, caughtUp: false, probing: false, subscribed: false, historyLeft: 0, count: 0 }
    state.logs.set(name, s)
  }
  return s
}

function colorOf(name) {
  let h = 0
  for (const c of name) h = (h * 31 + c.charCodeAt(0)) >>> 0
  return `hsl(${h % 360} 65% 55%)`
}

// ---------------------------------------------------------------------------------------------
// Status indicator

function setStatus(kind, text, title = "") {
  const el = $("status")
  el.dataset.state = kind
  $("status-text").textContent = text
  el.title = title
}

function updateProgressStatus() {
  if (!conn.ws || conn.ws.readyState !== WebSocket.OPEN || state.remoteId === null) return
  const followed = [...state.logs.values()].filter((l) => l.subscribed)
  if (followed.length === 0) return setStatus("live", "Connected", "no log followed")
  const pending = followed.filter((l) => !l.caughtUp)
  if (pending.length === 0) return setStatus("live", "Live")
  const known = pending.every((l) => l.head !== null && !l.probing)
  const behind = pending.reduce((n, l) => n + Math.max(0, (l.head ?? 0) - (l.next ?? 0)), 0)
  setStatus("catching-up", known ? `Catching up · ${behind.toLocaleString()} behind` : "Catching up…")
}

// ---------------------------------------------------------------------------------------------
// Connection

function relayUrl() {
  const base = $("relay").value.trim().replace(/\/+$/, "")
  const tenant = $("tenant").value.trim()
  return `${base}/t/${encodeURIComponent(tenant)}`
}

// The token rides in Sec-WebSocket-Protocol as `wharf.token.<jwt>` (the one header a browser lets
// a page set on a WebSocket), never in the URL, where proxies and history would keep it. The
// relay answers `wharf.v1`, so that one is always offered too.
function subprotocols() {
  const token = $("token").value.trim()
  return token ? ["wharf.v1", `wharf.token.${token}`] : ["wharf.v1"]
}

function connect() {
  conn.want = true
  conn.attempt = 0
  $("connect").disabled = true
  $("disconnect").disabled = false
  $("where").textContent = `${$("relay").value.trim()} · ${$("tenant").value.trim()}`
  store.set("wharf.viewer.relay", { relay: $("relay").value.trim(), tenant: $("tenant").value.trim() })
  open()
  for (const l of state.logs.values()) if (state.reader.isV4(l.name)) subscribe(l)
}

function disconnect() {
  closeV4()
  conn.want = false
  clearTimeout(conn.retryTimer)
  clearInterval(conn.countdown)
  if (conn.ws) conn.ws.close(1000)
  $("connect").disabled = false
  $("disconnect").disabled = true
  setStatus("idle", "Disconnected")
}

function open() {
  clearInterval(conn.countdown)
  setStatus("connecting", conn.attempt > 0 ? `Connecting · attempt ${conn.attempt + 1}` : "Connecting…")
  let ws
  try {
    ws = new WebSocket(relayUrl(), subprotocols())
  } catch (e) {
    conn.want = false
    $("connect").disabled = false
    $("disconnect").disabled = true
    return setStatus("error", "Invalid address", String(e.message ?? e))
  }
  ws.binaryType = "arraybuffer"
  ws.onmessage = (ev) => onFrame(new Uint8Array(ev.data))
  ws.onclose = (ev) => onClose(ev)
  conn.ws = ws
}

function onClose(ev) {
  clearInterval(conn.pingTimer)
  conn.ws = null
  conn.awaitingPong = null
  state.remoteId = null
  for (const l of state.logs.values()) Object.assign(l, { subscribed: false, caughtUp: false, probing: false })
  if (!conn.want) return
  const why = ev.reason ? `${ev.code}: ${ev.reason}` : `code ${ev.code}`
  conn.lastClose = why
  // 1008: the relay ended this connection by policy (token expired or revoked, or not allowed).
  // Retrying with the same token cannot help; a new token and Connect can.
  if (ev.code === 1008) {
    conn.want = false
    $("connect").disabled = false
    $("disconnect").disabled = true
    return setStatus("error", "Refused by the relay · check the token", why)
  }
  if (!navigator.onLine) return setStatus("offline", "Offline · waiting for the network", why)
  conn.attempt += 1
  // Full jitter over an exponential ceiling, so a restarted relay is not hit by every viewer at once.
  const ceiling = Math.min(10_000, 250 * 2 ** Math.min(conn.attempt, 10))
  const delay = 250 + Math.random() * ceiling
  const at = Date.now() + delay
  const tick = () => {
    const s = Math.max(0, (at - Date.now()) / 1000)
    setStatus("reconnecting", `Reconnecting in ${s.toFixed(s < 10 ? 1 : 0)} s`, `connection lost (${why})`)
  }
  tick()
  conn.countdown = setInterval(tick, 100)
  conn.retryTimer = setTimeout(open, delay)
}

window.addEventListener("online", () => { if (conn.want && !conn.ws) { clearTimeout(conn.retryTimer); open() } })
window.addEventListener("offline", () => { if (conn.ws) conn.ws.close() })

function send(bytes) {
  if (conn.ws && conn.ws.readyState === WebSocket.OPEN) conn.ws.send(bytes)
}

function startPings() {
  clearInterval(conn.pingTimer)
  conn.pingTimer = setInterval(() => {
    if (conn.awaitingPong !== null && Date.now() - conn.awaitingPong > PONG_TIMEOUT) {
      conn.ws?.close(4000, "no Pong")
      return
    }
    if (conn.awaitingPong === null) {
      conn.pingId += 1
      conn.awaitingPong = Date.now()
      send(encodePing(conn.pingId))
    }
  }, PING_EVERY)
}

function subscribe(l) {
  if (state.reader.isV4(l.name)) return subscribeV4(l)
  if (!conn.ws || state.remoteId === null || !l.follow) return
  l.subscribed = true
  l.caughtUp = false
  if (l.mode === "live" && l.next === null) {
    // Ask where the log ends first, then read only the last `window` entries of it.
    l.probing = true
    send(encodeRequestChanges(l.name, PROBE))
  } else {
    l.probing = false
    send(encodeRequestChanges(l.name, l.next ?? 0))
  }
  updateProgressStatus()
}

function unsubscribe(l) {
  if (state.reader.isV4(l.name)) {
    if (l.subscribed) for (const f of state.reader.v4Stop(l.name)) sendV4(f)
    return Object.assign(l, { subscribed: false, caughtUp: false, probing: false })
  }
  if (l.subscribed) send(encodeStopChanges(l.name))
  Object.assign(l, { subscribed: false, caughtUp: false, probing: false })
}

// ---------------------------------------------------------------------------------------------
// Effect v4 logs: one more WebSocket to /v4/t/{tenant}. Each log's identity signs the relay's
// challenge (the grant carries its secret), then its Changes stream is followed; the wasm
// Reader keeps the RPC state and says what to send.

function v4Url() {
  const base = $("relay").value.trim().replace(/\/+$/, "")
  return `${base}/v4/t/${encodeURIComponent($("tenant").value.trim())}`
}

function sendV4(bytes) {
  if (v4conn.ws && v4conn.ws.readyState === WebSocket.OPEN) v4conn.ws.send(bytes)
}

function subscribeV4(l) {
  if (!conn.want || !l.follow || (l.subscribed && v4conn.ws)) return
  l.subscribed = true
  l.caughtUp = false
  if (!v4conn.ws) return openV4()
  if (v4conn.ws.readyState === WebSocket.OPEN) for (const f of state.reader.v4Follow(l.name, l.next ?? 0)) sendV4(f)
}

function openV4() {
  clearTimeout(v4conn.retryTimer)
  let ws
  try {
    ws = new WebSocket(v4Url(), subprotocols())
  } catch (e) {
    return setStatus("error", "Invalid address", String(e.message ?? e))
  }
  ws.binaryType = "arraybuffer"
  v4conn.ws = ws
  ws.onopen = () => {
    v4conn.attempt = 0
    state.reader.v4Reset()
    for (const l of state.logs.values()) {
      if (l.subscribed && state.reader.isV4(l.name)) for (const f of state.reader.v4Follow(l.name, l.next ?? 0)) sendV4(f)
    }
    clearInterval(v4conn.pingTimer)
    v4conn.pingTimer = setInterval(() => sendV4(state.reader.v4Ping()), 5000)
  }
  ws.onmessage = (ev) => onV4Message(new Uint8Array(ev.data))
  ws.onclose = (ev) => {
    clearInterval(v4conn.pingTimer)
    v4conn.ws = null
    if (!conn.want) return
    v4conn.attempt += 1
    const delay = 250 + Math.random() * Math.min(10_000, 250 * 2 ** Math.min(v4conn.attempt, 10))
    v4conn.retryTimer = setTimeout(openV4, delay)
    if (ev.code === 1008) setStatus("error", "Refused by the relay · check the token", `v4: ${ev.code}: ${ev.reason}`)
  }
}

function closeV4() {
  clearTimeout(v4conn.retryTimer)
  clearInterval(v4conn.pingTimer)
  if (v4conn.ws) { const ws = v4conn.ws; v4conn.ws = null; ws.onclose = null; ws.close(1000) }
}

function onV4Message(bytes) {
  state.stats.frames += 1
  const t0 = performance.now()
  const out = state.reader.v4Handle(bytes)
  state.stats.decryptMs += performance.now() - t0
  for (const f of out.send) sendV4(f)
  for (const { log, rows } of out.rows) {
    const l = state.logs.get(log)
    if (!l || !l.subscribed) continue
    addRows(l, rows)
    l.caughtUp = true
  }
  for (const e of out.errors) {
    conn.lastClose = e.log ? `${e.log}: ${e.message}` : e.message
    setStatus("error", "Effect v4 log refused", conn.lastClose)
  }
  if (out.rows.length) updateProgressStatus()
}

function onFrame(bytes) {
  state.stats.frames += 1
  let msg
  try {
    const t0 = performance.now()
    msg = state.reader.handle(bytes, Date.now())
    state.stats.decryptMs += performance.now() - t0
  } catch (e) {
    console.warn("unreadable frame", e)
    conn.ws?.close(4001, "unreadable frame")
    return
  }
  switch (msg.type) {
    case "Hello": {
      if (state.lastRemote && state.lastRemote !== msg.remoteId) resetRows() // another relay's data
      state.remoteId = msg.remoteId
      state.lastRemote = msg.remoteId
      conn.attempt = 0
      clearInterval(conn.countdown)
      startPings()
      for (const l of state.logs.values()) subscribe(l)
      updateProgressStatus()
      break
    }
    case "Head": {
      const l = state.logs.get(msg.log)
      if (!l) break
      l.head = msg.nextSequence
      if (l.probing) {
        l.probing = false
        l.next = Math.max(0, msg.nextSequence - state.window)
        // Opening a log: from its newest snapshot when that covers where the window starts.
        send(encodeRequestChanges(l.name, l.next, true))
      }
      updateProgressStatus()
      break
    }
    case "CaughtUp": {
      const l = state.logs.get(msg.log)
      if (!l || l.probing || msg.nextSequence >= PROBE) break // the probe's own marker
      l.caughtUp = true
      l.head = Math.max(l.head ?? 0, msg.nextSequence)
      updateProgressStatus()
      break
    }
    case "Rows": {
      const l = state.logs.get(msg.log)
      if (!l || !l.subscribed || l.probing) break
      addRows(l, msg.rows)
      updateProgressStatus()
      break
    }
    case "Snapshot": {
      const l = state.logs.get(msg.log)
      if (!l || !l.subscribed || l.probing) break
      addSnapshot(l, msg)
      updateProgressStatus()
      break
    }
    case "HistoryStarts": {
      const l = state.logs.get(msg.log)
      if (!l || !l.subscribed || l.probing) break
      addHistoryMarker(l, msg)
      updateProgressStatus()
      break
    }
    case "Pong":
      if (msg.id === conn.pingId) conn.awaitingPong = null
      break
    case "Error":
      conn.lastClose = `${msg.code}: ${msg.message}`
      setStatus("error", "Relay refused", conn.lastClose)
      break
  }
}

// ---------------------------------------------------------------------------------------------
// Rows

// Entries by log and sequence; a snapshot's records by the snapshot too (the same sequence can
// be an entry row and a snapshot record); the snapshot and history markers by kind.
function rowKey(r) {
  if (r.kind === "snapshot" || r.kind === "history") return `${r.log}/${r.kind}/${r.sequence}`
  return r.snapshot ? `${r.log}/s${r.snapshotSequence}/${r.sequence}` : `${r.log}/${r.sequence}`
}

function addRows(l, rows) {
  let added = 0
  for (const r of rows) {
    if (l.next !== null && r.sequence < l.next) continue // already have it
    l.next = r.sequence + 1
    if (l.mode === "history") {
      if (l.historyLeft <= 0) continue
      l.historyLeft -= 1
    }
    r.log = l.name
    if (!r.locked) state.events.add(r.event)
    // Arrival order: each log in sequence order, logs interleaved as the relay delivers them.
    // (Entry times come from writers' clocks and entry ids anyone can choose: not an order.)
    state.rows.push(r)
    l.count += 1
    added += 1
  }
  if (l.mode === "history" && l.historyLeft <= 0 && l.subscribed) {
    unsubscribe(l) // the page is full; "Live" or "Older" moves on
    l.caughtUp = true
  }
  kept(l, added)
}

// A snapshot: its own row ("Snapshot up to #N (K records)", or why it does not open), then the
// records it kept (the latest entry per event and primary key, in sequence order). The entries
// that follow start after the sequence it covers.
function addSnapshot(l, msg) {
  for (const r of msg.rows) {
    r.log = l.name
    if (r.kind === "entry" && !r.locked) state.events.add(r.event)
    state.rows.push(r)
  }
  l.count += msg.rows.length
  l.next = Math.max(l.next ?? 0, msg.sequence + 1)
  kept(l, msg.rows.length)
}

// The relay deleted the history before `firstSequence`: one marker row, once.
function addHistoryMarker(l, msg) {
  const [marker] = msg.rows
  marker.log = l.name
  l.next = Math.max(l.next ?? 0, msg.firstSequence)
  const key = rowKey(marker)
  if (state.rows.some((r) => r.log === l.name && rowKey(r) === key)) return
  state.rows.push(marker)
  l.count += 1
  kept(l, 1)
}

function kept(l, added) {
  l.head = Math.max(l.head ?? 0, l.next ?? 0)
  state.stats.rows += added
  // Memory stays bounded by the window: drop the oldest (live) or the newest (history).
  const over = state.rows.length - state.window
  if (over > 0) {
    const dropped = anyHistory() ? state.rows.splice(state.window, over) : state.rows.splice(0, over)
    for (const r of dropped) { const s = state.logs.get(r.log); if (s) s.count -= 1 }
  }
  if (state.paused) state.pausedNew += added
  state.dirty = true
}

function anyHistory() { for (const l of state.logs.values()) if (l.mode === "history") return true; return false }

function resetRows(log = null) {
  state.rows = log === null ? [] : state.rows.filter((r) => r.log !== log)
  for (const l of state.logs.values()) {
    if (log === null || l.name === log) { l.count = 0; l.next = null; l.head = null }
  }
  state.dirty = true
}

function focusLog() {
  if (state.selected) { const name = state.selected.split("/")[0]; const l = state.logs.get(name); if (l?.follow) return l }
  return [...state.logs.values()].find((l) => l.follow) ?? null
}

function jumpTo(sequence) {
  const l = focusLog()
  if (!l) return
  unsubscribe(l)
  resetRows(l.name)
  Object.assign(l, { mode: "history", next: sequence, historyLeft: state.window })
  state.follow = false
  subscribe(l)
  renderControls()
}

function older() {
  const l = focusLog()
  if (!l) return
  const first = state.rows.find((r) => r.log === l.name && r.kind !== "history" && !r.snapshot) ?? state.rows.find((r) => r.log === l.name)
  const from = Math.max(0, (first?.sequence ?? l.next ?? 0) - Math.floor(state.window / 2))
  jumpTo(from)
  $("viewport").scrollTop = 0
}

function backToLive() {
  for (const l of state.logs.values()) {
    if (l.mode === "live") continue
    unsubscribe(l)
    resetRows(l.name)
    l.mode = "live"
    subscribe(l)
  }
  state.follow = true
  state.paused = false
  renderControls()
}

// ---------------------------------------------------------------------------------------------
// Rendering: a virtual table (only the visible rows exist in the DOM), redrawn at most once a frame.

const escapeHtml = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", "\"": "&quot;", "'": "&#39;" }[c]))
const timeFmt = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false })
const fmtTime = (ms) => `${timeFmt.format(ms)}.${String(ms % 1000).padStart(3, "0")}`
const fmtSize = (n) => n < 1024 ? `${n} B` : n < 1048576 ? `${(n / 1024).toFixed(1)} KB` : `${(n / 1048576).toFixed(1)} MB`
let visible = []
let lastRendered = ""

function matches(r) {
  const f = state.filter
  if (f.event && (r.locked || r.kind !== "entry" || r.event !== f.event)) return false
  if (f.text) {
    const t = f.text.toLowerCase()
    const hay = r.kind === "snapshot" ? `${r.sequence} snapshot ${r.error ?? ""}`
      : r.kind === "history" ? `${r.sequence} history deleted retention`
        : r.locked ? `${r.sequence} ${r.id}` : `${r.sequence} ${r.event} ${r.primaryKey} ${r.payload} ${r.id}`
    if (!hay.toLowerCase().includes(t)) return false
  }
  return true
}

function rowHeight() { return parseFloat(getComputedStyle(document.documentElement).getPropertyValue("--row-h")) || 28 }

function render() {
  requestAnimationFrame(render)
  if (!state.dirty || state.paused) return
  state.dirty = false
  visible = state.filter.event || state.filter.text ? state.rows.filter(matches) : state.rows
  const vp = $("viewport")
  const h = rowHeight()
  const atBottom = vp.scrollTop + vp.clientHeight >= vp.scrollHeight - 2 * h
  $("spacer").style.height = `${visible.length * h}px`
  if (state.follow && atBottom) vp.scrollTop = vp.scrollHeight
  drawRows()
  renderControls()
}

function drawRows() {
  const vp = $("viewport")
  const h = rowHeight()
  const first = Math.max(0, Math.floor(vp.scrollTop / h) - 10)
  const last = Math.min(visible.length, Math.ceil((vp.scrollTop + vp.clientHeight) / h) + 10)
  const showLog = state.logs.size > 1
  let html = ""
  for (let i = first; i < last; i++) {
    const r = visible[i]
    const key = rowKey(r)
    const kindCls = r.kind === "snapshot" ? " snapshot-head" : r.kind === "history" ? " history-marker" : r.snapshot ? " from-snapshot" : ""
    const cls = `tr${kindCls}${r.locked ? " locked" : ""}${key === state.selected ? " selected" : ""}`
    const log = state.logs.get(r.log)
    const logCell = showLog ? `<span class="swatch" style="display:inline-block;width:6px;height:6px;border-radius:1px;background:${log?.color};margin-right:5px"></span>${escapeHtml(r.log.slice(0, 10))}` : escapeHtml(r.log.slice(0, 10))
    if (r.kind === "snapshot") {
      const note = r.locked
        ? `Snapshot up to #${r.sequence} does not open: ${r.error}`
        : `Snapshot up to #${r.sequence} (${r.records.toLocaleString()} record${r.records === 1 ? "" : "s"})`
      html += `<div class="${cls}" data-key="${escapeHtml(key)}"><span class="c-seq">≤${r.sequence}</span><span class="c-time"><span class="badge">snapshot</span></span><span class="c-log">${logCell}</span><span class="c-note">${escapeHtml(note)}</span><span class="c-size">${fmtSize(r.size)}</span></div>`
      continue
    }
    if (r.kind === "history") {
      html += `<div class="${cls}" data-key="${escapeHtml(key)}"><span class="c-seq">&lt;${r.sequence}</span><span class="c-time"><span class="badge">deleted</span></span><span class="c-log">${logCell}</span><span class="c-note">History before #${r.sequence} was deleted by the relay's retention policy</span><span class="c-size"></span></div>`
      continue
    }
    html += r.locked
      ? `<div class="${cls}" data-key="${escapeHtml(key)}"><span class="c-seq">${r.sequence}</span><span class="c-time">${fmtTime(r.time)}</span><span class="c-log">${logCell}</span><span class="c-event"><span class="badge">locked</span></span><span class="c-key">${escapeHtml(r.suite)}</span><span class="c-payload">${escapeHtml(r.error)}</span><span class="c-size">${fmtSize(r.size)}</span></div>`
      : `<div class="${cls}" data-key="${escapeHtml(key)}"><span class="c-seq">${r.sequence}</span><span class="c-time">${fmtTime(r.time)}</span><span class="c-log">${logCell}</span><span class="c-event">${escapeHtml(r.event)}</span><span class="c-key">${escapeHtml(r.primaryKey)}</span><span class="c-payload">${escapeHtml(r.payload.slice(0, 300))}</span><span class="c-size">${fmtSize(r.size)}</span></div>`
  }
  const signature = `${first}:${last}:${visible.length}:${state.selected}:${html.length}`
  if (signature !== lastRendered) {
    $("rows").style.transform = `translateY(${first * h}px)`
    $("rows").innerHTML = html
    lastRendered = signature
  }
  $("placeholder").hidden = state.rows.length > 0
  if (state.rows.length === 0) {
    $("placeholder").textContent = state.logs.size === 0
      ? "Add a grant to choose a log, then connect."
      : conn.ws ? "No entries yet. New ones appear here as they are written." : "Connect to a relay to see entries."
  }
}

function renderControls() {
  const pause = $("pause")
  pause.textContent = state.paused ? (state.pausedNew ? `Resume (${state.pausedNew.toLocaleString()} new)` : "Resume") : "Pause"
  pause.setAttribute("aria-pressed", String(state.paused))
  const history = anyHistory()
  $("live").setAttribute("aria-pressed", String(!history && state.follow))
  const shown = visible.length === state.rows.length ? `${state.rows.length.toLocaleString()} rows` : `${visible.length.toLocaleString()} of ${state.rows.length.toLocaleString()} rows`
  $("counts").textContent = history ? `${shown} · history` : shown
  const select = $("event-filter")
  if (select.options.length - 1 !== state.events.size) {
    const current = select.value
    select.innerHTML = `<option value="">All events</option>` + [...state.events].sort().map((e) => `<option>${escapeHtml(e)}</option>`).join("")
    select.value = current
  }
  renderLogs()
}

let logsSignature = ""
function renderLogs() {
  const list = $("logs")
  const sig = [...state.logs.values()].map((l) => `${l.name}:${l.follow}:${l.count}:${l.mode}`).join("|")
  if (sig === logsSignature) return
  logsSignature = sig
  if (state.logs.size === 0) {
    list.innerHTML = `<li class="muted empty">No logs yet: add a grant, or open a link with <code>#grant=…</code>.</li>`
    return
  }
  list.innerHTML = [...state.logs.values()].map((l) => `
    <li><input type="checkbox" data-log="${escapeHtml(l.name)}" ${l.follow ? "checked" : ""} aria-label="Follow ${escapeHtml(l.name)}">
    <span class="swatch" style="background:${l.color}"></span>
    <span class="name" title="${escapeHtml(l.name)}">${escapeHtml(l.name)}</span>
    <span class="count">${l.count.toLocaleString()}${l.mode === "history" ? " · history" : ""}</span></li>`).join("")
}

function showDetail(key) {
  state.selected = key
  const r = state.rows.find((x) => rowKey(x) === key)
  if (!r) return
  $("detail").hidden = false
  if (r.kind === "snapshot" || r.kind === "history") return showMarker(r)
  $("detail-title").textContent = r.locked ? `#${r.sequence} · locked` : `#${r.sequence} · ${r.event}`
  const meta = [
    ["Log", r.log], ["Sequence", r.sequence], ["Time", new Date(r.time).toISOString()], ["Entry id", r.id],
    ["Cipher", r.suite], ["Size", `${r.size.toLocaleString()} bytes${r.snapshot ? " (plaintext)" : ""}`]
  ]
  if (!r.locked) meta.splice(3, 0, ["Event", r.event], ["Primary key", r.primaryKey])
  if (r.snapshot) meta.splice(2, 0, ["From", `the snapshot up to #${r.snapshotSequence}`])
  $("detail-meta").innerHTML = meta.map(([k, v]) => `<dt>${k}</dt><dd>${escapeHtml(v)}</dd>`).join("")
  $("detail-json").innerHTML = r.locked
    ? escapeHtml(`This entry does not decrypt with the keys this viewer holds:\n${r.error}`)
    : highlight(JSON.stringify(JSON.parse(r.payload), null, 2))
  state.dirty = true
}

function showMarker(r) {
  const snapshot = r.kind === "snapshot"
  $("detail-title").textContent = snapshot ? `Snapshot up to #${r.sequence}` : `History before #${r.sequence}`
  const meta = snapshot
    ? [["Log", r.log], ["Covers", `#0 to #${r.sequence}`], ["Records", r.locked ? "—" : r.records.toLocaleString()], ["Cipher", r.suite], ["Size", `${r.size.toLocaleString()} bytes`]]
    : [["Log", r.log], ["First kept", `#${r.sequence}`]]
  $("detail-meta").innerHTML = meta.map(([k, v]) => `<dt>${k}</dt><dd>${escapeHtml(v)}</dd>`).join("")
  $("detail-json").innerHTML = escapeHtml(snapshot
    ? r.locked
      ? `This snapshot does not open with the keys this viewer holds:\n${r.error}`
      : `The state of the log up to and including #${r.sequence}: the latest entry for every event and primary key (${r.records.toLocaleString()} records), listed after this row. The entries after #${r.sequence} follow them.`
    : `The relay deleted this log's entries before #${r.sequence} under its retention policy; the entries shown start there.`)
  state.dirty = true
}

function highlight(json) {
  return escapeHtml(json).replace(/(&quot;(?:[^&]|&(?!quot;))*&quot;)(\s*:)?|\b(true|false|null)\b|-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?/g, (m, str, colon, kw) => {
    if (str) return colon ? `<span class="k">${str}</span>${colon}` : `<span class="s">${str}</span>`
    if (kw) return `<span class="b">${m}</span>`
    return `<span class="n">${m}</span>`
  })
}

// ---------------------------------------------------------------------------------------------
// Keys and grants

function loadKeys() {
  let secret = store.get("wharf.viewer.secret")
  if (!secret) {
    const bytes = crypto.getRandomValues(new Uint8Array(32))
    secret = b64.encode(bytes)
    store.set("wharf.viewer.secret", secret)
  }
  state.keys = GrantKeys.fromSecret(b64.decode(secret))
  const pub = state.keys.publicKey()
  $("pubkey").textContent = pub
  $("grant-command").textContent = `wharf grant --to ${pub}`
}

function addGrant(text, persist = true) {
  const grant = text.trim()
  if (!grant) return false
  try {
    const log = state.reader.addGrant(state.keys, grant)
    if (persist && !state.grants.includes(grant)) {
      state.grants.push(grant)
      store.set("wharf.viewer.grants", state.grants)
    }
    const l = logState(log)
    $("grant-error").textContent = ""
    if (!l.subscribed) subscribe(l)
    state.dirty = true
    return true
  } catch (e) {
    $("grant-error").textContent = String(e.message ?? e)
    return false
  }
}

function readFragment() {
  if (location.hash.length < 2) return false
  const params = new URLSearchParams(location.hash.slice(1))
  for (const g of params.getAll("grant")) addGrant(g)
  if (params.get("relay")) $("relay").value = params.get("relay")
  if (params.get("tenant")) $("tenant").value = params.get("tenant")
  if (params.get("token")) $("token").value = params.get("token")
  // Do not leave keys in the address bar (or in bookmarks and screenshots of it).
  history.replaceState(null, "", location.pathname + location.search)
  return Boolean(params.get("tenant") || params.getAll("grant").length)
}

// ---------------------------------------------------------------------------------------------
// Wiring

function wire() {
  $("connect-form").addEventListener("submit", (e) => { e.preventDefault(); if (conn.ws) disconnect(); connect() })
  $("disconnect").addEventListener("click", disconnect)
  $("grant-form").addEventListener("submit", (e) => { e.preventDefault(); if (addGrant($("grant").value)) $("grant").value = "" })
  $("copy-key").addEventListener("click", async () => {
    try { await navigator.clipboard.writeText(state.keys.publicKey()); $("copy-key").textContent = "Copied" } catch { $("copy-key").textContent = "Select it" }
    setTimeout(() => { $("copy-key").textContent = "Copy" }, 1500)
  })
  $("logs").addEventListener("change", (e) => {
    const l = state.logs.get(e.target.dataset.log)
    if (!l) return
    l.follow = e.target.checked
    if (l.follow) subscribe(l)
    else { unsubscribe(l); resetRows(l.name) }
    state.dirty = true
  })
  $("event-filter").addEventListener("change", (e) => { state.filter.event = e.target.value; state.dirty = true })
  $("text-filter").addEventListener("input", (e) => { state.filter.text = e.target.value.trim(); state.dirty = true })
  $("pause").addEventListener("click", () => {
    state.paused = !state.paused
    state.pausedNew = 0
    state.dirty = true
    renderControls()
  })
  $("jump-form").addEventListener("submit", (e) => {
    e.preventDefault()
    const n = Number($("jump").value)
    if (Number.isInteger(n) && n >= 0) jumpTo(n)
  })
  $("older").addEventListener("click", older)
  $("live").addEventListener("click", backToLive)
  $("window").addEventListener("change", (e) => {
    const n = Math.min(100_000, Math.max(100, Number(e.target.value) || 5000))
    state.window = n
    store.set("wharf.viewer.window", n)
    state.dirty = true
  })
  $("viewport").addEventListener("scroll", () => {
    const vp = $("viewport")
    state.follow = vp.scrollTop + vp.clientHeight >= vp.scrollHeight - 2 * rowHeight()
    drawRows()
  })
  $("rows").addEventListener("click", (e) => { const tr = e.target.closest(".tr"); if (tr) showDetail(tr.dataset.key) })
  $("detail-close").addEventListener("click", () => { $("detail").hidden = true; state.selected = null; state.dirty = true })
  $("theme").addEventListener("click", () => {
    const dark = getComputedStyle(document.documentElement).colorScheme === "dark" ||
      (!document.documentElement.dataset.theme && matchMedia("(prefers-color-scheme: dark)").matches)
    document.documentElement.dataset.theme = dark ? "light" : "dark"
    store.set("wharf.viewer.theme", document.documentElement.dataset.theme)
  })
  window.addEventListener("hashchange", () => { if (readFragment() && !conn.ws && $("relay").value && $("tenant").value) connect() })
  new ResizeObserver(() => drawRows()).observe($("viewport"))
}

async function main() {
  const theme = store.get("wharf.viewer.theme")
  if (theme) document.documentElement.dataset.theme = theme
  await init()
  state.reader = new Reader()
  state.window = store.get("wharf.viewer.window", 5000)
  $("window").value = state.window
  loadKeys()
  for (const g of store.get("wharf.viewer.grants", [])) addGrant(g, false) && state.grants.push(g)
  // Served by a relay: it is the relay to read from.
  const saved = store.get("wharf.viewer.relay", {})
  $("relay").value = location.protocol.startsWith("http") ? `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}` : (saved.relay ?? "ws://127.0.0.1:8787")
  $("tenant").value = saved.tenant ?? ""
  wire()
  const fromLink = readFragment()
  requestAnimationFrame(render)
  // Tests and the curious read the counters here.
  window.wharfViewer = { state, conn, stats: () => ({ ...state.stats, rowsKept: state.rows.length, seconds: (performance.now() - state.stats.started) / 1000 }) }
  if ((fromLink || saved.tenant) && $("relay").value && $("tenant").value) connect()
  else setStatus("idle", "Not connected")
}

main().catch((e) => {
  console.error(e)
  setStatus("error", "Failed to start", String(e.message ?? e))
})
