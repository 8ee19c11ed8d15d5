// The viewer's wasm module (viewer/pkg, built from wasm/) run in Node: the same bytes the
// browser loads. It decrypts Effect-written and native entries, opens grants made by the CLI,
// shows entries it cannot open as locked rows, and encodes the reader's messages exactly.
import { test } from "node:test"
import assert from "node:assert/strict"
import { readFileSync, mkdtempSync, writeFileSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join, dirname } from "node:path"
import { fileURLToPath } from "node:url"
import { pack } from "msgpackr"
import { wharf } from "../harness.mjs"

const here = dirname(fileURLToPath(import.meta.url))
const root = join(here, "..", "..", "..")
const pkg = join(root, "viewer", "pkg")
const { default: init, Reader, GrantKeys, encodeRequestChanges, encodePing, encodeStopChanges } =
  await import(join(pkg, "wharf_wasm.js"))
await init({ module_or_path: readFileSync(join(pkg, "wharf_wasm_bg.wasm")) })

const golden = JSON.parse(readFileSync(join(root, "protocol", "tests", "vectors", "effect-v3-golden.json"), "utf8"))
const hex = (h) => Uint8Array.from(Buffer.from(h, "hex"))
const dir = mkdtempSync(join(tmpdir(), "wharf-wasm-"))
process.on("exit", () => rmSync(dir, { recursive: true, force: true }))

function viewerKeys(seed) {
  return GrantKeys.fromSecret(new Uint8Array(32).fill(seed))
}

async function grantFor(identityFile, keys) {
  const out = JSON.parse(await wharf(["grant", "--json", "-i", identityFile, "--to", keys.publicKey()]))
  return out.grant
}

test("decrypts the Effect-written golden entries through a CLI-made grant", async () => {
  const { publicKey, key } = golden.inputs
  const file = join(dir, "effect.id")
  await wharf(["identity", "import", "--public-key", publicKey, "--key", key, "-o", file])
  const keys = viewerKeys(1)
  const reader = new Reader()
  assert.equal(reader.addGrant(keys, await grantFor(file, keys)), publicKey)
  const msg = reader.handle(hex(golden.messages.Changes.hex), 0)
  assert.equal(msg.type, "Rows")
  assert.equal(msg.log, publicKey)
  assert.deepEqual(msg.rows.map((r) => [r.sequence, r.event, r.primaryKey, r.suite, r.locked]), [
    [0, "TodoCreated", "todo-1", "aes-256-gcm", false],
    [1, "TodoCreated", "todo-2", "aes-256-gcm", false]
  ])
  assert.deepEqual(JSON.parse(msg.rows[0].payload), { id: "todo-1", title: "Buy milk" })
  assert.equal(msg.rows[0].time, 1_700_000_000_000)
  assert.equal(msg.rows[0].id, "018bcfe5-6800-7000-8000-000000000001")
})

test("decrypts native entries, and shows what it cannot open as locked rows", async () => {
  const vectors = JSON.parse(readFileSync(join(root, "protocol", "tests", "vectors", "native-v1.json"), "utf8"))
  const file = join(dir, "native.id")
  writeFileSync(file, vectors.identity)
  const keys = viewerKeys(2)
  const reader = new Reader()
  assert.equal(reader.addGrant(keys, await grantFor(file, keys)), vectors.log)
  const entry = { sequence: 7, iv: Buffer.from(vectors.iv, "hex"), entryId: Buffer.from(vectors.entryId, "hex"), encryptedEntry: Buffer.from(vectors.ciphertext, "hex") }
  // msgpackr writes fixmaps: the decoder takes any map encoding, as Effect's does.
  const rows = reader.handle(pack({ publicKey: vectors.log, entries: [entry], _tag: "Changes" }), 0).rows
  assert.equal(rows[0].locked, false)
  assert.equal(rows[0].event, "FactLearned")
  assert.deepEqual(JSON.parse(rows[0].payload), { text: "the sky is blue" })
  assert.equal(rows[0].suite, "xchacha20poly1305")

  // Tampered ciphertext and a log without a key: locked, with sequence, time and size intact.
  const bad = { ...entry, encryptedEntry: Buffer.from(entry.encryptedEntry).fill(1, 0, 4) }
  const locked = reader.handle(pack({ publicKey: vectors.log, entries: [bad], _tag: "Changes" }), 0).rows[0]
  assert.equal(locked.locked, true)
  assert.match(locked.error, /does not decrypt/)
  assert.equal(locked.size, entry.encryptedEntry.length)
  assert.equal(locked.time, rows[0].time)
  const foreign = reader.handle(pack({ publicKey: "someone-else", entries: [entry], _tag: "Changes" }), 0).rows[0]
  assert.equal(foreign.locked, true)
  assert.match(foreign.error, /no key/)

  // A grant sealed to another viewer does not open here.
  const other = viewerKeys(3)
  assert.throws(() => new Reader().addGrant(other, "wharf-grant-v1:AAAA"), /grant/)
  const notOurs = await grantFor(file, keys)
  assert.throws(() => new Reader().addGrant(other, notOurs), /another key/)
})

test("encodes a reader's messages byte for byte like Effect, and reassembles chunks", () => {
  assert.equal(Buffer.from(encodeRequestChanges(golden.inputs.publicKey, 0)).toString("hex"), golden.messages.RequestChanges.hex)
  assert.equal(Buffer.from(encodeStopChanges(golden.inputs.publicKey)).toString("hex"), golden.messages.StopChanges.hex)
  assert.equal(Buffer.from(encodePing(1)).toString("hex"), golden.messages.Ping.hex)
  const reader = new Reader()
  const whole = hex(golden.messages.Changes.hex)
  const half = Math.floor(whole.length / 2)
  const part = (index, data) => pack({ id: 9, part: [index, 2], data: Buffer.from(data), _tag: "ChunkedMessage" })
  assert.equal(reader.handle(part(1, whole.slice(half)), 0).type, "Partial")
  const msg = reader.handle(part(0, whole.slice(0, half)), 0)
  assert.equal(msg.type, "Rows")
  assert.equal(msg.rows.length, 2)
  assert.ok(msg.rows.every((r) => r.locked), "no key for this log")
  assert.throws(() => reader.handle(Uint8Array.of(0xc1), 0))
})
