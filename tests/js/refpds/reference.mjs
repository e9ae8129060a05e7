// Bluesky's reference PDS in dev mode (hostname `localhost`), with an in-memory did:plc
// directory, started in this process for the tests that compare UES with it.
import fs from 'node:fs'
import path from 'node:path'
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)
const plc = require('@did-plc/server')
const { Secp256k1Keypair } = require('@atproto/crypto')
const { PDS, envToCfg, envToSecrets, readEnv } = require('@atproto/pds')

// Starts the directory on plcPort and the PDS on pdsPort, its data in `data` (emptied first);
// `env` adds to or overrides the PDS's environment. Returns { directory, pds }.
export async function startReference(plcPort, pdsPort, data, env = {}) {
  fs.rmSync(data, { recursive: true, force: true })
  fs.mkdirSync(path.join(data, 'blobs'), { recursive: true })
  const directory = plc.PlcServer.create({ db: plc.Database.mock(), port: Number(plcPort) })
  await directory.start()
  const rotation = await Secp256k1Keypair.create({ exportable: true })
  const all = {
    PDS_HOSTNAME: 'localhost',
    PDS_PORT: String(pdsPort),
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
    // Preferences are served by the reference only with an AppView configured; none is
    // called here.
    PDS_BSKY_APP_VIEW_URL: 'http://127.0.0.1:9',
    PDS_BSKY_APP_VIEW_DID: 'did:web:appview.test',
    LOG_ENABLED: 'false',
    ...env,
  }
  for (const [k, v] of Object.entries(all)) process.env[k] = v
  const e = readEnv()
  const pds = await PDS.create(envToCfg(e), envToSecrets(e))
  await pds.start()
  return { directory, pds }
}
