// Effect v3's own EventLogRemote server, the peer wharf-bench measures Wharf against.
//
//   node server.mjs --storage memory|sql [--port 0] [--host 127.0.0.1] [--db PATH]
//
// memory: EventLogServer.layerStorageMemory (nothing survives a restart).
// sql:    SqlEventLogServer on SQLite (@effect/sql-sqlite-node: one better-sqlite3 connection,
//         WAL), with synchronous=FULL so an Ack follows an fsync, as Wharf's does.
// The first stdout line is "listening PORT"; Effect's logs go to stderr. WebSocket upgrades
// are accepted on any path (Effect's handler is served without a router).
import { createServer } from "node:http"
import { parseArgs } from "node:util"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as HttpServer from "@effect/platform/HttpServer"
import * as NodeHttpServer from "@effect/platform-node/NodeHttpServer"
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import * as EventLogServer from "@effect/experimental/EventLogServer"

const { values: args } = parseArgs({
  options: {
    storage: { type: "string", default: "memory" },
    port: { type: "string", default: "0" },
    host: { type: "string", default: "127.0.0.1" },
    db: { type: "string" },
    // SqlEventLogServer inserts 200 rows per statement by default, and a write of exactly a
    // multiple of 200 entries then throws on an empty last batch after committing: the write
    // is stored but never acknowledged, and the connection closes (an Effect bug). One
    // statement per write avoids it (up to SQLite's 32,766 parameters: 10,922 entries).
    "insert-batch-size": { type: "string", default: "10922" }
  }
})

const storageLayer = async () => {
  if (args.storage === "memory") return EventLogServer.layerStorageMemory
  if (args.storage !== "sql") throw new Error(`--storage must be memory or sql, not ${args.storage}`)
  if (!args.db) throw new Error("--db PATH is required with --storage sql")
  // Imported here so memory mode needs no native module.
  const SqlEventLogServer = await import("@effect/sql/SqlEventLogServer")
  const SqlClient = await import("@effect/sql/SqlClient")
  const SqliteClient = await import("@effect/sql-sqlite-node/SqliteClient")
  // better-sqlite3 defaults WAL databases to synchronous=NORMAL; the client holds one
  // connection, so a PRAGMA at start applies to every later statement.
  const durable = Layer.effectDiscard(Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    yield* sql.unsafe("PRAGMA synchronous = FULL")
    const [{ journal_mode }] = yield* sql.unsafe("PRAGMA journal_mode")
    const [{ synchronous }] = yield* sql.unsafe("PRAGMA synchronous")
    yield* Effect.sync(() => console.error(`sqlite ${args.db}: journal_mode=${journal_mode} synchronous=${synchronous}`))
  }))
  return SqlEventLogServer.layerStorageSubtle({ insertBatchSize: Number(args["insert-batch-size"]) }).pipe(
    Layer.provideMerge(durable),
    Layer.provide(SqliteClient.layer({ filename: args.db }))
  )
}

const serve = Layer.scopedDiscard(Effect.gen(function*() {
  const handler = yield* EventLogServer.makeHandlerHttp
  yield* HttpServer.serveEffect(handler)
  const server = yield* HttpServer.HttpServer
  yield* Effect.sync(() => process.stdout.write(`listening ${server.address.port}\n`))
}))

const main = serve.pipe(
  Layer.provide(await storageLayer()),
  Layer.provide(NodeHttpServer.layer(createServer, { port: Number(args.port), host: args.host })),
  Layer.provide(Logger.replace(Logger.defaultLogger, Logger.withConsoleError(Logger.stringLogger)))
)

// SIGINT/SIGTERM interrupt the layer: the server and the SQLite connection close.
NodeRuntime.runMain(Layer.launch(main), { disablePrettyLogger: true })
