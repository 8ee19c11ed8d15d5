// The Rust SDK's `wharf` CLI and a real Effect v3 client share logs through the relay, in both
// directions, with an Effect identity (AES-256-GCM).
import { test, after } from "node:test"
import assert from "node:assert/strict"
import { spawn } from "node:child_process"
import { createInterface } from "node:readline"
import { mkdtempSync, readFileSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { EventLog } from "@effect/experimental"
import { startRelay, makeAgent, ids, wharf, wharfBin } from "../harness.mjs"


const relay = await startRelay()
const dir = mkdtempSync(join(tmpdir(), "wharf-rust-compat-"))
const agents = []
after(async () => {
  await Promise.allSettled(agents.map((a) => a.dispose()))
  await relay.stop()
  rmSync(dir, { recursive: true, force: true })
})

async function effectIdentity(name) {
  const file = join(dir, `${name}.id`)
  const made = JSON.parse(await wharf(["keygen", "--effect", "--json", "-o", file]))
  const text = readFileSync(file, "utf8").trim()
  return { file, log: made.log, identity: EventLog.Identity.decodeString(text) }
}

test("Rust pushes with an Effect identity; an Effect client decrypts and handles every entry", async () => {
  const tenant = "rust-to-effect"
  const { file, log, identity } = await effectIdentity("r2e")
  assert.equal(identity.publicKey, log)
  const lines = Array.from({ length: 25 }, (_, i) =>
    JSON.stringify({ event: "TodoCreated", primaryKey: `todo-${i}`, payload: { id: `todo-${i}`, title: `from rust ${i}` } }))
  const out = JSON.parse(await wharf(
    ["push", "--json", "-i", file, "--journal", join(dir, "r2e.db"), "--relay", relay.url(tenant).replace(`/t/${tenant}`, ""), "--tenant", tenant],
    { input: lines.join("\n") + "\n" }))
  assert.equal(out.appended, 25)
  assert.equal(out.acked, true)

  const reader = makeAgent({ url: relay.url(tenant), identity })
  agents.push(reader)
  await reader.start()
  await reader.waitFor((seen) => seen.length >= 25)
  assert.deepEqual(ids(reader.seen), Array.from({ length: 25 }, (_, i) => `todo-${i}`).sort())
  assert.equal(reader.seen.find((t) => t.id === "todo-7").title, "from rust 7")
})

test("an Effect client writes; `wharf tail` decrypts every entry in sequence order", async () => {
  const tenant = "effect-to-rust"
  const { file, identity } = await effectIdentity("e2r")
  const writer = makeAgent({ url: relay.url(tenant), identity })
  agents.push(writer)
  await writer.start()
  for (let i = 0; i < 10; i++) await writer.write({ id: `e-${i}`, title: `from effect ${i}` })
  const base = relay.url(tenant).replace(`/t/${tenant}`, "")
  // Follow the log until all ten arrived (the Effect client uploads about every 500 ms).
  const tail = spawn(wharfBin, ["tail", "--follow", "--json", "-i", file, "--relay", base, "--tenant", tenant],
    { stdio: ["ignore", "pipe", "inherit"] })
  const rows = []
  for await (const line of createInterface({ input: tail.stdout })) {
    rows.push(JSON.parse(line))
    if (rows.length === 10) break
  }
  tail.kill()
  assert.equal(rows.length, 10)
  assert.deepEqual(rows.map((r) => r.sequence), [...Array(10).keys()])
  assert.deepEqual(rows.map((r) => r.payload.id).sort(), Array.from({ length: 10 }, (_, i) => `e-${i}`).sort())
  for (const r of rows) {
    assert.equal(r.event, "TodoCreated")
    assert.equal(r.primaryKey, r.payload.id)
  }
})
