// Bluesky's reference PDS (dev mode, started in this process with an in-memory did:plc
// directory) and a UES node side by side: prints one JSON line with both servers' OAuth
// metadata documents, as clients fetch them.
//
//   node oauth_metadata.mjs PLC_PORT PDS_PORT DATA_DIR UES_URL
import fs from 'node:fs'
import path from 'node:path'
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)
const plc = require('@did-plc/server')
const { Secp256k1Keypair } = require('@atproto/crypto')
const { PDS, envToCfg, envToSecrets, readEnv } = require('@atproto/pds')

const [plcPort, pdsPort, data, uesUrl] = process.argv.slice(2)
fs.rmSync(data, { recursive: true, force: true })
fs.mkdirSync(path.join(data, 'blobs'), { recursive: true })
const directory = plc.PlcServer.create({ db: plc.Database.mock(), port: Number(plcPort) })
await directory.start()
const rotation = await Secp256k1Keypair.create({ exportable: true })
const env = {
  PDS_HOSTNAME: 'localhost',
  PDS_PORT: pdsPort,
  PDS_DATA_DIRECTORY: data,
  PDS_BLOBSTORE_DISK_LOCATION: path.join(data, 'blobs'),
  PDS_JWT_SECRET: 'jwt-secret-dev',
  PDS_ADMIN_PASSWORD: 'admin-pass',
  PDS_PLC_ROTATION_KEY_K256_PRIVATE_KEY_HEX: Buffer.from(await rotation.export()).toString('hex'),
  PDS_DID_PLC_URL: `http://127.0.0.1:${plcPort}`,
  PDS_DEV_MODE: 'true',
  PDS_INVITE_REQUIRED: 'false',
  PDS_SERVICE_HANDLE_DOMAINS: '.test',
  PDS_CRAWLERS: '',
  PDS_BSKY_APP_VIEW_URL: 'http://127.0.0.1:9',
  PDS_BSKY_APP_VIEW_DID: 'did:web:appview.test',
  LOG_ENABLED: 'false',
}
for (const [k, v] of Object.entries(env)) process.env[k] = v
const e = readEnv()
const pds = await PDS.create(envToCfg(e), envToSecrets(e))
await pds.start()
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
