// The v3 client pings every 10 s and drops (for good) on a missing or wrong Pong.
import { test, after } from "node:test"
import assert from "node:assert/strict"
import { setTimeout as delay } from "node:timers/promises"
import { startRelay, makeAgent, newIdentity } from "../harness.mjs"

const relay = await startRelay()
after(async () => assert.equal(await relay.stop(), 0))

test("a connection stays up over 30 s of pings", { timeout: 60_000 }, async () => {
  const identity = newIdentity()
  const url = relay.url("keepalive")
  const quiet = makeAgent({ url, identity })
  const writer = makeAgent({ url, identity })
  try {
    await quiet.start()
    // Waiting is the test: three ping rounds must pass while nothing else happens.
    await delay(32_000)
    await writer.start()
    await writer.write({ id: "after-30s", title: "still connected?" })
    await quiet.waitFor((seen) => seen.some((t) => t.id === "after-30s"))
    assert.equal(quiet.seen.length, 1)
  } finally {
    await Promise.allSettled([quiet.dispose(), writer.dispose()])
  }
})
