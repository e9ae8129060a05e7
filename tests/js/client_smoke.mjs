// Drives a UES node with Bluesky's official client (@atproto/api AtpAgent):
//   node client_smoke.mjs http://127.0.0.1:PORT N
// Prints one JSON line with what it did and exits non-zero on the first failure.
import api from '@atproto/api'
import repo from '@atproto/repo'
import { CID } from 'multiformats/cid'

const [service, nArg] = process.argv.slice(2)
const n = parseInt(nArg || '20', 10)
const agent = new api.AtpAgent({ service })
const handle = `u${Date.now().toString(36)}.test`
const out = { handle }
const check = (cond, what) => { if (!cond) throw new Error(`check failed: ${what}`) }

try {
  const desc = await agent.com.atproto.server.describeServer()
  check(desc.data.availableUserDomains.includes('.test'), 'describeServer')
  await agent.createAccount({ handle, password: 'correct horse battery', email: `${handle}@mail.test` })
  out.did = agent.session.did
  await agent.login({ identifier: handle, password: 'correct horse battery' })
  const uris = []
  const t0 = Date.now()
  for (let i = 0; i < n; i++) {
    const r = await agent.com.atproto.repo.createRecord({
      repo: agent.session.did, collection: 'app.bsky.feed.post',
      record: { $type: 'app.bsky.feed.post', text: `post ${i}`, createdAt: new Date().toISOString() },
    })
    uris.push(r.data.uri)
  }
  out.createMs = Date.now() - t0
  const rkey = uris[0].split('/').pop()
  const got = await agent.com.atproto.repo.getRecord({ repo: handle, collection: 'app.bsky.feed.post', rkey })
  check(got.data.value.text === 'post 0', 'getRecord')
  let cursor, listed = 0
  do {
    const page = await agent.com.atproto.repo.listRecords({ repo: agent.session.did, collection: 'app.bsky.feed.post', limit: 7, cursor })
    listed += page.data.records.length
    cursor = page.data.cursor
  } while (cursor)
  check(listed === n, `listRecords paging saw ${listed}`)
  await agent.com.atproto.repo.putRecord({ repo: agent.session.did, collection: 'app.bsky.feed.post', rkey, record: { $type: 'app.bsky.feed.post', text: 'edited', createdAt: new Date().toISOString() } })
  await agent.com.atproto.repo.deleteRecord({ repo: agent.session.did, collection: 'app.bsky.feed.post', rkey })
  const d = await agent.com.atproto.repo.describeRepo({ repo: handle })
  check(d.data.collections.includes('app.bsky.feed.post'), 'describeRepo')
  // applyWrites: three creates and a delete in one commit.
  const aw = await agent.com.atproto.repo.applyWrites({
    repo: agent.session.did,
    writes: [0, 1, 2].map((i) => ({ $type: 'com.atproto.repo.applyWrites#create', collection: 'app.bsky.feed.like', value: { $type: 'app.bsky.feed.like', subject: { uri: uris[1], cid: got.data.cid }, createdAt: new Date().toISOString() } }))
      .concat([{ $type: 'com.atproto.repo.applyWrites#delete', collection: 'app.bsky.feed.post', rkey: uris[2].split('/').pop() }]),
  })
  check(aw.data.results.length === 4, 'applyWrites results')
  // The whole repository, verified by @atproto/repo against the DID document's key.
  const didDoc = agent.session.didDoc ?? (await agent.com.atproto.server.getSession()).data.didDoc
  const key = 'did:key:' + didDoc.verificationMethod[0].publicKeyMultibase
  const car = await agent.com.atproto.sync.getRepo({ did: agent.session.did })
  const verified = await repo.verifyRepoCar(car.data, agent.session.did, key)
  check(verified.creates.length === n - 2 + 3, `verifyRepoCar saw ${verified.creates.length} records`)
  // One record with its proof, verified by @atproto/repo.
  const likeCid = aw.data.results[0].cid
  const likeKey = aw.data.results[0].uri.split('/').pop()
  const proof = await agent.com.atproto.sync.getRecord({ did: agent.session.did, collection: 'app.bsky.feed.like', rkey: likeKey })
  const res = await repo.verifyProofs(proof.data, [{ collection: 'app.bsky.feed.like', rkey: likeKey, cid: CID.parse(likeCid) }], agent.session.did, key)
  check(res.verified.length === 1 && res.unverified.length === 0, 'verifyProofs')
  const latest = await agent.com.atproto.sync.getLatestCommit({ did: agent.session.did })
  check(latest.data.cid === aw.data.commit.cid, 'getLatestCommit')
  out.verifiedRecords = verified.creates.length
  // A blob: upload, reference from a post, fetch back byte for byte.
  const bytes = new Uint8Array(200_000).map((_, i) => i % 251)
  const up = await agent.uploadBlob(bytes, { encoding: 'image/png' })
  await agent.com.atproto.repo.createRecord({
    repo: agent.session.did, collection: 'app.bsky.feed.post',
    record: { $type: 'app.bsky.feed.post', text: 'with a picture', createdAt: new Date().toISOString(),
      embed: { $type: 'app.bsky.embed.images', images: [{ alt: 'pattern', image: up.data.blob }] } },
  })
  const back = await agent.com.atproto.sync.getBlob({ did: agent.session.did, cid: up.data.blob.ref.toString() })
  check(back.data.length === bytes.length && back.data.every((b, i) => b === bytes[i]), 'getBlob bytes')
  await agent.sessionManager?.refreshSession?.()
  const s = await agent.com.atproto.server.getSession()
  check(s.data.handle === handle, 'getSession after refresh')
  out.ok = true
  console.log(JSON.stringify(out))
} catch (err) {
  out.ok = false
  out.error = String(err && (err.stack || err.message) || err) + ' cause: ' + String(err && err.cause && (err.cause.message || err.cause))
  console.log(JSON.stringify(out))
  process.exit(1)
}
