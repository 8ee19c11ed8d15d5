// Real Effect v3 clients (@effect/experimental 0.61.1) across a truncation by the relay's retention
// (docs/retention.md): a plain v3 client that asks for history below what remains gets the
// entries that remain, with a gap in their sequences and no extension message.
//
// The new client keeps its journal in (fake) IndexedDB, which records the relay's sequence of
// every entry it holds (its "remotes" store); the test reads that store to check sequences. The
// writer keeps a memory journal, whose cursor for the relay (the greatest sequence it has had
// from it) the test reads. Not IndexedDB for the writer: that journal uploads what lies after the
// last entry id it uploaded, and Effect's entry ids (UUIDv7 made with options, so without uuid's
// monotonic counter) need not grow within one millisecond, so an entry written while an upload is
// under way can sort before it and is then never uploaded (seen once in about 25 runs of this test).
//
// The relay runs without tokens, so its admin API answers loopback clients only (this test is
// one); viewer-snapshot.test.mjs drives retention under token auth with an admin token.
import "fake-indexeddb/auto"
import { test, after } from "node:test"
import assert from "node:assert/strict"
import { EventJournal } from "@effect/experimental"
import { Effect, Layer } from "effect"
import { startRelay, agentPool, newIdentity } from "../harness.mjs"

const relay = await startRelay()
const { agent, dispose } = agentPool()
after(async () => {
  await dispose()
  assert.equal(await relay.stop(), 0, "relay exits 0 on SIGTERM")
})

/** Resolves with `probe()`'s value once `ok` holds for it; fails after `ms` with `what`. */
async function until(probe, ok, what, ms = 20_000) {
  const deadline = Date.now() + ms
  for (;;) {
    const value = await probe()
    if (ok(value)) return value
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; last: ${JSON.stringify(value)}`)
    await new Promise((r) => setTimeout(r, 20))
  }
}

/** An admin API call on `tenant`, from loopback, no token; resolves with the JSON answer (with
 * `orNull`, null for an answer other than 200). */
async function admin(tenant, method, path = "", body, { orNull = false } = {}) {
  const res = await fetch(`${relay.http}/admin/v1/tenants/${tenant}${path}`, {
    method,
    headers: body ? { "content-type": "application/json" } : {},
    body: body ? JSON.stringify(body) : undefined
  })
  const text = await res.text()
  if (orNull && res.status !== 200) return null
  assert.equal(res.status, 200, `${method} ${tenant}${path}: ${text}`)
  return JSON.parse(text)
}

/** What the relay holds of the log `publicKey` of `tenant` (GET /admin/v1/tenants/{t}). */
async function logState(tenant, publicKey) {
  const detail = await admin(tenant, "GET")
  return detail.log_states.find((l) => l.public_key === publicKey) ?? null
}

const range = (from, to) => Array.from({ length: to - from }, (_, i) => from + i)

/** A journal (readJournal) holding `n` entries, each with its relay sequence. */
const settled = (n) => (journal) => journal.length === n && journal.every((e) => e.seq !== null)

const hex = (bytes) => Buffer.from(bytes).toString("hex")

/** Reads an Effect IndexedDB journal directly: every entry it holds as `{key, seq}`, its primary
 * key and the relay sequence recorded for it (null while it has none, sorted last), by sequence. */
function readJournal(database) {
  return new Promise((resolve, reject) => {
    const open = indexedDB.open(database)
    open.onerror = () => reject(open.error)
    open.onsuccess = () => {
      const db = open.result
      const tx = db.transaction(["entries", "remotes"], "readonly")
      const entries = tx.objectStore("entries").getAll()
      const remotes = tx.objectStore("remotes").getAll()
      tx.oncomplete = () => {
        db.close()
        const remoteIds = new Set(remotes.result.map((r) => hex(r.remoteId)))
        if (remoteIds.size > 1) return reject(new Error(`one remote, the relay, expected: ${[...remoteIds]}`))
        const seqs = new Map(remotes.result.map((r) => [hex(r.entryId), r.sequence]))
        resolve(entries.result
          .map((e) => ({ key: e.primaryKey, seq: seqs.get(hex(e.id)) ?? null }))
          .sort((a, b) => (a.seq ?? Infinity) - (b.seq ?? Infinity)))
      }
      tx.onerror = () => reject(tx.error)
    }
  })
}

/** The value of an unlabelled counter on the relay's /metrics (0 when absent). */
async function metric(name) {
  const res = await fetch(`${relay.http}/metrics`)
  const text = await res.text()
  assert.equal(res.status, 200, text)
  const line = text.split("\n").find((l) => l.startsWith(`${name} `))
  return line ? Number(line.split(" ")[1]) : 0
}

test("Effect v3 clients keep syncing across a truncation by retention", async () => {
  const tenant = "retention"
  const url = relay.url(tenant)
  const identity = newIdentity()
  const log = identity.publicKey
  const N = 20
  const K = 5
  const key = (i) => `t-${String(i).padStart(2, "0")}`

  // (1) A writer writes N events. The relay has them all once its log holds N entries (the
  // writer's connection creates the tenant: until then, or while it does, the admin API answers
  // something other than 200, which only means "not yet" here), and the writer has their acks
  // once its journal's cursor for the relay reaches N-1.
  const writerJournal = Effect.runSync(EventJournal.makeMemory)
  const writer = agent({ url, identity, journal: Layer.succeed(EventJournal.EventJournal, writerJournal) })
  await writer.start()
  const written = Array.from({ length: N }, (_, i) => key(i))
  for (const [i, id] of written.entries()) await writer.write({ id, title: `todo ${i}` })
  const before = await until(() => admin(tenant, "GET", "", undefined, { orNull: true }),
    (d) => d?.log_states.some((l) => l.public_key === log && l.entries === N), `the relay to hold ${N} entries`)
  assert.deepEqual(before.log_states, [{ public_key: log, entries: N, next_sequence: N, first_sequence: 0 }])
  const remoteId = Uint8Array.from(Buffer.from(before.remote_id.replaceAll("-", ""), "hex"))
  const writerCursor = () => Effect.runPromise(writerJournal.nextRemoteSequence(remoteId))
  await until(writerCursor, (seq) => seq === N - 1, "the writer's acks")

  // (2) Retention keeps the newest K entries of each log, applied now.
  const settings = await admin(tenant, "PUT", "/settings", { retention: { max_entries: K } })
  assert.equal(settings.effective.retention.max_entries, K, JSON.stringify(settings))
  const report = await admin(tenant, "POST", "/retention")
  assert.equal(report.entries_deleted, N - K, JSON.stringify(report))
  assert.deepEqual(report.truncated, [{ public_key: log, first_sequence: N - K }])
  assert.deepEqual(await logState(tenant, log), { public_key: log, entries: K, next_sequence: N, first_sequence: N - K })

  // (3) A new client (fresh journal, same identity) asks from sequence 0 and gets exactly the K
  // entries that remain, sequences N-K .. N-1, its handlers running for each, in that order.
  // (Which events those are is read, not assumed: Effect uploads a batch in entry-id order, and
  // ids made within one millisecond need not sort in write order.)
  const freshDb = `retention-fresh-${log}`
  const fresh = agent({ url, identity, journal: EventJournal.layerIndexedDb({ database: freshDb }) })
  await fresh.start()
  await fresh.waitFor((seen) => seen.length >= K)
  const remaining = await until(() => readJournal(freshDb), settled(K), "the fresh client's journal")
  assert.deepEqual(remaining.map((e) => e.seq), range(N - K, N))
  const keys = remaining.map((e) => e.key)
  assert.equal(new Set(keys).size, K)
  assert.ok(keys.every((k) => written.includes(k)), JSON.stringify(keys))
  assert.deepEqual(fresh.seen.map((t) => t.id), keys)

  // (4) The writer writes more: both get them, with sequences after the old ones (N ..).
  const more = ["after-0", "after-1", "after-2"]
  for (const id of more) await writer.write({ id, title: "after the truncation" })
  await fresh.waitFor((seen) => more.every((id) => seen.some((t) => t.id === id)))
  const withMore = await until(() => readJournal(freshDb), settled(K + more.length), "the new entries in the fresh client's journal")
  assert.deepEqual(withMore.slice(0, K), remaining)
  const moreSeqs = withMore.slice(K)
  assert.deepEqual(moreSeqs.map((e) => e.seq), range(N, N + more.length))
  assert.deepEqual(moreSeqs.map((e) => e.key).sort(), more)
  await until(writerCursor, (seq) => seq === N + more.length - 1, "the writer's acks after the truncation")
  // And the other way: the new client writes, the writer's live subscription delivers it.
  await fresh.write({ id: "from-fresh", title: "written by the new client" })
  await writer.waitFor((seen) => seen.some((t) => t.id === "from-fresh"))
  const last = { key: "from-fresh", seq: N + more.length }

  // Each journal holds what it should; the new client never saw the deleted history, and each
  // handler ran once per entry.
  const freshWant = [...remaining, ...moreSeqs, last]
  assert.deepEqual(await until(() => readJournal(freshDb), settled(freshWant.length), "the fresh client's journal"), freshWant)
  assert.deepEqual(fresh.seen.map((t) => t.id), [...remaining, ...moreSeqs].map((e) => e.key).concat("from-fresh"))
  await until(writerCursor, (seq) => seq === last.seq, "the writer's cursor to reach the new client's entry")
  const writerEntries = await Effect.runPromise(writerJournal.entries)
  assert.deepEqual(writerEntries.map((e) => e.primaryKey).sort(), [...written, ...more, "from-fresh"].sort())
  assert.deepEqual(writer.seen.map((t) => t.id), [...written, ...more, "from-fresh"])
  assert.deepEqual(await logState(tenant, log), { public_key: log, entries: K + more.length + 1, next_sequence: N + more.length + 1, first_sequence: N - K })

  // No error on the way: an Effect client whose socket fails (a message it cannot decode
  // included) reconnects, logging at debug only, so exactly one connection per client means
  // neither ever failed; the relay closed none and logged no error.
  assert.equal(await metric("wharf_connections_total"), 2)
  assert.equal(await metric("wharf_connections_open"), 2)
  const closed = (await (await fetch(`${relay.http}/metrics`)).text()).split("\n").filter((l) => l.startsWith("wharf_connections_closed_total"))
  assert.ok(closed.every((l) => / 0$/.test(l)), `connections closed by the relay: ${closed.join("; ")}`)
  assert.deepEqual(relay.logs.filter((l) => /\bERROR\b/.test(l)), [], "no error in the relay's log")
})
