// createRecord throughput and latency through Bluesky's official client (@atproto/api):
//   node bench_create.mjs http://127.0.0.1:PORT RECORDS CONCURRENCY
// One account; CONCURRENCY writers share the session. Prints one JSON line:
// {records, concurrency, seconds, recordsPerSec, p50ms, p99ms, maxMs}.
import api from '@atproto/api'

const [service, nArg, cArg] = process.argv.slice(2)
const n = parseInt(nArg || '1000', 10)
const c = parseInt(cArg || '1', 10)
const agent = new api.AtpAgent({ service })
const handle = `b${Date.now().toString(36)}.test`
await agent.createAccount({ handle, password: 'correct horse battery' })
const did = agent.session.did
const lat = []
let next = 0
const worker = async () => {
  while (next < n) {
    const i = next++
    const t = performance.now()
    await agent.com.atproto.repo.createRecord({
      repo: did, collection: 'app.bsky.feed.post',
      record: { $type: 'app.bsky.feed.post', text: `benchmark post ${i}`, createdAt: new Date().toISOString() },
    })
    lat.push(performance.now() - t)
  }
}
const t0 = performance.now()
await Promise.all(Array.from({ length: c }, worker))
const secs = (performance.now() - t0) / 1000
lat.sort((a, b) => a - b)
const q = (p) => lat[Math.min(lat.length - 1, Math.floor(p * lat.length))]
console.log(JSON.stringify({
  records: n, concurrency: c, seconds: +secs.toFixed(3), recordsPerSec: Math.round(n / secs),
  p50ms: +q(0.5).toFixed(2), p99ms: +q(0.99).toFixed(2), maxMs: +lat[lat.length - 1].toFixed(2),
}))
