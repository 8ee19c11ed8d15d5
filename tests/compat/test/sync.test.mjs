// Real Effect v3 clients (@effect/experimental 0.61.1) syncing through a Wharf relay.
import "fake-indexeddb/auto"
import { test, after } from "node:test"
import assert from "node:assert/strict"
import { createHash } from "node:crypto"
import { EventJournal } from "@effect/experimental"
import WebSocket from "ws"
import { startRelay, agentPool, newIdentity, ids } from "../harness.mjs"

// Token auth on: every client below sends its token the only way a v3 client can, `?token=`.
const relay = await startRelay({ auth: "token" })
const { agent, dispose } = agentPool()
after(async () => {
  await dispose()
  assert.equal(await relay.stop(), 0, "relay exits 0 on SIGTERM")
})

test("two clients with one identity converge and run their handlers", async () => {
  const identity = newIdentity()
  const url = relay.url("converge")
  const a = agent({ url, identity })
  const b = agent({ url, identity })
  await Promise.all([a.start(), b.start()])
  await a.write({ id: "a-1", title: "from a" })
  await b.write({ id: "b-1", title: "from b" })
  await a.write({ id: "a-2", title: "from a again" })
  const want = ["a-1", "a-2", "b-1"]
  await a.waitFor((seen) => seen.length >= 3)
  await b.waitFor((seen) => seen.length >= 3)
  assert.deepEqual(ids(a.seen), want)
  assert.deepEqual(ids(b.seen), want)
})

/** The HTTP status the relay answers an upgrade to `url` with (101 when it lets the socket in). */
function upgradeStatus(url) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url)
    ws.once("unexpected-response", (_req, res) => { resolve(res.statusCode); ws.terminate() })
    ws.once("open", () => { resolve(101); ws.close() })
    ws.once("error", (e) => { if (!/Unexpected server response/.test(e.message)) reject(e) })
  })
}

test("the relay lets in only the tokens it issued, for their own tenant", async () => {
  assert.equal(await upgradeStatus(`${relay.base}/t/gate`), 401, "no token")
  assert.equal(await upgradeStatus(`${relay.base}/t/gate?token=not-a-jwt`), 401, "malformed token")
  assert.equal(await upgradeStatus(`${relay.base}/t/gate?token=${relay.token("other")}`), 403, "another tenant's token")
  assert.equal(await upgradeStatus(relay.url("gate")), 101, "its own token")
})

test("a read-only token is enough to follow a log", async () => {
  const identity = newIdentity()
  const writer = agent({ url: relay.url("readonly"), identity })
  const token = relay.token("readonly", "read")
  const reader = agent({ url: `${relay.base}/t/readonly?token=${encodeURIComponent(token)}`, identity })
  await Promise.all([writer.start(), reader.start()])
  await writer.write({ id: "w-1", title: "written with read+write" })
  await writer.write({ id: "w-2", title: "again" })
  await reader.waitFor((seen) => seen.length >= 2)
  assert.deepEqual(ids(reader.seen), ["w-1", "w-2"])
})

test("two identities on one tenant stay isolated", async () => {
  const url = relay.url("isolation")
  const one = newIdentity()
  const two = newIdentity()
  const a1 = agent({ url, identity: one })
  const a2 = agent({ url, identity: one })
  const b1 = agent({ url, identity: two })
  const b2 = agent({ url, identity: two })
  await Promise.all([a1, a2, b1, b2].map((x) => x.start()))
  await a1.write({ id: "one", title: "identity one" })
  await b1.write({ id: "two", title: "identity two" })
  await a2.waitFor((seen) => seen.length >= 1)
  await b2.waitFor((seen) => seen.length >= 1)
  // A marker written after both proves that anything leaking would have arrived by now.
  await a1.write({ id: "one-marker", title: "" })
  await b1.write({ id: "two-marker", title: "" })
  await a2.waitFor((seen) => seen.length >= 2)
  await b2.waitFor((seen) => seen.length >= 2)
  assert.deepEqual(ids(a2.seen), ["one", "one-marker"])
  assert.deepEqual(ids(b2.seen), ["two", "two-marker"])
})

test("a payload over 1.5 MB arrives intact", async () => {
  const identity = newIdentity()
  const url = relay.url("large")
  const a = agent({ url, identity })
  const b = agent({ url, identity })
  await Promise.all([a.start(), b.start()])
  const title = Array.from({ length: 1_600_000 }, (_, i) => String.fromCharCode(97 + ((i * 7) % 26))).join("")
  await a.write({ id: "big", title })
  const [got] = await b.waitFor((seen) => seen.length >= 1, 30_000)
  assert.equal(got.title.length, title.length)
  const digest = (s) => createHash("sha256").update(s).digest("hex")
  assert.equal(digest(got.title), digest(title))
})

test("a late joiner catches up", async () => {
  const identity = newIdentity()
  const url = relay.url("late")
  const a = agent({ url, identity })
  await a.start()
  for (let i = 0; i < 25; i++) await a.write({ id: `t-${String(i).padStart(2, "0")}`, title: `todo ${i}` })
  // Everything a wrote is on the relay once a second agent sees it all.
  const witness = agent({ url, identity })
  await witness.start()
  await witness.waitFor((seen) => seen.length >= 25)
  const late = agent({ url, identity })
  await late.start()
  await late.waitFor((seen) => seen.length >= 25)
  assert.deepEqual(ids(late.seen), ids(a.seen))
})

test("a reader that was away gets exactly what it missed", async () => {
  const identity = newIdentity()
  const url = relay.url("away")
  const writer = agent({ url, identity })
  await writer.start()
  await writer.write({ id: "before-1", title: "" })
  await writer.write({ id: "before-2", title: "" })
  // A reader with a persistent journal (IndexedDB) reads, then goes away.
  const journal = EventJournal.layerIndexedDb({ database: `away-${identity.publicKey}` })
  const first = agent({ url, identity, journal })
  await first.start()
  await first.waitFor((seen) => seen.length >= 2)
  // The journal records remote entries after their handlers ran; leave only once it has.
  while ((await first.journalEntries()).length < 2) await new Promise((r) => setImmediate(r))
  await first.dispose()
  await writer.write({ id: "missed-1", title: "" })
  await writer.write({ id: "missed-2", title: "" })
  await writer.write({ id: "missed-3", title: "" })
  // Make sure the relay has them before the reader returns.
  const witness = agent({ url, identity })
  await witness.start()
  await witness.waitFor((seen) => seen.length >= 5)
  const back = agent({ url, identity, journal })
  await back.start()
  await back.waitFor((seen) => seen.length >= 3)
  // A marker written after its return: when it arrives, anything else would have too.
  await writer.write({ id: "z-after", title: "" })
  await back.waitFor((seen) => seen.some((t) => t.id === "z-after"))
  assert.deepEqual(ids(back.seen), ["missed-1", "missed-2", "missed-3", "z-after"])
})

test("the relay notices a real v3 batch sharing one AES-GCM iv (the guardrail, SECURITY.md)", async () => {
  const identity = newIdentity()
  const writer = agent({ url: relay.url("guardrail"), identity })
  const reader = agent({ url: relay.url("guardrail"), identity })
  await Promise.all([writer.start(), reader.start()])
  // Written back to back, these go up in one WriteEntries, under one iv.
  await Promise.all(Array.from({ length: 5 }, (_, i) => writer.write({ id: `g-${i}`, title: "same iv" })))
  await reader.waitFor((seen) => seen.length >= 5)
  const warned = relay.logs.filter((l) => /iv reuse: \d+ entries share one AES-GCM iv/.test(l) && l.includes(identity.publicKey))
  assert.equal(warned.length, 1, `one warning for this connection's log, in:\n${relay.logs.join("\n")}`)
})
