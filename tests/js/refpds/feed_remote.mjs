// Bluesky's reference PDS (dev mode, hostname `localhost`) and an in-memory did:plc directory,
// kept running for `tests/feed_remote.rs`: the Rust test writes to the reference through its
// XRPC API and reads what a UES node made of it.
//
//   node feed_remote.mjs PLC_PORT PDS_PORT DATA_DIR
//
// Prints `{"ready":true,...}` on one line once both answer (or `{"ready":false,"error":...}` and
// exits 1), then runs until its standard input closes (the test ended or was killed), and stops
// both servers.
import { startReference } from './reference.mjs'

const [plcPort, pdsPort, data] = process.argv.slice(2)
let servers
try {
  servers = await startReference(plcPort, pdsPort, data, { PDS_DISABLE_SSRF_PROTECTION: 'true' })
} catch (err) {
  process.stdout.write(JSON.stringify({ ready: false, error: String((err && (err.stack || err.message)) || err) }) + '\n')
  process.exit(1)
}
const { directory, pds } = servers
process.stdout.write(JSON.stringify({
  ready: true,
  plc: `http://127.0.0.1:${plcPort}`,
  pds: `http://localhost:${pdsPort}`,
}) + '\n')

let stopping = false
async function stop() {
  if (stopping) return
  stopping = true
  try {
    await pds.destroy()
    await directory.destroy()
  } finally {
    process.exit(0)
  }
}
process.stdin.on('end', stop)
process.stdin.on('close', stop)
process.stdin.resume()
process.on('SIGTERM', stop)
