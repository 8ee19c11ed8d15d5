// Real Effect v3 clients (@effect/experimental 0.61.1) on two relays that share one PostgreSQL
// database (docs/scale-out.md): agents connected to different relays converge, live, and an
// agent that joins later gets the whole log from either relay. `scripts/test` starts a
// throwaway cluster (scripts/postgres) and passes its URL in WHARF_TEST_POSTGRES; without it
// this suite fails rather than skips.
import { test, after } from "node:test"
import assert from "node:assert/strict"
import { startRelay, agentPool, newIdentity, ids } from "../harness.mjs"

const store = process.env.WHARF_TEST_POSTGRES
if (!store) {
  throw new Error("WHARF_TEST_POSTGRES is not set: run scripts/test, which starts PostgreSQL (scripts/postgres start DIR)")
}
const one = await startRelay({ store })
const two = await startRelay({ store })
const { agent, dispose } = agentPool()
after(async () => {
  await dispose()
  assert.equal(await one.stop(), 0, "relay one exits 0 on SIGTERM")
  assert.equal(await two.stop(), 0, "relay two exits 0 on SIGTERM")
})

test("agents on two relays of one Postgres converge live", async () => {
  const identity = newIdentity()
  const a = agent({ url: one.url("scale"), identity })
  const b = agent({ url: two.url("scale"), identity })
  await Promise.all([a.start(), b.start()])
  const want = []
  for (let i = 0; i < 10; i++) {
    await a.write({ id: `a-${i}`, title: "through relay one" })
    await b.write({ id: `b-${i}`, title: "through relay two" })
    want.push(`a-${i}`, `b-${i}`)
  }
  want.sort()
  await a.waitFor((seen) => seen.length >= want.length)
  await b.waitFor((seen) => seen.length >= want.length)
  assert.deepEqual(ids(a.seen), want)
  assert.deepEqual(ids(b.seen), want)

  // A newcomer reads the whole log from either relay.
  for (const relay of [one, two]) {
    const c = agent({ url: relay.url("scale"), identity })
    await c.start()
    await c.waitFor((seen) => seen.length >= want.length)
    assert.deepEqual(ids(c.seen), want)
  }
})
