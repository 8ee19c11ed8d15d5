// Real effect@4.1.0 clients (EventLogRemote over Effect RPC, schema-binary) syncing through the
// relay's /v4 endpoint.
import { test } from "node:test"
import assert from "node:assert/strict"
import { agentPool, ids, newIdentity, startRelay } from "../harness.mjs"

test("two replicas of one identity converge, live", async (t) => {
  const relay = await startRelay()
  const pool = agentPool()
  t.after(async () => {
    await pool.dispose()
    await relay.stop()
  })
  const identity = newIdentity()
  const a = pool.agent({ url: relay.v4url("acme"), identity })
  const b = pool.agent({ url: relay.v4url("acme"), identity })
  await Promise.all([a.start(), b.start()])
  await a.write({ id: "a1", text: "from a" })
  await b.write({ id: "b1", text: "from b" })
  const both = ["a1", "b1"]
  await a.waitFor((seen) => ids(seen).join() === both.join())
  await b.waitFor((seen) => ids(seen).join() === both.join())
  // Live: a later write reaches the other replica.
  await a.write({ id: "a2", text: "later" })
  await b.waitFor((seen) => ids(seen).includes("a2"))
})

test("a chunked write of a 1.5 MB event and of 250 small ones, and a 40 MB event, read back", async (t) => {
  const relay = await startRelay()
  const pool = agentPool()
  t.after(async () => {
    await pool.dispose()
    await relay.stop()
  })
  const identity = newIdentity()
  const writer = pool.agent({ url: relay.v4url("acme"), identity })
  await writer.start()
  const big = "x".repeat(1_500_000)
  await writer.write({ id: "big", text: big })
  // 250 small writes at once: they leave as one WriteEntries over 512,000 bytes, in parts.
  await Promise.all(Array.from({ length: 250 }, (_, i) => writer.write({ id: `s${String(i).padStart(3, "0")}`, text: "y".repeat(3000) })))
  const huge = "z".repeat(40_000_000)
  await writer.write({ id: "huge", text: huge })
  // A fresh replica downloads everything: Effect's own server cannot send the 40 MB event.
  const reader = pool.agent({ url: relay.v4url("acme"), identity })
  await reader.start()
  const seen = await reader.waitFor((s) => ids(s).length === 252, 120_000)
  assert.equal(seen.find((n) => n.id === "big").text.length, big.length)
  assert.equal(seen.find((n) => n.id === "huge").text, huge)
})

test("identities and stores are isolated", async (t) => {
  const relay = await startRelay()
  const pool = agentPool()
  t.after(async () => {
    await pool.dispose()
    await relay.stop()
  })
  const alice = newIdentity()
  const bob = newIdentity()
  const url = relay.v4url("acme")
  const a1 = pool.agent({ url, identity: alice })
  const a2 = pool.agent({ url, identity: alice, storeId: "work" })
  const b = pool.agent({ url, identity: bob })
  await Promise.all([a1.start(), a2.start(), b.start()])
  await a1.write({ id: "alice-default", text: "" })
  await a2.write({ id: "alice-work", text: "" })
  await b.write({ id: "bob-default", text: "" })
  // Fresh replicas of each see their own log only.
  const r1 = pool.agent({ url, identity: alice })
  const r2 = pool.agent({ url, identity: alice, storeId: "work" })
  const rb = pool.agent({ url, identity: bob })
  await Promise.all([r1.start(), r2.start(), rb.start()])
  await r1.waitFor((s) => s.length >= 1)
  await r2.waitFor((s) => s.length >= 1)
  await rb.waitFor((s) => s.length >= 1)
  // One more write in each log orders after the first: nothing else arrives meanwhile.
  await a1.write({ id: "alice-default-2", text: "" })
  await r1.waitFor((s) => s.length >= 2)
  assert.deepEqual(ids(r1.seen), ["alice-default", "alice-default-2"])
  assert.deepEqual(ids(r2.seen), ["alice-work"])
  assert.deepEqual(ids(rb.seen), ["bob-default"])
})

test("replicas catch up after the relay restarts", async (t) => {
  const relay = await startRelay()
  const pool = agentPool()
  t.after(async () => {
    await pool.dispose()
    await relay.stop()
  })
  const identity = newIdentity()
  const a = pool.agent({ url: relay.v4url("acme"), identity })
  const b = pool.agent({ url: relay.v4url("acme"), identity })
  await Promise.all([a.start(), b.start()])
  await a.write({ id: "before", text: "" })
  await b.waitFor((s) => ids(s).includes("before"))
  // Both sockets drop; the clients redial with backoff and sync what was written meanwhile.
  await relay.restart()
  await a.write({ id: "after", text: "" })
  await b.waitFor((s) => ids(s).includes("after"), 60_000)
  assert.deepEqual(ids(b.seen), ["after", "before"])
})

// One RPC request over a raw WebSocket, encoded by Effect's own codec: the attacker's tool.
async function rawSession(url) {
  const { Effect, Exit, Schema } = await import("effect")
  const { Rpc, RpcSerialization } = await import("effect/rpc")
  const { EventLogMessage: M } = await import("effect/eventlog")
  const serialization = Effect.runSync(Effect.provide(Effect.service(RpcSerialization.RpcSerialization), RpcSerialization.layerSchemaBinary()))
  const parser = serialization.makeUnsafe()
  const ws = new WebSocket(url)
  ws.binaryType = "arraybuffer"
  const inbox = []
  let wake = () => {}
  ws.onmessage = (m) => {
    inbox.push(...parser.decode(new Uint8Array(m.data)))
    wake()
  }
  await new Promise((resolve, reject) => {
    ws.onopen = resolve
    ws.onerror = reject
  })
  let id = 0
  const call = async (rpc, payload) => {
    const requestId = ++id
    const encoded = Effect.runSync(Schema.encodeEffect(serialization.codecFor(rpc.payloadSchema))(payload))
    ws.send(parser.encode({ _tag: "Request", id: requestId, tag: rpc._tag, payload: encoded, headers: [] }))
    for (;;) {
      const i = inbox.findIndex((m) => m._tag === "Exit" && m.requestId === requestId)
      if (i >= 0) {
        const [exit] = inbox.splice(i, 1)
        return Effect.runSync(Schema.decodeUnknownEffect(serialization.codecFor(Rpc.exitSchema(rpc)))(exit.exit))
      }
      await new Promise((resolve) => (wake = resolve))
    }
  }
  return { M, Exit, call, close: () => ws.close() }
}

test("an Authenticate with a bad signature for a victim's publicKey pins nothing", async (t) => {
  const relay = await startRelay()
  const pool = agentPool()
  t.after(async () => {
    await pool.dispose()
    await relay.stop()
  })
  const victim = newIdentity()
  const attacker = await rawSession(relay.v4url("acme"))
  const { M, Exit } = attacker
  const hello = await attacker.call(M.HelloRpc, undefined)
  assert.ok(Exit.isSuccess(hello))
  const refused = await attacker.call(M.AuthenticateRpc, new M.Authenticate({
    publicKey: victim.publicKey,
    signingPublicKey: crypto.getRandomValues(new Uint8Array(32)),
    signature: crypto.getRandomValues(new Uint8Array(64)),
    algorithm: "Ed25519"
  }))
  assert.ok(Exit.isFailure(refused))
  assert.match(JSON.stringify(refused.cause), /Forbidden/)
  attacker.close()
  // The victim connects as if nothing happened (Effect's own server locks it out for good).
  const a = pool.agent({ url: relay.v4url("acme"), identity: victim })
  const b = pool.agent({ url: relay.v4url("acme"), identity: victim })
  await Promise.all([a.start(), b.start()])
  await a.write({ id: "mine", text: "" })
  await b.waitFor((s) => ids(s).includes("mine"))
})

test("token scopes: a token naming publicKey/storeId covers that store only", async (t) => {
  const relay = await startRelay({ auth: "token" })
  const pool = agentPool()
  t.after(async () => {
    await pool.dispose()
    await relay.stop()
  })
  const identity = newIdentity()
  const scoped = relay.token("acme", "read,write", "--logs", `${identity.publicKey}/notes`)
  const url = `ws://${relay.addr}/v4/t/acme?token=${encodeURIComponent(scoped)}`
  const allowed = pool.agent({ url, identity, storeId: "notes" })
  await allowed.start()
  await allowed.write({ id: "in-scope", text: "" })
  const reader = pool.agent({ url, identity, storeId: "notes" })
  await reader.start()
  await reader.waitFor((s) => ids(s).includes("in-scope"))
  // The same token for another store: its writes are refused, so a replica with a full token
  // never sees them.
  const other = pool.agent({ url, identity, storeId: "other" })
  await other.start()
  await other.write({ id: "out-of-scope", text: "" })
  const full = pool.agent({ url: relay.v4url("acme"), identity, storeId: "other" })
  await full.start()
  await full.write({ id: "marker", text: "" })
  const check = pool.agent({ url: relay.v4url("acme"), identity, storeId: "other" })
  await check.start()
  await check.waitFor((s) => ids(s).includes("marker"))
  assert.deepEqual(ids(check.seen), ["marker"])
})
