// A real wharf-relay child process on 127.0.0.1:0 for the Node suites (tests/compat, Effect v3,
// and tests/effect-v4). No dependencies: each project imports it as it is.
import { spawn, execFileSync } from "node:child_process"
import { mkdtempSync, rmSync, existsSync } from "node:fs"
import { tmpdir } from "node:os"
import { join, dirname } from "node:path"
import { fileURLToPath } from "node:url"
import { createInterface } from "node:readline"

const here = dirname(fileURLToPath(import.meta.url))

function relayBinary() {
  if (process.env.RELAY_BIN) return process.env.RELAY_BIN
  const bin = join(here, "..", "target", "debug", "wharf-relay")
  if (!existsSync(bin)) throw new Error(`${bin} is missing: run \`cargo build -p wharf-relay\` first (scripts/test does)`)
  return bin
}

let databases = 0
/** With WHARF_COMPAT_STORE (a postgres:// URL), every relay a suite starts keeps its tenants in a
 * fresh database of that server (scripts/test runs the Effect suites so a second time). */
function compatStore() {
  const server = process.env.WHARF_COMPAT_STORE
  if (!server) return undefined
  const name = `compat_${process.pid}_${databases++}`
  execFileSync("psql", ["-q", "-d", server, "-c", `CREATE DATABASE ${name}`])
  const url = new URL(server)
  url.pathname = `/${name}`
  return url.toString()
}

/** Starts a relay on a free port with a fresh data directory. `restart()` stops it (SIGTERM) and
 * starts it again on the same address with the same data.
 *
 * With `{ auth: "token" }` it runs `--auth token`: `url(tenant)` then carries a read+write token
 * for that tenant as `?token=` (the only way an unmodified Effect v3 client can send one), and
 * `token(tenant, actions, ...flags)` mints others with `wharf-relay token issue`.
 *
 * With `{ store: "postgres://…" }` its tenants live in that PostgreSQL database, which other
 * relays may share (docs/scale-out.md). */
export async function startRelay({ auth = "none", store = compatStore() } = {}) {
  const data = mkdtempSync(join(tmpdir(), "wharf-compat-"))
  let child, exited
  const token = (tenant, actions = "read,write", ...flags) =>
    execFileSync(relayBinary(), ["token", "issue", "--data", data, "--tenant", tenant, "--actions", actions, "--sub", "compat", ...flags], { encoding: "utf8" }).trim()
  const writers = new Map()
  const logs = []
  const writeToken = (tenant) => {
    if (!writers.has(tenant)) writers.set(tenant, token(tenant))
    return writers.get(tenant)
  }
  const spawnRelay = async (listen) => {
    const storeArgs = store ? ["--store", store] : []
    child = spawn(relayBinary(), ["serve", "--listen", listen, "--data", data, "--auth", auth, ...storeArgs], {
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, WHARF_LOG: process.env.WHARF_LOG ?? "warn", NO_COLOR: "1" }
    })
    // Passed through, and kept for tests that look for a log line.
    createInterface({ input: child.stderr }).on("line", (line) => {
      logs.push(line)
      process.stderr.write(line + "\n")
    })
    exited = new Promise((resolve) => child.once("exit", resolve))
    const line = await new Promise((resolve, reject) => {
      const rl = createInterface({ input: child.stdout })
      rl.once("line", resolve)
      child.once("exit", (code) => reject(new Error(`relay exited with ${code} before listening`)))
    })
    const addr = /http:\/\/(\S+)/.exec(line)?.[1]
    if (!addr) throw new Error(`no address in ${JSON.stringify(line)}`)
    return addr
  }
  const addr = await spawnRelay("127.0.0.1:0")
  return {
    addr,
    base: `ws://${addr}`,
    http: `http://${addr}`,
    auth,
    /** Every line the relay wrote to stderr so far (its warnings). */
    logs,
    url: (tenant) => auth === "token"
      ? `ws://${addr}/t/${tenant}?token=${encodeURIComponent(writeToken(tenant))}`
      : `ws://${addr}/t/${tenant}`,
    /** The Effect v4 endpoint of `tenant` (with a read+write token under auth). */
    v4url: (tenant) => auth === "token"
      ? `ws://${addr}/v4/t/${tenant}?token=${encodeURIComponent(writeToken(tenant))}`
      : `ws://${addr}/v4/t/${tenant}`,
    /** A token for `tenant` (`wharf-relay token issue`), e.g. token("acme", "read"). */
    token,
    /** `wharf` CLI flags that reach `tenant` on this relay (with a read+write token under auth). */
    cliArgs: (tenant) => ["--relay", `ws://${addr}`, "--tenant", tenant, ...(auth === "token" ? ["--token", writeToken(tenant)] : [])],
    async restart() {
      child.kill("SIGTERM")
      await exited
      await spawnRelay(addr)
    },
    async stop() {
      child.kill("SIGTERM")
      const code = await exited
      rmSync(data, { recursive: true, force: true })
      return code
    }
  }
}
