// The viewer in headless Chromium opening a log from its newest snapshot (`wharf snapshot`), and
// a log whose history the relay's retention deleted (admin API). A relay under token auth, as in
// viewer.test.mjs: writers hold read+write tokens, the page a read-only one, the admin calls an
// admin token for their tenant.
import { test, after } from "node:test"
import assert from "node:assert/strict"
import { existsSync, mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { unpack } from "msgpackr"
import { chromium } from "playwright-core"
import { startRelay, wharf } from "../harness.mjs"

const executablePath = process.env.CHROMIUM ?? "/usr/bin/chromium"
if (!existsSync(executablePath)) throw new Error(`${executablePath} is missing: install Debian's chromium (.ci/run does), or set CHROMIUM`)

const relay = await startRelay({ auth: "token" })
const dir = mkdtempSync(join(tmpdir(), "wharf-viewer-snapshot-"))
const browser = await chromium.launch({
  executablePath,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking"]
})
after(async () => {
  await browser.close()
  await relay.stop()
  rmSync(dir, { recursive: true, force: true })
})

/** A fresh native log on `tenant`: `push(lines | flags)` and `snapshot()` through the CLI. */
async function nativeLog(tenant, name) {
  const identity = join(dir, `${name}.id`)
  const journal = join(dir, `${name}.db`)
  const id = JSON.parse(await wharf(["keygen", "--json", "-o", identity]))
  const common = ["-i", identity, "--journal", journal, ...relay.cliArgs(tenant)]
  return {
    identity,
    log: id.log,
    /** Pushes NDJSON events (an array of {event, primaryKey, payload}) and waits for the acks. */
    push: async (events) => {
      const out = JSON.parse(await wharf(["push", "--json", ...common], { input: events.map((e) => JSON.stringify(e)).join("\n") + "\n" }))
      assert.equal(out.appended, events.length, JSON.stringify(out))
    },
    snapshot: async () => JSON.parse(await wharf(["snapshot", "--json", ...common]))
  }
}

/** A page that holds a grant for `identity` and follows its log on `tenant`, live. */
async function openViewer(tenant, identity) {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } })
  const errors = []
  page.on("pageerror", (e) => errors.push(e.message))
  const sent = []
  page.on("websocket", (ws) => ws.on("framesent", (f) => sent.push(Buffer.from(f.payload))))
  await page.goto(`${relay.http}/viewer/`)
  await page.waitForFunction(() => /^[A-Za-z0-9_-]{43}$/.test((document.querySelector("#pubkey")?.textContent ?? "").trim()), null, { timeout: 15_000 })
  const publicKey = (await page.locator("#pubkey").textContent()).trim()
  const grant = JSON.parse(await wharf(["grant", "--json", "-i", identity, "--to", publicKey])).grant
  await page.goto(`${relay.http}/viewer/#${new URLSearchParams({ tenant, grant, token: relay.token(tenant, "read") })}`)
  return { page, errors, sent }
}

/** The rows the page draws, top to bottom (few enough here that every one is in the DOM). */
const drawnRows = (page) => page.$$eval("#rows .tr", (els) => els.map((el) => ({
  classes: [...el.classList].filter((c) => c !== "tr" && c !== "selected"),
  seq: el.querySelector(".c-seq")?.textContent ?? "",
  badge: el.querySelector(".c-time .badge")?.textContent ?? null,
  note: el.querySelector(".c-note")?.textContent ?? null,
  event: el.querySelector(".c-event")?.textContent ?? null,
  key: el.querySelector(".c-key")?.textContent ?? null,
  payload: el.querySelector(".c-payload")?.textContent ?? null
})))

/** Waits until the page draws exactly `n` rows, and returns them. */
async function waitForDrawn(page, n, what) {
  try {
    await page.waitForFunction((n) => document.querySelectorAll("#rows .tr").length === n, n, { timeout: 15_000 })
  } catch (e) {
    throw new Error(`${what}: the page did not draw ${n} rows; it drew ${JSON.stringify(await drawnRows(page))}`, { cause: e })
  }
  return drawnRows(page)
}

const entryRow = (row) => ({ seq: row.seq, event: row.event, key: row.key, payload: JSON.parse(row.payload), classes: row.classes })

test("the viewer opens a log from its snapshot: the snapshot row, its records, the entries after it, then live ones", async () => {
  const tenant = "snapshots"
  const log = await nativeLog(tenant, "snap")
  // 6 events over 3 primary keys (#0-#5): the snapshot keeps the newest of each, #3, #4 and #5.
  const keys = ["alpha", "beta", "gamma"]
  await log.push([1, 2].flatMap((round) => keys.map((k) => ({ event: "Set", primaryKey: k, payload: { key: k, round } }))))
  const stored = await log.snapshot()
  assert.deepEqual({ log: stored.log, sequence: stored.sequence, records: stored.records }, { log: log.log, sequence: 5, records: 3 })
  // Two entries after it (#6, #7).
  await log.push([
    { event: "Set", primaryKey: "alpha", payload: { key: "alpha", round: 3 } },
    { event: "Note", primaryKey: "delta", payload: { text: "after the snapshot" } }
  ])

  const { page, errors, sent } = await openViewer(tenant, log.identity)
  await page.waitForFunction(() => document.querySelector("#status")?.dataset.state === "live", null, { timeout: 15_000 })
  const rows = await waitForDrawn(page, 6, "snapshot + 3 records + 2 entries")

  // The snapshot's own row comes first: it covers #0-#5 and kept 3 records.
  assert.deepEqual(rows[0].classes, ["snapshot-head"], JSON.stringify(rows[0]))
  assert.equal(rows[0].seq, "≤5")
  assert.equal(rows[0].badge, "snapshot")
  assert.equal(rows[0].note, "Snapshot up to #5 (3 records)")
  // Then its records, the newest entry per key, in sequence order.
  assert.deepEqual(rows.slice(1, 4).map(entryRow), [
    { seq: "3", event: "Set", key: "alpha", payload: { key: "alpha", round: 2 }, classes: ["from-snapshot"] },
    { seq: "4", event: "Set", key: "beta", payload: { key: "beta", round: 2 }, classes: ["from-snapshot"] },
    { seq: "5", event: "Set", key: "gamma", payload: { key: "gamma", round: 2 }, classes: ["from-snapshot"] }
  ])
  // Then the entries after it; none of #0-#5 comes as an entry of its own.
  assert.deepEqual(rows.slice(4).map(entryRow), [
    { seq: "6", event: "Set", key: "alpha", payload: { key: "alpha", round: 3 }, classes: [] },
    { seq: "7", event: "Note", key: "delta", payload: { text: "after the snapshot" }, classes: [] }
  ])
  const kept = await page.evaluate(() => window.wharfViewer.state.rows.map((r) => ({ kind: r.kind, snapshot: r.snapshot, seq: r.sequence, records: r.records })))
  assert.deepEqual(kept, [
    { kind: "snapshot", snapshot: true, seq: 5, records: 3 },
    { kind: "entry", snapshot: true, seq: 3, records: undefined },
    { kind: "entry", snapshot: true, seq: 4, records: undefined },
    { kind: "entry", snapshot: true, seq: 5, records: undefined },
    { kind: "entry", snapshot: false, seq: 6, records: undefined },
    { kind: "entry", snapshot: false, seq: 7, records: undefined }
  ])
  // The page asked for the snapshot.
  const requests = sent.map((f) => unpack(f)).filter((m) => m._tag === "RequestChanges" && m.publicKey === log.log)
  assert.ok(requests.some((m) => m.snapshot === true), `requests: ${JSON.stringify(requests)}`)

  // The viewer keeps going: an entry written while it is open arrives live, after the others.
  await log.push([{ event: "Live", primaryKey: "epsilon", payload: { live: true } }])
  const live = await waitForDrawn(page, 7, "the live entry")
  assert.deepEqual(entryRow(live[6]), { seq: "8", event: "Live", key: "epsilon", payload: { live: true }, classes: [] })
  assert.deepEqual(live.slice(0, 6), rows, "the rows before it stay as they were")
  assert.equal(await page.evaluate(() => document.querySelector("#status").dataset.state), "live")
  assert.deepEqual(errors, [])
  await page.close()
})

test("the viewer marks history the relay's retention deleted, then shows what remains and live entries", async () => {
  const tenant = "retained"
  const log = await nativeLog(tenant, "retained")
  await log.push(Array.from({ length: 5 }, (_, i) => ({ event: "Tick", primaryKey: `t${i}`, payload: { n: i } })))

  // Keep the newest 2 entries of each log, and apply that now (admin API, admin token).
  const adminToken = relay.token(tenant, "admin")
  const admin = async (method, path, body) => {
    const res = await fetch(`${relay.http}/admin/v1/tenants/${tenant}/${path}`, {
      method,
      headers: { authorization: `Bearer ${adminToken}`, ...(body ? { "content-type": "application/json" } : {}) },
      body: body ? JSON.stringify(body) : undefined
    })
    const text = await res.text()
    assert.equal(res.status, 200, `${method} ${path}: ${text}`)
    return JSON.parse(text)
  }
  await admin("PUT", "settings", { retention: { max_entries: 2 } })
  const report = await admin("POST", "retention")
  assert.equal(report.entries_deleted, 3, JSON.stringify(report))
  assert.deepEqual(report.truncated, [{ public_key: log.log, first_sequence: 3 }])

  const { page, errors } = await openViewer(tenant, log.identity)
  await page.waitForFunction(() => document.querySelector("#status")?.dataset.state === "live", null, { timeout: 15_000 })
  const rows = await waitForDrawn(page, 3, "history marker + 2 entries")
  assert.deepEqual(rows[0].classes, ["history-marker"], JSON.stringify(rows[0]))
  assert.equal(rows[0].seq, "<3")
  assert.equal(rows[0].badge, "deleted")
  assert.equal(rows[0].note, "History before #3 was deleted by the relay's retention policy")
  assert.deepEqual(rows.slice(1).map(entryRow), [
    { seq: "3", event: "Tick", key: "t3", payload: { n: 3 }, classes: [] },
    { seq: "4", event: "Tick", key: "t4", payload: { n: 4 }, classes: [] }
  ])

  // Live entries still arrive after the marker.
  await log.push([{ event: "Tick", primaryKey: "t5", payload: { n: 5 } }])
  const live = await waitForDrawn(page, 4, "the live entry")
  assert.deepEqual(entryRow(live[3]), { seq: "5", event: "Tick", key: "t5", payload: { n: 5 }, classes: [] })
  assert.equal(live.filter((r) => r.classes.includes("history-marker")).length, 1, "one marker")
  assert.deepEqual(errors, [])
  await page.close()
})
