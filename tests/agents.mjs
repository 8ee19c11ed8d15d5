// What the Node suites' agents share, whatever Effect line they run on (tests/compat, Effect v3,
// and tests/effect-v4). No dependencies: each project imports it as it is.

/** The payloads an agent's handler saw, in order, and a wait for a condition on them. */
export function seenLog(defaultMs) {
  const seen = []
  let wake = () => {}
  return {
    seen,
    /** A handler saw `payload`. */
    push(payload) {
      seen.push(payload)
      wake()
    },
    /** Resolves once `predicate(seen)` holds; fails after `ms`. */
    waitFor(predicate, ms = defaultMs) {
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`timed out; seen ${seen.length}: ${JSON.stringify(seen.slice(-20).map((p) => p.id))}`)), ms)
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
    }
  }
}

/** Agents a test makes with `make`, disposed of together. */
export function agentPool(make) {
  const agents = []
  return {
    agent(opts) {
      const a = make(opts)
      agents.push(a)
      return a
    },
    dispose: () => Promise.allSettled(agents.map((a) => a.dispose()))
  }
}
