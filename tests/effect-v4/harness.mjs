// Agents built exactly as an Effect 4.x app builds them (EventLog + EventLogRemote.layerEncrypted
// over RpcClient.layerProtocolSocket, schema-binary, a WebSocket), against a real wharf-relay
// child process (../relay.mjs).
import { Effect, Layer, ManagedRuntime, Redacted, Schema } from "effect"
import { RpcClient, RpcSerialization } from "effect/rpc"
import { EventGroup, EventJournal, EventLog, EventLogMessage, EventLogRemote } from "effect/eventlog"
import * as NodeSocket from "@effect/platform-node/NodeSocket"
import { startRelay } from "../relay.mjs"
import { agentPool as sharedPool, seenLog } from "../agents.mjs"

export { startRelay }

export const Notes = EventGroup.empty.add({
  tag: "NoteAdded",
  primaryKey: (note) => note.id,
  payload: Schema.Struct({ id: Schema.String, text: Schema.String })
})
export const schema = EventLog.schema(Notes)

/** A fresh identity: a random UUID publicKey and a 32-byte root secret. */
export const newIdentity = () => ({
  publicKey: crypto.randomUUID(),
  privateKey: Redacted.make(crypto.getRandomValues(new Uint8Array(32)))
})

/**
 * An Effect v4 EventLog app syncing through `url` as `identity` in `storeId`. `seen` lists every
 * payload its handler ran for (own writes and remote ones).
 */
export function makeAgent({ url, identity, storeId = "default" }) {
  const log = seenLog(30_000)
  const Handlers = EventLog.group(Notes, (handlers) =>
    handlers.handle("NoteAdded", ({ payload }) =>
      Effect.sync(() => log.push(payload))))
  const Remote = EventLogRemote.layerEncrypted.pipe(
    Layer.provide(RpcClient.layerProtocolSocket({ retryTransientErrors: false })),
    Layer.provide(RpcSerialization.layerSchemaBinary()),
    Layer.provide(NodeSocket.layerWebSocket(url))
  )
  const Log = EventLog.layer(schema, Handlers).pipe(
    Layer.provideMerge(EventJournal.layerMemory),
    Layer.provideMerge(Layer.succeed(EventLog.Identity, identity)),
    Layer.provideMerge(Layer.succeed(EventLog.CurrentStoreId, EventLogMessage.StoreId.make(storeId)))
  )
  const runtime = ManagedRuntime.make(Remote.pipe(Layer.provideMerge(Log)))
  return {
    seen: log.seen,
    start: () => runtime.runPromise(Effect.void),
    write: (note) =>
      runtime.runPromise(Effect.gen(function*() {
        const client = yield* EventLog.makeClient(schema)
        yield* client({ event: "NoteAdded", payload: note })
      })),
    waitFor: log.waitFor,
    dispose: () => runtime.dispose()
  }
}

/** Agents a test makes, to dispose of together. */
export const agentPool = () => sharedPool(makeAgent)

export const ids = (seen) => [...new Set(seen.map((n) => n.id))].sort()
