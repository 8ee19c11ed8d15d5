// The golden vectors of the Effect v4 wire format, written by Effect's own codec (effect@4.1.0,
// exactly as `RpcSerialization.layerSchemaBinary()` and the `effect/eventlog` RPCs use it).
// wharf-protocol's tests read them (protocol/tests/v4_golden.rs): each vector is a value, as
// JSON with bytes in hex, and the bytes Effect writes for it. Rust must write the same bytes
// and read them back to the same value.
//
//   node vectors.mjs           writes protocol/tests/vectors/effect-v4.json
//   node vectors.mjs --check   fails when the committed file differs (the test command runs this)
import crypto from "node:crypto"
import fs from "node:fs"
import path from "node:path"
import { fileURLToPath } from "node:url"
import { Cause, Effect, Exit, Redacted, Schema } from "effect"
import { SchemaBinary } from "effect/encoding"
import { EventJournal, EventLogEncryption, EventLogMessage as M, EventLogSessionAuth } from "effect/eventlog"
import { Rpc, RpcSerialization } from "effect/rpc"

const here = path.dirname(fileURLToPath(import.meta.url))
const target = path.join(here, "../../protocol/tests/vectors/effect-v4.json")

const serialization = Effect.runSync(
  Effect.provide(Effect.service(RpcSerialization.RpcSerialization), RpcSerialization.layerSchemaBinary())
)
const envelope = serialization.makeUnsafe()
const codec = serialization.codecFor
const run = (effect) => Effect.runSync(effect).slice()
const payloadBytes = (rpc, value) => run(Schema.encodeEffect(codec(rpc.payloadSchema))(value))
const exitBytes = (rpc, exit) => run(Schema.encodeUnknownEffect(codec(Rpc.exitSchema(rpc)))(exit))
const chunkBytes = (rpc, values) => run(Schema.encodeUnknownEffect(codec(Schema.NonEmptyArray(rpc.successSchema.success ?? rpc.successSchema)))(values))

const hex = (bytes) => Buffer.from(bytes).toString("hex")
const bytes = (n, start = 0) => Uint8Array.from({ length: n }, (_, i) => (start + i) & 0xff)
// Values as JSON: bytes as hex, everything else as it is.
const json = (value) =>
  value instanceof Uint8Array
    ? hex(value)
    : Array.isArray(value)
    ? value.map(json)
    : value !== null && typeof value === "object"
    ? Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined).map(([k, v]) => [k, json(v)]))
    : value

const vectors = []
const add = (schema, name, value, encoded) => vectors.push({ schema, name, value: json(value), hex: hex(encoded) })

const publicKey = "9b3bd93c-dd25-4ae5-8182-b4805455de67"
const remoteId = bytes(16, 0xa0)
const challenge = bytes(32, 0x10)
const batch = (n, at, size) => ({
  entryIds: Array.from({ length: n }, (_, i) => bytes(16, at + 16 * i)),
  iv: bytes(12, 0xc0 + at),
  encryptedBatch: bytes(size, 0xe0)
})

// --- The RPC envelope: client to server -------------------------------------------------------
const requests = [
  ["Hello", { id: 7, tag: "EventLog.Hello", payload: payloadBytes(M.HelloRpc, undefined), headers: [] }],
  ["id 0", { id: 0, tag: "EventLog.Hello", payload: payloadBytes(M.HelloRpc, undefined), headers: [] }],
  ["id 2^40", { id: 2 ** 40, tag: "EventLog.Hello", payload: payloadBytes(M.HelloRpc, undefined), headers: [] }],
  ["string id", { id: "abc", tag: "t", payload: new Uint8Array([1, 0x20]), headers: [] }],
  ["headers", { id: 1, tag: "t", payload: new Uint8Array([1, 0x20]), headers: [["a", "b"], ["cd", ""]] }],
  ["every optional field", {
    id: 1,
    tag: "t",
    payload: new Uint8Array([1, 0x20]),
    headers: [],
    isNotification: true,
    discard: true,
    traceId: "T",
    spanId: "S",
    sampled: false
  }],
  ["span and sampled", { id: 1, tag: "t", payload: new Uint8Array([1, 0x20]), headers: [], spanId: "S", sampled: true }]
]
for (const [name, request] of requests) {
  add("FromClient", `Request: ${name}`, { _tag: "Request", ...request }, envelope.encode({ _tag: "Request", ...request }))
}
for (const id of [9, 300, -1, 1.5, "abc"]) {
  add("FromClient", `Ack ${JSON.stringify(id)}`, { _tag: "Ack", requestId: id }, envelope.encode({ _tag: "Ack", requestId: id }))
}
add("FromClient", "Interrupt", { _tag: "Interrupt", requestId: 9 }, envelope.encode({ _tag: "Interrupt", requestId: 9 }))
add("FromClient", "Ping", { _tag: "Ping" }, envelope.encode({ _tag: "Ping" }))
add("FromClient", "Eof", { _tag: "Eof" }, envelope.encode({ _tag: "Eof" }))

// --- The RPC envelope: server to client -------------------------------------------------------
const voidExit = exitBytes(M.AuthenticateRpc, Exit.void)
add("FromServer", "Exit", { _tag: "Exit", requestId: 8, exit: voidExit }, envelope.encode({ _tag: "Exit", requestId: 8, exit: voidExit }))
add("FromServer", "Exit, id 2^40", { _tag: "Exit", requestId: 2 ** 40, exit: voidExit }, envelope.encode({ _tag: "Exit", requestId: 2 ** 40, exit: voidExit }))
add("FromServer", "Chunk", { _tag: "Chunk", requestId: 9, values: bytes(5) }, envelope.encode({ _tag: "Chunk", requestId: 9, values: bytes(5) }))
add("FromServer", "Pong", { _tag: "Pong" }, envelope.encode({ _tag: "Pong" }))
const defect = run(Schema.encodeEffect(codec(Schema.Defect()))("malformed frame"))
add("FromServer", "Defect", { _tag: "Defect", defect }, envelope.encode({ _tag: "Defect", defect }))
add("Defect", "a string", "malformed frame", defect)

// --- EventLog.Hello -----------------------------------------------------------------------------
add("HelloPayload", "void", null, payloadBytes(M.HelloRpc, undefined))
const hellos = [
  ["keys absent", { remoteId, challenge }],
  ["compaction", { remoteId, challenge, compaction: true }],
  ["firstSequence 5", { remoteId, challenge, firstSequence: 5 }],
  ["firstSequence 300 and compaction", { remoteId, challenge, firstSequence: 300, compaction: true }],
  ["firstSequence 2^40", { remoteId, challenge, firstSequence: 2 ** 40 }]
]
for (const [name, value] of hellos) {
  add("HelloExit", name, { success: value }, exitBytes(M.HelloRpc, Exit.succeed(new M.HelloResponse(value))))
}

// --- EventLog.Authenticate ----------------------------------------------------------------------
const authenticate = { publicKey, signingPublicKey: bytes(32, 0x40), signature: bytes(64, 0x80), algorithm: "Ed25519" }
add("Authenticate", "an identity", authenticate, payloadBytes(M.AuthenticateRpc, new M.Authenticate(authenticate)))
add("AuthenticateExit", "success", { success: null }, voidExit)
const errors = [
  ["Forbidden, publicKey", { requestTag: "EventLog.Authenticate", publicKey, code: "Forbidden", message: "signature verification failed" }],
  ["NotFound, every key", { requestTag: "EventLog.Changes", publicKey: "p", storeId: "s", code: "NotFound", message: "m" }],
  ["Unauthorized, keys absent", { requestTag: "X", code: "Unauthorized", message: "" }],
  ["InvalidRequest", { requestTag: "EventLog.WriteSingle", publicKey: "p", code: "InvalidRequest", message: "bad" }],
  ["InternalServerError", { requestTag: "EventLog.WriteSingle", code: "InternalServerError", message: "é ✓" }]
]
for (const [name, error] of errors) {
  add("AuthenticateExit", `failure: ${name}`, { failure: error }, exitBytes(M.AuthenticateRpc, Exit.fail(new M.EventLogProtocolError(error))))
}
add("AuthenticateExit", "die: a string", { die: "boom" }, exitBytes(M.AuthenticateRpc, Exit.die("boom")))
add("AuthenticateExit", "interrupt", { interrupt: null }, exitBytes(M.AuthenticateRpc, Exit.interrupt()))
add("AuthenticateExit", "interrupt by fiber 12", { interrupt: 12 }, exitBytes(M.AuthenticateRpc, Exit.failCause(Cause.interrupt(12))))

// The signed challenge: what the client signs and the server verifies.
const authPayload = (remote) =>
  run(EventLogSessionAuth.encodeSessionAuthPayload({ remoteId: remote, challenge, publicKey, signingPublicKey: bytes(32, 0x40) }))
add("AuthPayload", "remoteId as bytes", { remoteId, challenge, publicKey, signingPublicKey: bytes(32, 0x40) }, authPayload(remoteId))

// --- EventLog.WriteSingle, EventLog.WriteChunked -------------------------------------------------
const writes = [
  ["one batch of two", { publicKey, storeId: "default", batches: [batch(2, 0, 5)] }],
  ["two batches", { publicKey: "p", storeId: "s", batches: [batch(1, 0, 2), batch(1, 16, 2)] }],
  ["three batches of different sizes", { publicKey: "p", storeId: "", batches: [batch(3, 0, 1), batch(1, 48, 300), batch(2, 64, 0)] }],
  ["no batches", { publicKey: "p", storeId: "s", batches: [] }]
]
for (const [name, value] of writes) {
  add("WriteEntries", name, value, run(M.WriteEntries.encode(new M.WriteEntries(value))))
}
const data = run(M.WriteEntries.encode(new M.WriteEntries(writes[0][1])))
add("WriteSinglePayload", "data", { data }, payloadBytes(M.WriteSingleRpc, { data }))
for (const [name, value] of [["id 1, part 0 of 2", { id: 1, part: [0, 2], data: bytes(4, 0x30) }], ["id -3, part 1 of 2", { id: -3, part: [1, 2], data: bytes(1) }], ["id 2^40, part 299 of 300", { id: 2 ** 40, part: [299, 300], data: bytes(0) }]]) {
  add("WriteChunkedPayload", name, value, payloadBytes(M.WriteChunkedRpc, new M.ChunkedMessage(value)))
}
const acks = [{ entryId: bytes(16, 0), sequence: 0 }, { entryId: bytes(16, 0x10), sequence: 1 }]
add("WriteExit", "two acks", { success: acks }, exitBytes(M.WriteSingleRpc, Exit.succeed(acks)))
add("WriteExit", "three acks, a large sequence", { success: [...acks, { entryId: bytes(16, 0x20), sequence: 2 ** 40 }] }, exitBytes(M.WriteSingleRpc, Exit.succeed([...acks, { entryId: bytes(16, 0x20), sequence: 2 ** 40 }])))
add("WriteExit", "no acks", { success: [] }, exitBytes(M.WriteSingleRpc, Exit.succeed([])))
const forbidden = { requestTag: "EventLog.WriteSingle", code: "Forbidden", message: "Unauthenticated request" }
add("WriteExit", "failure: Forbidden", { failure: forbidden }, exitBytes(M.WriteSingleRpc, Exit.fail(new M.EventLogProtocolError(forbidden))))

// --- EventLog.Changes ----------------------------------------------------------------------------
for (const [name, value] of [["startSequence 0", { publicKey, storeId: "default", startSequence: 0 }], ["startSequence 1000", { publicKey: "pk", storeId: "s", startSequence: 1000 }], ["startSequence 2^40", { publicKey: "pk", storeId: "s", startSequence: 2 ** 40 }]]) {
  add("ChangesPayload", name, value, payloadBytes(M.ChangesRpc, value))
}
const remote = (sequence, b) => ({ sequence, ...b })
const remoteBatches = [
  ["one batch", [remote(0, batch(1, 0, 3))]],
  ["two batches", [remote(0, batch(2, 0, 5)), remote(2, batch(1, 32, 3))]],
  ["three batches, large sequences", [remote(2 ** 40, batch(1, 0, 1)), remote(2 ** 40 + 1, batch(3, 16, 200)), remote(2 ** 40 + 4, batch(1, 64, 0))]]
]
for (const [name, value] of remoteBatches) {
  add("RemoteBatches", name, value, run(M.ChangesRpc.encodeEncrypted(value)))
}
const elements = [
  ["Single", [{ _tag: "Single", data: bytes(3) }]],
  ["Chunked", [{ _tag: "Chunked", id: 3, part: [1, 4], data: bytes(4, 0x55) }]],
  ["Single, Single", [{ _tag: "Single", data: bytes(2, 1) }, { _tag: "Single", data: bytes(2, 3) }]],
  ["Chunked, Single, Chunked", [{ _tag: "Chunked", id: 0, part: [0, 2], data: bytes(2) }, { _tag: "Single", data: bytes(1) }, { _tag: "Chunked", id: 0, part: [1, 2], data: bytes(2, 2) }]]
]
const element = (e) => e._tag === "Single" ? new M.SingleMessage({ data: e.data }) : new M.ChunkedMessage({ id: e.id, part: e.part, data: e.data })
for (const [name, value] of elements) {
  add("ChangesChunk", name, value, chunkBytes(M.ChangesRpc, value.map(element)))
}
add("ChangesExit", "end", { success: null }, exitBytes(M.ChangesRpc, Exit.void))
add("ChangesExit", "interrupt", { interrupt: null }, exitBytes(M.ChangesRpc, Exit.interrupt()))
const notFound = { requestTag: "EventLog.Changes", publicKey: "p", storeId: "s", code: "NotFound", message: "m" }
add("ChangesExit", "failure: NotFound", { failure: notFound }, exitBytes(M.ChangesRpc, Exit.fail(new M.EventLogProtocolError(notFound))))

// --- A v4 identity: its signed challenge and an encrypted batch -----------------------------------
// The keys derive from the root secret with SHA-256 (EventLogEncryption / EventLogSessionAuth);
// the signature is Effect's, the ciphertext is checked by Effect's own decrypt.
const secret = bytes(32, 0x00)
const derive = (label) => crypto.createHash("sha256").update(Buffer.concat([Buffer.from(label), Buffer.from([0]), secret])).digest()
const pkcs8 = Buffer.concat([Buffer.from("302e020100300506032b657004220420", "hex"), derive("effect/eventlog/identity/v1/signing")])
const signingPublicKey = new Uint8Array(crypto.createPublicKey(crypto.createPrivateKey({ key: pkcs8, format: "der", type: "pkcs8" })).export({ format: "der", type: "spki" }).subarray(-32))
const signed = run(EventLogSessionAuth.encodeSessionAuthPayload({ remoteId, challenge, publicKey, signingPublicKey }))
const signature = (await Effect.runPromise(EventLogSessionAuth.signSessionAuthPayloadBytes({ payload: signed, signingPrivateKey: new Uint8Array(pkcs8) }))).slice()
await Effect.runPromise(EventLogSessionAuth.verifySessionAuthPayloadBytes({ payload: signed, signingPublicKey, signature }))
const entry = (i, event, primaryKey, payload) => ({ id: bytes(16, 0x10 * i), event, primaryKey, payload })
const entries = [entry(1, "UserCreated", "u1", bytes(3, 0x61)), entry(2, "UserCreated", "u1", bytes(2, 0x71)), entry(3, "Other", "u2", bytes(0))]
const plaintext = run(Schema.encodeEffect(SchemaBinary.toCodec(Schema.NonEmptyArray(EventJournal.EntryFields)))(entries))
add("BatchEntries", "three entries, names repeated", entries, plaintext)
add("BatchEntries", "one entry", [entries[2]], run(Schema.encodeEffect(SchemaBinary.toCodec(Schema.NonEmptyArray(EventJournal.EntryFields)))([entries[2]])))
const storeId = "default"
const iv = bytes(12, 0xc0)
const aad = Buffer.concat([Buffer.from([0, 0, 0, storeId.length]), Buffer.from(storeId), ...entries.map((e) => e.id)])
const cipher = crypto.createCipheriv("aes-256-gcm", derive("effect/eventlog/identity/v1/encryption"), iv).setAAD(aad)
const encryptedBatch = new Uint8Array(Buffer.concat([cipher.update(plaintext), cipher.final(), cipher.getAuthTag()]))
const encryption = await Effect.runPromise(Effect.provide(Effect.service(EventLogEncryption.EventLogEncryption), EventLogEncryption.layerSubtle))
const decrypted = await Effect.runPromise(encryption.decrypt({ publicKey, privateKey: Redacted.make(secret) }, storeId, [{ sequence: 5, entryIds: entries.map((e) => e.id), iv, encryptedBatch }]))
if (decrypted.length !== 3 || decrypted[2].entry.event !== "Other") throw new Error("Effect does not decrypt the batch vector")
add("Identity", "a root secret, its signed challenge and an encrypted batch", {
  secret, publicKey, signingPublicKey, remoteId, challenge, signature, storeId, iv, entryIds: entries.map((e) => e.id), plaintext
}, encryptedBatch)
add("AuthPayload", "the identity's", { remoteId, challenge, publicKey, signingPublicKey }, signed)

// --- Event payloads: what an app's payload schema writes (the CLI and the viewer read and
// write these without the schema) ------------------------------------------------------------
const payloads = [
  ["strings", Schema.Struct({ id: Schema.String, text: Schema.String }), { id: "n1", text: "hello" }],
  ["every scalar", Schema.Struct({ id: Schema.String, done: Schema.Boolean, count: Schema.Number, score: Schema.Number, priority: Schema.Int }),
    { id: "t", done: false, count: 42, score: 1.5, priority: -3 }],
  ["nested and arrays", Schema.Struct({ title: Schema.String, author: Schema.Struct({ name: Schema.String }), tags: Schema.Array(Schema.String), steps: Schema.Array(Schema.Struct({ title: Schema.String, done: Schema.Boolean })) }),
    { title: "plan", author: { name: "ada" }, tags: ["a", "b"], steps: [{ title: "one", done: true }, { title: "two", done: false }] }]
]
for (const [name, schema, value] of payloads) {
  add("Payload", name, value, run(Schema.encodeEffect(SchemaBinary.toCodec(schema))(value)))
}

const text = JSON.stringify({ generator: "tests/effect-v4/vectors.mjs", effect: "4.1.0", vectors }, null, 1) + "\n"
if (process.argv.includes("--check")) {
  const committed = fs.readFileSync(target, "utf8")
  if (committed !== text) {
    console.error(`${path.relative(process.cwd(), target)} differs from what effect@4.1.0 writes: run node tests/effect-v4/vectors.mjs and look at the diff`)
    process.exit(1)
  }
  console.log(`${vectors.length} vectors match effect@4.1.0`)
} else {
  fs.writeFileSync(target, text)
  console.log(`wrote ${vectors.length} vectors to ${path.relative(process.cwd(), target)}`)
}
