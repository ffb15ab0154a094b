// Reads a CAR, recomputes every block's CID with @ipld/dag-cbor + multiformats,
// re-encodes every decoded block (canonical form), then imports the CAR into a
// Helia blockstore (offline: libp2p never starts) and resolves every CID there.
// Prints one JSON object; the Python test compares it with its own view.
import { readFile } from 'node:fs/promises'

// Helia 7 targets Node 22; Node 20 (this machine's) lacks Promise.withResolvers.
if (!Promise.withResolvers) {
  Promise.withResolvers = function () {
    let resolve, reject
    const promise = new Promise((a, b) => { resolve = a; reject = b })
    return { promise, resolve, reject }
  }
}
import { CarReader } from '@ipld/car'
import * as dagCbor from '@ipld/dag-cbor'
import { CID } from 'multiformats/cid'
import { sha256 } from 'multiformats/hashes/sha2'

const equal = (a, b) => a.length === b.length && a.every((x, i) => x === b[i])
const bytes = await readFile(process.argv[2])
const reader = await CarReader.fromBytes(bytes)
const roots = (await reader.getRoots()).map(String)
const blocks = []
for await (const { cid, bytes: data } of reader.blocks()) {
  const value = dagCbor.decode(data)
  const recomputed = CID.create(1, dagCbor.code, await sha256.digest(data))
  blocks.push({
    cid: cid.toString(),
    recomputed: recomputed.toString(),
    canonical: equal(dagCbor.encode(value), data),
    type: value.type,
    seq: value.seq ?? null,
    prev: value.prev ? value.prev.toString() : null,
    head: value.head ? value.head.toString() : null,
    operation: value.operation ?? null,
    size: value.size ?? null
  })
}

let helia = { skipped: process.argv[3] === '--no-helia' }
if (!helia.skipped) {
  const { createHelia } = await import('helia')
  const { car } = await import('@helia/car')
  const { MemoryBlockstore } = await import('blockstore-core')
  const { MemoryDatastore } = await import('datastore-core')
  const node = await createHelia({
    start: false, blockstore: new MemoryBlockstore(), datastore: new MemoryDatastore()
  })
  await car(node).import(await CarReader.fromBytes(bytes))
  let resolved = 0
  const mismatched = []
  for (const block of blocks) {
    const cid = CID.parse(block.cid)
    const stored = await node.blockstore.get(cid, { offline: true })
    const data = stored instanceof Uint8Array ? stored : await concat(stored)
    const again = CID.create(1, dagCbor.code, await sha256.digest(data))
    if (again.equals(cid) && dagCbor.decode(data).type === block.type) resolved++
    else mismatched.push(block.cid)
  }
  await node.stop()
  helia = { skipped: false, resolved, mismatched }
}

async function concat (chunks) {
  const parts = []
  for await (const chunk of chunks) parts.push(chunk)
  return Buffer.concat(parts)
}

process.stdout.write(JSON.stringify({ roots, blocks, helia }) + '\n')
