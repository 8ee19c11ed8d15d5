// Shared pieces of the compat suite: a real wharf-relay child process on 127.0.0.1:0, and
// agents built exactly as an Effect v3 app builds them (EventLog + EventLogRemote.layerWebSocket).
import { execFile } from "node:child_process"
import { existsSync } from "node:fs"
import { join, dirname } from "node:path"
import { fileURLToPath } from "node:url"
import { EventGroup, EventJournal, EventLog, EventLogEncryption, EventLogRemote } from "@effect/experimental"
import { NodeSocket } from "@effect/platform-node"
import { Effect, Layer, ManagedRuntime, Schema } from "effect"
import { startRelay } from "../relay.mjs"
import { agentPool as sharedPool, seenLog } from "../agents.mjs"

export { startRelay }

const here = dirname(fileURLToPath(import.meta.url))

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
  const log = seenLog(20_000)
  const HandlersLive = EventLog.group(Todos, (handlers) =>
    handlers.handle("TodoCreated", ({ payload }) =>
      Effect.sync(() => log.push(payload))))
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
    seen: log.seen,
    start: () => runtime.runPromise(Effect.void),
    write: (todo) =>
      runtime.runPromise(Effect.gen(function*() {
        const client = yield* EventLog.makeClient(schema)
        yield* client("TodoCreated", todo)
      })),
    /** The entries in this agent's own journal (written after its handlers ran). */
    journalEntries: () => runtime.runPromise(Effect.flatMap(EventJournal.EventJournal, (journal) => journal.entries)),
    waitFor: log.waitFor,
    dispose: () => runtime.dispose()
  }
}

/** Agents a test makes, to dispose of together. */
export const agentPool = () => sharedPool(makeAgent)

export const ids = (seen) => seen.map((t) => t.id).sort()
export const newIdentity = () => EventLog.Identity.makeRandom()
