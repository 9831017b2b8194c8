// Drives the Azure Storage SDK (@azure/storage-blob, what @actions/artifact and @actions/cache use
// underneath) against signed blob URLs. Usage: node blob.mjs '<json list of steps>':
//   ["uploadFile", url, file, blockSize, maxSingleShotSize]  (single PUT or blocks + block list)
//   ["uploadStream", url, file, bufferSize]                   (always blocks + block list)
//   ["properties", url]  ["download", url, blockSize]  ["range", url, offset, count]
// Prints one line `RESULT <json>`: a list of {ok, value} or {ok: false, error} per step.
import { createHash } from 'crypto'
import { createReadStream } from 'fs'
import { BlockBlobClient } from '@azure/storage-blob'

const sha256 = buf => createHash('sha256').update(buf).digest('hex')
const options = { retryOptions: { maxTries: 1 } }

async function run ([op, url, ...args]) {
  const client = new BlockBlobClient(url, undefined, options)
  switch (op) {
    case 'uploadFile': {
      const [file, blockSize, maxSingleShotSize] = args
      const r = await client.uploadFile(file, { blockSize, maxSingleShotSize, concurrency: 4 })
      return { status: r._response.status, etag: r.etag }
    }
    case 'uploadStream': {
      const [file, bufferSize] = args
      const r = await client.uploadStream(createReadStream(file), bufferSize, 3)
      return { status: r._response.status, etag: r.etag }
    }
    case 'properties': {
      const p = await client.getProperties()
      return { contentLength: p.contentLength, contentType: p.contentType, etag: p.etag, blobType: p.blobType, lastModified: p.lastModified }
    }
    case 'download': {
      const buf = await client.downloadToBuffer(0, undefined, { blockSize: args[0], concurrency: 4 })
      return { length: buf.length, sha256: sha256(buf) }
    }
    case 'range': {
      const [offset, count] = args
      const r = await client.download(offset, count)
      const chunks = []
      for await (const chunk of r.readableStreamBody) chunks.push(chunk)
      const buf = Buffer.concat(chunks)
      return { status: r._response.status, contentRange: r.contentRange, hex: buf.toString('hex') }
    }
    default:
      throw new Error(`unknown step ${op}`)
  }
}

const results = []
for (const step of JSON.parse(process.argv[2])) {
  try {
    results.push({ ok: true, value: await run(step) })
  } catch (error) {
    results.push({ ok: false, error: String(error?.message ?? error), status: error?.statusCode, code: error?.code })
  }
}
console.log('RESULT ' + JSON.stringify(results))
