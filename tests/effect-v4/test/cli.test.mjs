// The `wharf` CLI and a real effect@4.1.0 app on one v4 log: the shell reads what the app wrote
// and the app's handlers run on what the shell pushed (decoded with the app's own schema).
import { test } from "node:test"
import assert from "node:assert/strict"
import { execFile } from "node:child_process"
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join, dirname } from "node:path"
import { fileURLToPath } from "node:url"
import { EventLog } from "effect/eventlog"
import { agentPool, ids, newIdentity, startRelay } from "../harness.mjs"

const here = dirname(fileURLToPath(import.meta.url))
const wharfBin = process.env.WHARF_BIN ?? join(here, "..", "..", "..", "target", "debug", "wharf")

function wharf(args, input = "") {
  if (!existsSync(wharfBin)) throw new Error(`${wharfBin} is missing: scripts/test builds it`)
  return new Promise((resolve, reject) => {
    const child = execFile(wharfBin, args, { maxBuffer: 64 << 20 }, (err, stdout, stderr) =>
      err ? reject(new Error(`wharf ${args.join(" ")}: ${err.message}\n${stderr}`)) : resolve(stdout))
    child.stdin.on("error", () => {})
    child.stdin.end(input)
  })
}

test("the wharf CLI and an Effect v4 app read each other's events", async (t) => {
  const relay = await startRelay({ auth: "token" })
  const pool = agentPool()
  const dir = mkdtempSync(join(tmpdir(), "wharf-v4-cli-"))
  t.after(async () => {
    await pool.dispose()
    await relay.stop()
    rmSync(dir, { recursive: true, force: true })
  })
  const identity = newIdentity()
  const file = join(dir, "app.id")
  writeFileSync(file, EventLog.encodeIdentityString(identity), { mode: 0o600 })
  const token = relay.token("acme")
  const cli = ["--v4", "-i", file, "--relay", `ws://${relay.addr}`, "--tenant", "acme", "--token", token]

  const app = pool.agent({ url: relay.v4url("acme"), identity })
  await app.start()
  await app.write({ id: "from-app", text: "written by Effect" })

  // The shell joins the app's log and reads the app's event, payload and all.
  const lines = (await wharf(["--json", "tail", ...cli, "--idle", "1s"])).trim().split("\n").map((l) => JSON.parse(l))
  assert.equal(lines.length, 1)
  assert.equal(lines[0].event, "NoteAdded")
  assert.equal(lines[0].primaryKey, "from-app")
  assert.deepEqual(lines[0].payload, { id: "from-app", text: "written by Effect" })

  // The shell writes; the app's handler decodes it with its own schema.
  await wharf(["push", ...cli, "--event", "NoteAdded", "--key", "from-shell", "--payload", JSON.stringify({ id: "from-shell", text: "written by wharf" })])
  const seen = await app.waitFor((s) => ids(s).includes("from-shell"))
  assert.deepEqual(seen.find((n) => n.id === "from-shell"), { id: "from-shell", text: "written by wharf" })
})
