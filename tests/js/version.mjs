// Prints the cache version the official @actions/cache computes for lists of paths, with the
// compression method it picks on this machine (its internal cacheUtils, imported by file path
// because the package exports only its entry point).
// Usage: node version.mjs '<json list of steps>'; each step is {"paths": [...], "crossOs": bool}.
// Prints one line `RESULT <json>`: a list of {ok, value: {compression, version}} per step.
const utils = await import(
  new URL('./node_modules/@actions/cache/lib/internal/cacheUtils.js', import.meta.url)
)

const results = []
for (const step of JSON.parse(process.argv[2])) {
  try {
    const compression = await utils.getCompressionMethod()
    const version = utils.getCacheVersion(step.paths, compression, step.crossOs ?? false)
    results.push({ ok: true, value: { compression, version } })
  } catch (error) {
    results.push({ ok: false, error: String(error?.message ?? error) })
  }
}
console.log('RESULT ' + JSON.stringify(results))
