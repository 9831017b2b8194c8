// Runs steps of the official @actions/cache client (cache service v2) against ACTIONS_RESULTS_URL.
// Usage: node cache.mjs '<json list of steps>'; each step is an object:
//   {"op": "save", "key": k, "paths": [...]}  -> the cache id (-1 if not saved)
//   {"op": "restore", "key": k, "restoreKeys": [...], "paths": [...]}  -> matched key or null
// Paths are relative to the working directory (GITHUB_WORKSPACE).
// Prints one line `RESULT <json>`: a list of {ok, value} or {ok: false, error} per step.
import * as cache from '@actions/cache'

async function run (step) {
  switch (step.op) {
    case 'available':
      return cache.isFeatureAvailable()
    case 'save':
      return cache.saveCache(step.paths, step.key)
    case 'restore':
      return (await cache.restoreCache(step.paths, step.key, step.restoreKeys ?? [])) ?? null
    default:
      throw new Error(`unknown step ${step.op}`)
  }
}

const results = []
for (const step of JSON.parse(process.argv[2])) {
  try {
    results.push({ ok: true, value: await run(step) })
  } catch (error) {
    results.push({ ok: false, error: String(error?.message ?? error) })
  }
}
console.log('RESULT ' + JSON.stringify(results))
