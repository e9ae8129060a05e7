// Account migration between Bluesky's reference PDS and a UES node, both ways, as Bluesky's
// migration guide does it with @atproto/api. Starts a did:plc directory (@did-plc/server,
// in-memory) and the reference PDS in this process; the UES node is already running with the
// directory's URL as its plc_url.
//
//   node migrate.mjs PLC_PORT PDS_PORT DATA_DIR UES_URL UES_OUTBOX
//
// Prints one JSON line with what it saw and exits 0, or prints the failing step and exits 1.
import fs from 'node:fs'
import { createRequire } from 'node:module'
import { startReference } from './reference.mjs'

const require = createRequire(import.meta.url)
const { AtpAgent } = require('@atproto/api')
const { verifyRepoCar } = require('@atproto/repo')

const [plcPort, pdsPort, data, uesUrl, uesOutbox] = process.argv.slice(2)
const plcUrl = `http://127.0.0.1:${plcPort}`
const refUrl = `http://localhost:${pdsPort}`
const password = 'a long password'
const handle = 'alice.test'
const email = 'alice@example.com'
let step = 'start'
const log = (s) => { step = s; process.stderr.write(`migrate: ${s}\n`) }

function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`)
}

// The reference keeps emailed tokens in its account database (no SMTP here).
async function referenceToken(pds, did, purpose) {
  const row = await pds.ctx.accountManager.db.db
    .selectFrom('email_token').select('token')
    .where('did', '=', did).where('purpose', '=', purpose)
    .executeTakeFirst()
  check(row, `the reference mailed a ${purpose} token`)
  return row.token
}

// UES writes every mail to its outbox file when no SMTP server is configured.
function uesToken(template) {
  const lines = fs.readFileSync(uesOutbox, 'utf8').trim().split('\n').map((l) => JSON.parse(l))
  const mail = lines.reverse().find((l) => l.template === template)
  check(mail, `UES mailed a ${template} token`)
  return mail.token
}

// Preferences through plain fetch: this @atproto/api sends app.bsky.* calls only to a
// configured AppView, while a PDS serves these two itself.
async function preferences(agent, body) {
  const method = body ? 'app.bsky.actor.putPreferences' : 'app.bsky.actor.getPreferences'
  const res = await fetch(`${agent.serviceUrl.origin}/xrpc/${method}`, {
    method: body ? 'POST' : 'GET',
    headers: { authorization: `Bearer ${agent.session.accessJwt}`, ...(body ? { 'content-type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  })
  check(res.ok, `${method} on ${agent.serviceUrl.origin} (${res.status} ${res.ok ? "" : await res.text()})`)
  return body ? null : res.json()
}

async function plcDocument(did) {
  const res = await fetch(`${plcUrl}/${did}`)
  check(res.ok, `the directory resolves ${did}`)
  return res.json()
}

// The guide's steps, from the account's old server to a new one.
async function migrate(did, oldAgent, newUrl, plcToken) {
  const newAgent = new AtpAgent({ service: newUrl })
  log(`${newUrl}: describeServer`)
  const newDid = (await newAgent.com.atproto.server.describeServer()).data.did
  log('old: getServiceAuth for createAccount')
  const auth = await oldAgent.com.atproto.server.getServiceAuth({ aud: newDid, lxm: 'com.atproto.server.createAccount' })
  log('new: createAccount with the DID')
  await newAgent.com.atproto.server.createAccount(
    { did, handle, email, password },
    { headers: { authorization: `Bearer ${auth.data.token}` }, encoding: 'application/json' },
  )
  await newAgent.login({ identifier: did, password })
  log('old: getRepo, new: importRepo')
  const car = await oldAgent.com.atproto.sync.getRepo({ did })
  await newAgent.com.atproto.repo.importRepo(car.data, { encoding: 'application/vnd.ipld.car' })
  log('blobs')
  let cursor
  let moved = 0
  do {
    const missing = await newAgent.com.atproto.repo.listMissingBlobs({ cursor, limit: 100 })
    for (const b of missing.data.blobs) {
      const blob = await oldAgent.com.atproto.sync.getBlob({ did, cid: b.cid })
      await newAgent.com.atproto.repo.uploadBlob(blob.data, { encoding: blob.headers['content-type'] })
      moved += 1
    }
    cursor = missing.data.cursor
  } while (cursor)
  log('preferences')
  await preferences(newAgent, await preferences(oldAgent))
  log('PLC operation')
  const creds = await newAgent.com.atproto.identity.getRecommendedDidCredentials()
  await oldAgent.com.atproto.identity.requestPlcOperationSignature()
  const token = await plcToken()
  const op = await oldAgent.com.atproto.identity.signPlcOperation({ token, ...creds.data })
  await newAgent.com.atproto.identity.submitPlcOperation({ operation: op.data.operation })
  log('activate the new, deactivate the old')
  await newAgent.com.atproto.server.activateAccount()
  await oldAgent.com.atproto.server.deactivateAccount({})
  return { newAgent, blobsMoved: moved, creds: creds.data }
}

// What a moved account must look like: the DID's document names the new server and key, the
// handle resolves there, its records verify with that key, the old server reports it
// deactivated and no longer serves its repository.
async function checkMoved(did, newAgent, newUrl, oldAgent, records) {
  const doc = await plcDocument(did)
  const pds = doc.service.find((s) => s.id === '#atproto_pds')
  check(pds && pds.serviceEndpoint === newUrl, `the DID document names ${newUrl} (it names ${pds && pds.serviceEndpoint})`)
  check(doc.alsoKnownAs[0] === `at://${handle}`, 'the handle stays in the DID document')
  const resolved = await newAgent.com.atproto.identity.resolveHandle({ handle })
  check(resolved.data.did === did, `${handle} resolves to ${did} on ${newUrl}`)
  const status = await newAgent.com.atproto.server.checkAccountStatus()
  check(status.data.activated && status.data.validDid, `active with a valid DID on ${newUrl}`)
  check(status.data.expectedBlobs === status.data.importedBlobs, 'every blob moved')
  const data = await (await fetch(`${plcUrl}/${did}/data`)).json()
  const key = data.verificationMethods.atproto
  const car = await newAgent.com.atproto.sync.getRepo({ did })
  const verified = await verifyRepoCar(new Uint8Array(car.data), did, key)
  check(verified.creates.length === records, `${records} records verify (got ${verified.creates.length})`)
  const old = await oldAgent.com.atproto.server.checkAccountStatus()
  check(!old.data.activated, 'the old server reports the account deactivated')
  // To others (the account holder may still read its own).
  const res = await fetch(`${oldAgent.serviceUrl.origin}/xrpc/com.atproto.sync.getRepo?did=${did}`)
  check(!res.ok, `the old server no longer serves the repository (${res.status})`)
  const prefs = await preferences(newAgent)
  check(prefs.preferences.some((p) => p.$type === 'app.bsky.actor.defs#adultContentPref'), 'preferences moved')
  return verified.commit.rev
}

const { directory, pds } = await startReference(plcPort, pdsPort, data, { PDS_DISABLE_SSRF_PROTECTION: 'true' })
try {
  log('an account on the reference PDS with records, a blob and preferences')
  const ref = new AtpAgent({ service: refUrl })
  await ref.createAccount({ handle, email, password })
  const did = ref.session.did
  const image = new Uint8Array(Buffer.from('\x89PNG\r\n\x1a\n a picture, for the migration test'))
  const up = await ref.com.atproto.repo.uploadBlob(image, { encoding: 'image/png' })
  const records = 12
  for (let i = 0; i < records; i++) {
    const record = { $type: 'app.bsky.feed.post', text: `post ${i}`, createdAt: new Date().toISOString() }
    if (i === 0) record.embed = { $type: 'app.bsky.embed.images', images: [{ image: up.data.blob, alt: 'a picture' }] }
    await ref.com.atproto.repo.createRecord({ repo: did, collection: 'app.bsky.feed.post', record })
  }
  await preferences(ref, { preferences: [{ $type: 'app.bsky.actor.defs#adultContentPref', enabled: false }] })

  log('reference PDS -> UES')
  const toUes = await migrate(did, ref, uesUrl, () => referenceToken(pds, did, 'plc_operation'))
  const uesRev = await checkMoved(did, toUes.newAgent, uesUrl, ref, records)
  await toUes.newAgent.com.atproto.repo.createRecord({
    repo: did, collection: 'app.bsky.feed.post',
    record: { $type: 'app.bsky.feed.post', text: 'written on UES', createdAt: new Date().toISOString() },
  })

  // The reference refuses a DID whose deactivated repository it still holds ("Repo already
  // exists"): its operator removes that copy before the account comes back.
  log('reference: its operator removes the deactivated copy')
  const del = await fetch(`${refUrl}/xrpc/com.atproto.admin.deleteAccount`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Basic ${Buffer.from('admin:admin-pass').toString('base64')}` },
    body: JSON.stringify({ did }),
  })
  check(del.ok, `admin.deleteAccount on the reference (${del.status})`)

  log('UES -> reference PDS')
  const back = await migrate(did, toUes.newAgent, refUrl, async () => uesToken('plc_operation'))
  // The reference keeps the imported commit, signed by the old server's key, until the next
  // write (UES signs the head again with its own key on import): write once first.
  await back.newAgent.com.atproto.repo.createRecord({
    repo: did, collection: 'app.bsky.feed.post',
    record: { $type: 'app.bsky.feed.post', text: 'back on the reference', createdAt: new Date().toISOString() },
  })
  const refRev = await checkMoved(did, back.newAgent, refUrl, toUes.newAgent, records + 2)

  console.log(JSON.stringify({
    ok: true, did, uesRev, refRev,
    blobsToUes: toUes.blobsMoved, blobsBack: back.blobsMoved,
    uesRecommended: toUes.creds,
  }))
} catch (err) {
  console.log(JSON.stringify({ ok: false, step, error: String(err && (err.stack || err.message) || err) }))
  process.exitCode = 1
} finally {
  await pds.destroy()
  await directory.destroy()
}
