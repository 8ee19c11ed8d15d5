// Shared pieces of the compat suite: a real wharf-relay child process on 127.0.0.1:0, and
// agents built exactly as an Effect v3 app builds them (EventLog + EventLogRemote.layerWebSocket).
import { spawn, execFile, execFileSync } from "node:child_process"
import { mkdtempSync, rmSync, existsSync } from "node:fs"
import { tmpdir } from "node:os"
import { join, dirname } from "node:path"
import { fileURLToPath } from "node:url"
import { createInterface } from "node:readline"
import { EventGroup, EventJournal, EventLog, EventLogEncryption, EventLogRemote } from "@effect/experimental"
import { NodeSocket } from "@effect/platform-node"
import { Effect, Layer, ManagedRuntime, Schema } from "effect"

const here = dirname(fileURLToPath(import.meta.url))

function relayBinary() {
  if (process.env.RELAY_BIN) return process.env.RELAY_BIN
  const bin = join(here, "..", "..", "target", "debug", "wharf-relay")
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

/** The `wharf` CLI that `scripts/test` builds (or `$WHARF_BIN`). */
export const wharfBin = process.env.WHARF_BIN ?? join(here, "..", "..", "target", "debug", "wharf")

/** Runs the `wharf` CLI; resolves with stdout, rejects with stderr on a non-zero exit. */
export function wharf(args, { input } = {}) {
  if (!existsSync(wharfBin)) throw new Error(`${wharfBin} is missing: run \`cargo build -p wharf-client\` first (scripts/test does)`)
  return new Promise((resolve, reject) => {
    const child = execFile(wharfBin, args, { maxBuffer: 64 << 20 }, (err, stdout, stderr) =>
      err ? reject(new Error(`wharf ${args.join(" ")}: ${err.message}\n${stderr}`)) : resolve(stdout))
    // Commands that never read stdin may exit before the write lands: EPIPE then is expected,
    // and the exit status (above) is what tells success from failure.
    child.stdin.on("error", () => {})
    child.stdin.end(input ?? "")
  })
}

export const Todos = EventGroup.empty.add({
  tag: "TodoCreated",
  primaryKey: (todo) => todo.id,
  payload: Schema.Struct({ id: Schema.String, title: Schema.String })
})
export const schema = EventLog.schema(Todos)

/**
 * An Effect v3 EventLog app syncing through `url`. `seen` lists every payload its handler ran
 * for, in order (own writes and remote ones).
 */
export function makeAgent({ url, identity, journal = EventJournal.layerMemory }) {
  const seen = []
  let wake = () => {}
  const HandlersLive = EventLog.group(Todos, (handlers) =>
    handlers.handle("TodoCreated", ({ payload }) =>
      Effect.sync(() => {
        seen.push(payload)
        wake()
      })))
  const EventLogLive = EventLog.layer(schema).pipe(
    Layer.provide(HandlersLive),
    Layer.provideMerge(journal),
    Layer.provide(Layer.succeed(EventLog.Identity, identity))
  )
  const RemoteLive = EventLogRemote.layerWebSocket(url).pipe(
    Layer.provide(EventLogEncryption.layerSubtle),
    Layer.provide(NodeSocket.layerWebSocketConstructor)
  )
  const runtime = ManagedRuntime.make(RemoteLive.pipe(Layer.provideMerge(EventLogLive)))
  return {
    seen,
    start: () => runtime.runPromise(Effect.void),
    write: (todo) =>
      runtime.runPromise(Effect.gen(function*() {
        const client = yield* EventLog.makeClient(schema)
        yield* client("TodoCreated", todo)
      })),
    /** The entries in this agent's own journal (written after its handlers ran). */
    journalEntries: () => runtime.runPromise(Effect.flatMap(EventJournal.EventJournal, (journal) => journal.entries)),
    /** Resolves once `predicate(seen)` holds; fails after `ms`. */
    waitFor(predicate, ms = 20_000) {
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`timed out; seen ${JSON.stringify(seen.map((t) => t.id))}`)), ms)
        const check = () => {
          if (predicate(seen)) {
            clearTimeout(timer)
            wake = () => {}
            resolve(seen)
          }
        }
        wake = check
        check()
      })
    },
    dispose: () => runtime.dispose()
  }
}

/** Agents a test file makes, to dispose of together (in its `after`). */
export function agentPool() {
  const agents = []
  return {
    agent(opts) {
      const a = makeAgent(opts)
      agents.push(a)
      return a
    },
    dispose: () => Promise.allSettled(agents.map((a) => a.dispose()))
  }
}

export const ids = (seen) => seen.map((t) => t.id).sort()
export const newIdentity = () => EventLog.Identity.makeRandom()
