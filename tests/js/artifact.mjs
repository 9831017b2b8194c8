// Runs steps of the official @actions/artifact client against ACTIONS_RESULTS_URL.
// Usage: node artifact.mjs '<json list of steps>'; each step is an array:
//   ["upload", name, rootDirectory, file...]   ["list"]   ["get", name]
//   ["download", idOrName, destinationDir]      ["delete", name]
// Prints one line `RESULT <json>`: a list of {ok, value} or {ok: false, error} per step.
import { DefaultArtifactClient } from '@actions/artifact'

const client = new DefaultArtifactClient()

async function run (step) {
  const [op, ...args] = step
  switch (op) {
    case 'upload': {
      const [name, root, ...files] = args
      return client.uploadArtifact(name, files, root)
    }
    case 'list':
      return client.listArtifacts()
    case 'get':
      return client.getArtifact(args[0])
    case 'download': {
      const [idOrName, path] = args
      let id = Number(idOrName)
      if (Number.isNaN(id)) id = (await client.getArtifact(idOrName)).artifact.id
      return client.downloadArtifact(id, { path })
    }
    case 'delete':
      return client.deleteArtifact(args[0])
    default:
      throw new Error(`unknown step ${op}`)
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
