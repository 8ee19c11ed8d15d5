// The viewer following a log written at a steady rate: frames and rows it handles per second,
// how long the page's event loop stalls, and the memory it keeps with a bounded window.
//
//   node bench/viewer-follow.mjs [--rate 1000] [--seconds 20] [--window 2000]
//
// Needs target/debug/wharf-relay and wharf (cargo build), Debian's chromium, and npm ci.
import { spawn } from "node:child_process"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { parseArgs } from "node:util"
import { chromium } from "playwright-core"
import { startRelay, wharf, wharfBin } from "../harness.mjs"

const { values } = parseArgs({ options: { rate: { type: "string", default: "1000" }, seconds: { type: "string", default: "20" }, window: { type: "string", default: "2000" } } })
const rate = Number(values.rate), seconds = Number(values.seconds), windowRows = Number(values.window)
const dir = mkdtempSync(join(tmpdir(), "wharf-viewer-bench-"))
const relay = await startRelay()
const tenant = "bench"
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium", args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--enable-precise-memory-info"] })
try {
  await wharf(["keygen", "-o", join(dir, "w.id")])
  const page = await browser.newPage({ viewport: { width: 1600, height: 900 } })
  await page.goto(`${relay.http}/viewer/`)
  await page.evaluate((n) => localStorage.setItem("wharf.viewer.window", String(n)), windowRows)
  await page.reload()
  const pub = (await page.locator("#pubkey").textContent()).trim()
  const grant = JSON.parse(await wharf(["grant", "--json", "-i", join(dir, "w.id"), "--to", pub])).grant
  await page.goto(`${relay.http}/viewer/#${new URLSearchParams({ tenant, grant })}`)
  await page.waitForFunction(() => document.querySelector("#status").dataset.state === "live")
  await page.evaluate(() => {
    window.__long = []
    new PerformanceObserver((list) => { for (const e of list.getEntries()) window.__long.push(e.duration) }).observe({ type: "longtask", buffered: false })
  })

  // A writer at `rate` entries/s: `wharf push` reading paced NDJSON from stdin.
  const push = spawn(wharfBin, ["push", "-i", join(dir, "w.id"), "--journal", join(dir, "w.db"), "--relay", relay.base, "--tenant", tenant, "--timeout", "120s"], { stdio: ["pipe", "ignore", "inherit"] })
  const before = await page.evaluate(() => window.wharfViewer.stats())
  const started = Date.now()
  let written = 0
  const delays = []
  const feeder = (async () => {
    while (Date.now() - started < seconds * 1000) {
      const due = Math.floor(((Date.now() - started) / 1000) * rate)
      let chunk = ""
      for (; written < due; written++) chunk += JSON.stringify({ event: "Tick", primaryKey: `k${written % 50}`, payload: { n: written, text: "x".repeat(120) } }) + "\n"
      if (chunk) push.stdin.write(chunk)
      await new Promise((r) => setTimeout(r, 10))
    }
    push.stdin.end()
  })()
  // Responsiveness: how long the page takes to run a task we post, sampled while it follows.
  while (Date.now() - started < seconds * 1000) {
    const t = Date.now()
    await page.evaluate(() => new Promise((r) => setTimeout(r, 0)))
    delays.push(Date.now() - t)
    await new Promise((r) => setTimeout(r, 200))
  }
  await feeder
  await new Promise((resolve) => push.once("exit", resolve))
  await page.waitForFunction((n) => window.wharfViewer.state.rows.at(-1)?.sequence === n - 1, written, { timeout: 60_000 })
  const after = await page.evaluate(() => ({ ...window.wharfViewer.stats(), heap: performance.memory?.usedJSHeapSize, long: window.__long }))
  const elapsed = after.seconds - before.seconds
  delays.sort((a, b) => a - b)
  const q = (p) => delays[Math.min(delays.length - 1, Math.floor(p * delays.length))]
  console.log(`written: ${written} entries in ${seconds} s (${(written / seconds).toFixed(0)}/s)`)
  console.log(`viewer: ${((after.frames - before.frames) / elapsed).toFixed(0)} frames/s, ${((after.rows - before.rows) / elapsed).toFixed(0)} rows/s over ${elapsed.toFixed(1)} s; decode+decrypt ${(after.decryptMs - before.decryptMs).toFixed(0)} ms in total`)
  console.log(`kept: ${after.rowsKept} rows (window ${windowRows}); JS heap ${(after.heap / 1048576).toFixed(1)} MiB`)
  console.log(`responsiveness: posted task runs after p50 ${q(0.5)} ms, p99 ${q(0.99)} ms (round trip from Node); long tasks: ${after.long.length}, longest ${Math.max(0, ...after.long).toFixed(0)} ms`)
} finally {
  await browser.close()
  await relay.stop()
  rmSync(dir, { recursive: true, force: true })
}
