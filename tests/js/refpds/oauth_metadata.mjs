// Bluesky's reference PDS (dev mode, started in this process with an in-memory did:plc
// directory) and a UES node side by side: prints one JSON line with both servers' OAuth
// metadata documents, as clients fetch them.
//
//   node oauth_metadata.mjs PLC_PORT PDS_PORT DATA_DIR UES_URL
import fs from 'node:fs'
import { startReference } from './reference.mjs'

const [plcPort, pdsPort, data, uesUrl] = process.argv.slice(2)
const { directory, pds } = await startReference(plcPort, pdsPort, data)
const out = {}
try {
  for (const [who, base] of [['reference', `http://localhost:${pdsPort}`], ['ues', uesUrl]]) {
    out[who] = {}
    for (const doc of ['oauth-authorization-server', 'oauth-protected-resource']) {
      const r = await fetch(`${base}/.well-known/${doc}`, { headers: { origin: 'https://app.example' } })
      out[who][doc] = {
        status: r.status,
        contentType: r.headers.get('content-type'),
        cors: r.headers.get('access-control-allow-origin'),
        body: await r.json(),
      }
    }
  }
} finally {
  await pds.destroy()
  await directory.destroy()
}
fs.writeSync(1, JSON.stringify(out) + '\n')
process.exit(0)
