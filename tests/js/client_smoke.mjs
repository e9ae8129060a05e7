// Drives a UES node with Bluesky's official client (@atproto/api AtpAgent):
//   node --experimental-websocket client_smoke.mjs http://127.0.0.1:PORT N [DATA_DIR]
// With DATA_DIR (the node's), it also forces its access token to expire (signing an expired
// token with the node's jwt.secret) and checks that the client refreshes and carries on.
// At the end it consumes the firehose from cursor 0 and checks every #commit of the account as
// a relay would. Prints one JSON line with what it did and exits non-zero on the first failure.
import { createHmac } from 'node:crypto'
import { readFileSync } from 'node:fs'
import api from '@atproto/api'
import common from '@atproto/common'
import repo from '@atproto/repo'
import { CID } from 'multiformats/cid'

const [service, nArg, dataDir] = process.argv.slice(2)
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
  if (dataDir) {
    await forcedExpiry()
    out.forcedExpiry = true
  }
  out.firehoseCommits = await checkFirehose(agent.session.did, (await agent.com.atproto.sync.getLatestCommit({ did: agent.session.did })).data.rev)
  out.ok = true
  console.log(JSON.stringify(out))
} catch (err) {
  fail(err)
}

function fail(err) {
  out.ok = false
  out.error = String(err && (err.stack || err.message) || err) + ' cause: ' + String(err && err.cause && (err.cause.message || err.cause))
  console.log(JSON.stringify(out))
  process.exit(1)
}

// Replaces the session's access token with one that expired 100 s ago, signed like the node's
// own, then makes calls: the node answers 400 ExpiredToken, the client refreshes and retries.
async function forcedExpiry () {
  const secret = readFileSync(`${dataDir}/jwt.secret`)
  const b64 = (x) => Buffer.from(x).toString('base64url')
  const claims = JSON.parse(Buffer.from(agent.session.accessJwt.split('.')[1], 'base64url'))
  const now = Math.floor(Date.now() / 1000)
  const input = `${b64(JSON.stringify({ typ: 'at+jwt', alg: 'HS256' }))}.${b64(JSON.stringify({ ...claims, iat: now - 7300, exp: now - 100 }))}`
  const expired = `${input}.${createHmac('sha256', secret).update(input).digest('base64url')}`
  const raw = await fetch(`${service}/xrpc/com.atproto.server.getSession`, { headers: { authorization: `Bearer ${expired}` } })
  const body = await raw.json()
  check(raw.status === 400 && body.error === 'ExpiredToken', `expired token answered ${raw.status} ${JSON.stringify(body)}`)
  agent.sessionManager.session = { ...agent.session, accessJwt: expired }
  const me = await agent.com.atproto.server.getSession()
  check(me.data.did === agent.session.did, 'getSession after forced expiry')
  check(agent.session.accessJwt !== expired, 'the client refreshed the expired token')
  agent.sessionManager.session = { ...agent.session, accessJwt: expired }
  await agent.com.atproto.repo.createRecord({
    repo: agent.session.did, collection: 'app.bsky.feed.post',
    record: { $type: 'app.bsky.feed.post', text: 'after expiry', createdAt: new Date().toISOString() },
  })
  check(agent.session.accessJwt !== expired, 'a write with an expired token refreshed and went through')
}

// Reads subscribeRepos from cursor 0 until the #commit of revision `lastRev` (30 s at most) and
// checks every #commit of `did`: the CAR's root is the commit, the created and updated records
// are in its blocks, and inverting its ops on those blocks alone gives prevData. Returns the
// number of commits checked.
async function checkFirehose (did, lastRev) {
  const url = service.replace(/^http/, 'ws') + '/xrpc/com.atproto.sync.subscribeRepos?cursor=0'
  const ws = new WebSocket(url)
  ws.binaryType = 'arraybuffer'
  const frames = []
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`firehose: no #commit of rev ${lastRev} within 30 s (${frames.length} frames)`)), 30_000)
    ws.onerror = () => { clearTimeout(timer); reject(new Error('firehose: websocket error')) }
    ws.onmessage = (ev) => {
      const frame = new Uint8Array(ev.data)
      frames.push(frame)
      const [header, body] = common.cborDecodeMulti(frame)
      if (header.op !== 1) { clearTimeout(timer); reject(new Error(`firehose error frame ${JSON.stringify(body)}`)) }
      if (header.t === '#commit' && body.repo === did && body.rev === lastRev) { clearTimeout(timer); resolve() }
    }
  })
  ws.close()
  let checked = 0
  let lastSeq = 0
  for (const frame of frames) {
    const [header, body] = common.cborDecodeMulti(frame)
    check(body.seq > lastSeq, `sequence numbers increase (${body.seq} after ${lastSeq})`)
    lastSeq = body.seq
    if (header.t !== '#commit' || body.repo !== did) continue
    const { root, blocks } = await repo.readCarWithRoot(body.blocks)
    check(root.equals(body.commit), 'the CAR is rooted at the commit')
    for (const op of body.ops) {
      if (op.action !== 'delete') check(blocks.has(op.cid), `record ${op.path} is in the event's blocks`)
    }
    if (!body.prevData) continue // the account's first, empty commit
    const commit = common.cborDecode(blocks.get(body.commit))
    const storage = new repo.MemoryBlockstore(blocks)
    let mst = repo.MST.load(storage, commit.data)
    for (const op of body.ops) {
      if (op.action === 'create') mst = await mst.delete(op.path)
      else if (op.action === 'update') mst = await mst.update(op.path, op.prev)
      else mst = await mst.add(op.path, op.prev)
    }
    check((await mst.getPointer()).equals(body.prevData), `inverting commit ${body.rev} gives prevData`)
    checked++
  }
  return checked
}
