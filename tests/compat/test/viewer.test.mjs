// The viewer in headless Chromium (Debian's `chromium`, driven by playwright-core), against a
// real relay that serves it at /viewer. Entries come from the `wharf` CLI (native suite) and a
// real Effect v3 client (AES-GCM); the grants reach the page in the URL fragment.
import { test, after } from "node:test"
import assert from "node:assert/strict"
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join, dirname } from "node:path"
import { fileURLToPath } from "node:url"
import { randomBytes } from "node:crypto"
import { pack, unpack } from "msgpackr"
import WebSocket from "ws"
import { chromium } from "playwright-core"
import { EventLog } from "@effect/experimental"
import { startRelay, makeAgent, wharf } from "../harness.mjs"

const here = dirname(fileURLToPath(import.meta.url))
const artifacts = join(here, "..", "artifacts")
const executablePath = process.env.CHROMIUM ?? "/usr/bin/chromium"
if (!existsSync(executablePath)) throw new Error(`${executablePath} is missing: install Debian's chromium (.ci/run does), or set CHROMIUM`)

// Under token auth, as a relay on a network runs: writers hold read+write tokens, the viewer a
// read-only one (all it needs), which it sends as a WebSocket subprotocol, never in the URL.
const relay = await startRelay({ auth: "token" })
const dir = mkdtempSync(join(tmpdir(), "wharf-viewer-"))
const tenant = "viewer"
const browser = await chromium.launch({
  executablePath,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking"]
})
const agents = []
after(async () => {
  await browser.close()
  // A v3 client that lost its relay can hang in dispose (wire spec §8): do not wait forever.
  await Promise.race([Promise.allSettled(agents.map((a) => a.dispose())), new Promise((r) => setTimeout(r, 5000).unref())])
  await relay.stop()
  rmSync(dir, { recursive: true, force: true })
})

const cli = (args, input) => wharf([...args, ...relay.cliArgs(tenant)], { input })
const viewerToken = relay.token(tenant, "read")

/** Writes an entry that no key opens (someone who knows the log name can always append). */
async function writeGarbage(log) {
  const ws = new WebSocket(relay.url(tenant))
  await new Promise((resolve, reject) => { ws.once("open", resolve); ws.once("error", reject) })
  const acked = new Promise((resolve) => ws.on("message", (data) => { if (unpack(data)._tag === "Ack") resolve() }))
  ws.send(pack({ publicKey: log, id: 0, iv: randomBytes(8), encryptedEntries: [{ entryId: randomBytes(16), encryptedEntry: Buffer.from("not a ciphertext") }], _tag: "WriteEntries" }))
  await acked
  ws.close()
}

test("the viewer decrypts both suites live, shows locked rows, and reconnects by itself", async () => {
  // Two logs: a native one written by the CLI, an Effect one written by a real Effect client.
  const native = JSON.parse(await wharf(["keygen", "--json", "-o", join(dir, "native.id")]))
  const effectFile = join(dir, "effect.id")
  const effect = JSON.parse(await wharf(["keygen", "--effect", "--json", "-o", effectFile]))
  const facts = Array.from({ length: 20 }, (_, i) =>
    JSON.stringify({ event: "FactLearned", primaryKey: `fact-${i}`, payload: { text: `fact number ${i}`, confidence: 0.5 + i / 100 } })).join("\n")
  await cli(["push", "--json", "-i", join(dir, "native.id"), "--journal", join(dir, "native.db")], facts + "\n")
  await writeGarbage(native.log)

  const writer = makeAgent({ url: relay.url(tenant), identity: EventLog.Identity.decodeString(readFileSync(effectFile, "utf8").trim()) })
  agents.push(writer)
  await writer.start()
  for (let i = 0; i < 5; i++) await writer.write({ id: `todo-${i}`, title: `Effect todo ${i}` })

  const page = await browser.newPage({ viewport: { width: 1440, height: 860 } })
  const errors = []
  page.on("pageerror", (e) => errors.push(e.message))
  const sent = []
  const socketUrls = []
  page.on("websocket", (ws) => {
    socketUrls.push(ws.url())
    ws.on("framesent", (f) => sent.push(Buffer.from(f.payload)))
  })
  // First visit: the page makes its x25519 key pair and shows the public key.
  await page.goto(`${relay.http}/viewer`)
  // The key appears once the wasm module has loaded (a placeholder shows until then).
  await page.waitForFunction(() => /^[A-Za-z0-9_-]{43}$/.test((document.querySelector("#pubkey")?.textContent ?? "").trim()))
  const publicKey = (await page.locator("#pubkey").textContent()).trim()
  assert.match(publicKey, /^[A-Za-z0-9_-]{43}$/)
  assert.equal(await page.locator("#relay").inputValue(), relay.base, "prefilled from the page's origin")

  const grant = async (file) => JSON.parse(await wharf(["grant", "--json", "-i", file, "--to", publicKey])).grant
  const fragment = new URLSearchParams({ tenant, token: viewerToken })
  fragment.append("grant", await grant(join(dir, "native.id")))
  fragment.append("grant", await grant(effectFile))
  await page.goto(`${relay.http}/viewer/#${fragment}`)
  await page.waitForFunction(() => document.querySelectorAll("#logs li .name").length === 2)
  assert.equal(new URL(page.url()).hash, "", "the grants do not stay in the address bar")

  // 20 native + 1 locked + 5 Effect entries (the Effect client uploads about every 500 ms).
  await page.waitForFunction(() => window.wharfViewer?.state.rows.length >= 26, null, { timeout: 20_000 })
  const rows = await page.evaluate(() => window.wharfViewer.state.rows.map((r) => ({ log: r.log, seq: r.sequence, event: r.event, locked: r.locked, suite: r.suite, payload: r.payload })))
  const nativeRows = rows.filter((r) => r.log === native.log)
  const effectRows = rows.filter((r) => r.log === effect.log)
  assert.equal(nativeRows.filter((r) => !r.locked && r.event === "FactLearned").length, 20)
  assert.equal(nativeRows.filter((r) => r.locked).length, 1, "the garbage entry is a locked row")
  assert.equal(effectRows.length, 5)
  assert.ok(effectRows.every((r) => r.event === "TodoCreated" && r.suite === "aes-256-gcm" && !r.locked))
  assert.deepEqual(JSON.parse(effectRows.find((r) => r.payload.includes("todo-3")).payload), { id: "todo-3", title: "Effect todo 3" })
  await page.waitForFunction(() => document.querySelector("#status").dataset.state === "live")
  assert.match(await page.locator("#status-text").textContent(), /Live/)
  // Done with the Effect client: a v3 client whose relay restarts never comes back (wire spec §5.8),
  // and disposing it then hangs.
  await writer.dispose()
  agents.splice(agents.indexOf(writer), 1)
  assert.ok(await page.locator(".tr.locked").count() >= 1, "the locked row is on screen")

  // New entries arrive live.
  await cli(["push", "-i", join(dir, "native.id"), "--journal", join(dir, "native.db"), "--event", "ToolResult", "--key", "search-1", "--payload", JSON.stringify({ tool: "search", output: "live!" })])
  await page.waitForFunction(() => window.wharfViewer.state.rows.some((r) => r.event === "ToolResult"), null, { timeout: 10_000 })

  // The detail pane shows the payload as formatted JSON.
  await page.locator(".tr", { hasText: "ToolResult" }).first().click()
  assert.match(await page.locator("#detail-json").textContent(), /"output": "live!"/)

  // Filter by event and by text.
  await page.selectOption("#event-filter", "TodoCreated")
  await page.waitForFunction(() => [...document.querySelectorAll(".tr .c-event")].every((e) => e.textContent === "TodoCreated"))
  await page.selectOption("#event-filter", "")
  await page.fill("#text-filter", "fact number 7")
  await page.waitForFunction(() => document.querySelectorAll(".tr").length === 1)
  await page.fill("#text-filter", "")

  mkdirSync(artifacts, { recursive: true })
  await page.screenshot({ path: join(artifacts, "viewer.png") })

  // Restart the relay: the indicator goes reconnecting → live without a click, and nothing is lost.
  await page.evaluate(() => {
    window.__states = []
    new MutationObserver(() => window.__states.push(document.querySelector("#status").dataset.state))
      .observe(document.querySelector("#status"), { attributes: true, attributeFilter: ["data-state"] })
  })
  await relay.restart()
  await page.waitForFunction(() => window.__states.includes("reconnecting"), null, { timeout: 15_000 })
  await page.waitForFunction(() => document.querySelector("#status").dataset.state === "live" && window.__states.includes("reconnecting"), null, { timeout: 20_000 })
  const states = await page.evaluate(() => window.__states)
  assert.ok(states.lastIndexOf("live") > states.indexOf("reconnecting"), `states: ${states}`)
  await cli(["push", "-i", join(dir, "native.id"), "--journal", join(dir, "native.db"), "--event", "AfterRestart", "--key", "k", "--payload", "{}"])
  await page.waitForFunction(() => window.wharfViewer.state.rows.some((r) => r.event === "AfterRestart"), null, { timeout: 10_000 })
  const seqs = await page.evaluate((log) => window.wharfViewer.state.rows.filter((r) => r.log === log).map((r) => r.sequence), native.log)
  assert.deepEqual(seqs, [...Array(seqs.length).keys()], "no gap and no duplicate across the restart")

  // The token went as a subprotocol: no socket URL carries it.
  assert.ok(socketUrls.length >= 2, `sockets: ${socketUrls}`)
  for (const url of socketUrls) assert.ok(!url.includes("token") && !url.includes(viewerToken), url)
  // Read-only: the page never sent a WriteEntries.
  assert.ok(sent.length > 0)
  for (const frame of sent) assert.notEqual(unpack(frame)._tag, "WriteEntries")
  assert.deepEqual(errors, [])
})

test("jump to a sequence and scroll back through history with a bounded window", async () => {
  const id = JSON.parse(await wharf(["keygen", "--json", "-o", join(dir, "history.id")]))
  const lines = Array.from({ length: 600 }, (_, i) => JSON.stringify({ event: "Tick", primaryKey: `t${i}`, payload: { n: i } })).join("\n")
  await cli(["push", "-i", join(dir, "history.id"), "--journal", join(dir, "history.db")], lines + "\n")
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } })
  await page.goto(`${relay.http}/viewer/`)
  // A window of 200 rows: only the newest 200 of 600 are fetched and kept.
  await page.evaluate(() => localStorage.setItem("wharf.viewer.window", "200"))
  await page.reload()
  await page.waitForFunction(() => /^[A-Za-z0-9_-]{43}$/.test((document.querySelector("#pubkey")?.textContent ?? "").trim()))
  const publicKey = (await page.locator("#pubkey").textContent()).trim()
  const grant = JSON.parse(await wharf(["grant", "--json", "-i", join(dir, "history.id"), "--to", publicKey])).grant
  await page.goto(`${relay.http}/viewer/#${new URLSearchParams({ tenant, grant, token: viewerToken })}`)
  await page.waitForFunction(() => document.querySelector("#status").dataset.state === "live")
  await page.waitForFunction(() => window.wharfViewer.state.rows.length === 200)
  const range = () => page.evaluate(() => { const s = window.wharfViewer.state.rows.map((r) => r.sequence); return [s[0], s[s.length - 1], s.length] })
  assert.deepEqual(await range(), [400, 599, 200])

  await page.fill("#jump", "50")
  await page.click("#jump-form button")
  await page.waitForFunction(() => window.wharfViewer.state.rows.length === 200 && window.wharfViewer.state.rows[0].sequence === 50)
  assert.deepEqual(await range(), [50, 249, 200])
  await page.click("#older")
  await page.waitForFunction(() => window.wharfViewer.state.rows[0]?.sequence === 0 && window.wharfViewer.state.rows.length === 200)
  assert.deepEqual(await range(), [0, 199, 200])
  await page.click("#live")
  await page.waitForFunction(() => window.wharfViewer.state.rows.at(-1)?.sequence === 599)
  assert.deepEqual(await range(), [400, 599, 200])
  assert.equal(id.suite, "xchacha20poly1305")
})

test("the viewer reads an Effect v4 log live, with a v4 grant, and never writes", async () => {
  const file = join(dir, "v4.id")
  const id = JSON.parse(await wharf(["keygen", "--effect-v4", "--json", "-o", file]))
  const v4 = (args, input) => cli([...args, "--v4", "-i", file], input)
  const notes = Array.from({ length: 12 }, (_, i) =>
    JSON.stringify({ event: "NoteAdded", primaryKey: `n${i}`, payload: { id: `n${i}`, text: `note ${i}`, count: i } })).join("\n")
  await v4(["push"], notes + "\n")

  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } })
  const errors = []
  page.on("pageerror", (e) => errors.push(e.message))
  const sent = []
  page.on("websocket", (ws) => { if (ws.url().includes("/v4/")) ws.on("framesent", (f) => sent.push(Buffer.from(f.payload))) })
  await page.goto(`${relay.http}/viewer/`)
  await page.waitForFunction(() => /^[A-Za-z0-9_-]{43}$/.test((document.querySelector("#pubkey")?.textContent ?? "").trim()))
  const publicKey = (await page.locator("#pubkey").textContent()).trim()
  const grant = JSON.parse(await wharf(["grant", "--json", "--v4", "-i", file, "--to", publicKey])).grant
  await page.goto(`${relay.http}/viewer/#${new URLSearchParams({ tenant, grant, token: viewerToken })}`)
  const log = `v4:${id.publicKey}/default`
  await page.waitForFunction((log) => window.wharfViewer?.state.rows.filter((r) => r.log === log).length === 12, log, { timeout: 20_000 })
  const rows = await page.evaluate((log) => window.wharfViewer.state.rows.filter((r) => r.log === log).map((r) => ({ seq: r.sequence, event: r.event, key: r.primaryKey, locked: r.locked, suite: r.suite, payload: r.payload })), log)
  assert.deepEqual(rows.map((r) => r.seq), [...Array(12).keys()])
  assert.ok(rows.every((r) => !r.locked && r.suite === "effect-v4" && r.event === "NoteAdded"))
  assert.deepEqual(JSON.parse(rows[7].payload), { id: "n7", text: "note 7", count: 7 })
  // Live: a new event reaches the page.
  await v4(["push", "--event", "NoteAdded", "--key", "live", "--payload", JSON.stringify({ id: "live", text: "arrived live" })])
  await page.waitForFunction((log) => window.wharfViewer.state.rows.some((r) => r.log === log && r.primaryKey === "live"), log, { timeout: 10_000 })
  // Read-only: the v4 socket carried Hello, Authenticate, Changes, Acks and Pings, never a write.
  assert.ok(sent.length > 0)
  for (const frame of sent) assert.ok(!frame.includes(Buffer.from("EventLog.Write")), "no write left the page")
  assert.deepEqual(errors, [])
})
