// The node as its own Bluesky AppView (the `dev.ues.feed` application), driven by Bluesky's
// official client @atproto/api:
//   node --experimental-websocket feed_scenario.mjs http://127.0.0.1:PORT [SHARED_LEXICONS_DIR]
// Four accounts (alice, bob, carol, dan) follow, post (text, a mention, images, a link card, a
// 4-deep reply chain, a self-thread, quotes), like, repost and block through com.atproto.repo.*;
// the script keeps its own model of what Bluesky's AppView would answer and checks the app.bsky.*
// read methods against it exactly: timeline, author feeds under every filter (and their paging),
// threads (depth, parentHeight, deleted and blocked posts), posts, likes, reposts, quotes,
// profiles, follows, blocks, notifications (reasons, precedence, seen state), then deletes a post
// and a like and checks again.
//
// Every answer is validated by @atproto/api against its bundled lexicons (the script first
// proves that the installed version does so) and, when SHARED_LEXICONS_DIR is given (the
// ../shared/reference/atproto-lexicons folder), against those too (lexcheck.mjs).
// Prints one JSON line (what was checked); on the first failed check exits 1 with what was
// expected and what came.
import { deflateSync } from 'node:zlib'
import { readFileSync } from 'node:fs'
import api from '@atproto/api'
import { loadLexicons } from './lexcheck.mjs'

const [service, sharedLexicons] = process.argv.slice(2)
if (!service) {
  console.error('usage: node --experimental-websocket feed_scenario.mjs http://127.0.0.1:PORT [SHARED_LEXICONS_DIR]')
  process.exit(2)
}
const PASSWORD = 'correct horse battery staple'
const SETTLE_MS = 10_000
const out = { ok: false, service, checks: 0, calls: {}, sections: [] }
const apiVersion = JSON.parse(readFileSync(new URL('./node_modules/@atproto/api/package.json', import.meta.url))).version
out.atprotoApi = apiVersion

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
const fmt = (v) => {
  const s = JSON.stringify(v, (_k, x) => (x && x.constructor && x.constructor.name === 'CID' ? x.toString() : x))
  return s === undefined ? 'undefined' : s.length > 1500 ? s.slice(0, 1500) + '…' : s
}
class CheckFailed extends Error {}
function check (cond, what) {
  out.checks++
  if (!cond) throw new CheckFailed(what)
}
function eq (got, want, what) {
  out.checks++
  if (got !== want) throw new CheckFailed(`${what}: expected ${fmt(want)}, got ${fmt(got)}`)
}
function eqList (got, want, what) {
  out.checks++
  if (got.length !== want.length || got.some((g, i) => g !== want[i])) {
    throw new CheckFailed(`${what}:\n  expected ${fmt(want)}\n  got      ${fmt(got)}`)
  }
}
function section (name) {
  out.sections.push(name)
}

// ---------------------------------------------------------------------------------------------
// Validation of every answer.

let lexcheck = null
if (sharedLexicons) {
  lexcheck = loadLexicons(sharedLexicons)
  out.lexcheck = { dir: sharedLexicons, loaded: lexcheck.loaded, skipped: lexcheck.skipped }
} else {
  console.error('\n!!!!!!!! SKIPPED: no reference lexicon folder given; answers are checked against @atproto/api\'s bundled lexicons only !!!!!!!!\n')
  out.lexcheck = 'SKIPPED'
}

/** An XRPC call that failed: the method, the caller, the status and the error name. */
class CallFailed extends Error {
  constructor (nsid, who, err) {
    let msg = `${nsid} as ${who}: ${err?.status ?? '?'} ${err?.error ?? ''}: ${err?.message ?? err}`
    if (err?.validationError) {
      msg = `${nsid} as ${who}: the answer is invalid per @atproto/api ${apiVersion}'s lexicons: ${err.validationError.message}\n  body: ${fmt(err.responseBody)}`
    }
    super(msg)
    this.status = err?.status
    this.xrpcError = err?.error
  }
}

/** Calls `nsid` as `user` through the official client, then checks the body on the reference lexicons. */
async function xrpc (user, nsid, params, data, opts) {
  let res
  try {
    res = await user.agent.call(nsid, params, data, opts)
  } catch (err) {
    throw new CallFailed(nsid, user.name, err)
  }
  out.calls[nsid] = (out.calls[nsid] ?? 0) + 1
  if (lexcheck) lexcheck.check(nsid, res.data)
  return res.data
}

/** Expects `nsid` to fail with XRPC error `error`. */
async function xrpcError (user, nsid, params, error, what) {
  try {
    const body = await xrpc(user, nsid, params)
    throw new CheckFailed(`${what}: expected error ${error}, got a 200 answer ${fmt(body)}`)
  } catch (err) {
    if (err instanceof CheckFailed) throw err
    if (!(err instanceof CallFailed)) throw err
    eq(err.xrpcError, error, `${what}: the error (${err.message})`)
  }
}

/** Proves that the installed @atproto/api rejects an answer that does not match its lexicons. */
async function clientValidatesResponses () {
  const bogus = async () => new Response(JSON.stringify({ feed: [{ post: { uri: 'not an at-uri' } }] }), {
    status: 200, headers: { 'content-type': 'application/json' },
  })
  const agent = new api.AtpAgent({ service: 'http://127.0.0.1:9', fetch: bogus })
  try {
    await agent.app.bsky.feed.getTimeline({})
  } catch (err) {
    check(err?.validationError && err.lexiconNsid === 'app.bsky.feed.getTimeline',
      `@atproto/api ${apiVersion} failed on an invalid getTimeline body, but not as a lexicon validation error: ${err}`)
    return true
  }
  throw new CheckFailed(`@atproto/api ${apiVersion} accepted an invalid getTimeline body: responses are not validated, the script must validate them itself`)
}

// ---------------------------------------------------------------------------------------------
// Small PNGs (each one distinct, so every blob has its own CID).

const CRC = Array.from({ length: 256 }, (_, n) => {
  let c = n
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1
  return c >>> 0
})
function crc32 (buf) {
  let c = 0xffffffff
  for (const b of buf) c = CRC[(c ^ b) & 0xff] ^ (c >>> 8)
  return (c ^ 0xffffffff) >>> 0
}
function chunk (type, data) {
  const len = Buffer.alloc(4)
  len.writeUInt32BE(data.length)
  const td = Buffer.concat([Buffer.from(type, 'ascii'), data])
  const crc = Buffer.alloc(4)
  crc.writeUInt32BE(crc32(td))
  return Buffer.concat([len, td, crc])
}
function png (width, height, seed) {
  const ihdr = Buffer.alloc(13)
  ihdr.writeUInt32BE(width, 0)
  ihdr.writeUInt32BE(height, 4)
  ihdr[8] = 8 // bit depth
  ihdr[9] = 2 // RGB
  const raw = Buffer.alloc(height * (1 + width * 3))
  for (let y = 0; y < height; y++) {
    raw[y * (1 + width * 3)] = 0
    for (let x = 0; x < width * 3; x++) raw[y * (1 + width * 3) + 1 + x] = (seed * 37 + x * 11 + y * 5) & 0xff
  }
  const sig = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])
  return new Uint8Array(Buffer.concat([sig, chunk('IHDR', ihdr), chunk('IDAT', deflateSync(raw)), chunk('IEND', Buffer.alloc(0))]))
}

// ---------------------------------------------------------------------------------------------
// The model: every record written, and what the AppView makes of them.

const users = {} // name -> { name, handle, did, agent }
const byDid = new Map() // did -> user
const M = {
  posts: new Map(), // uri -> { uri, cid, label, author, text, createdAt, parent, root, quote, embed, mentions, deleted }
  items: [], // feed items in write order: { kind: 'post'|'repost', uri, by, subject, createdAt }
  likes: new Map(), // uri -> { uri, cid, by, subject, createdAt, deleted }
  reposts: new Map(), // uri -> { uri, cid, by, subject, createdAt, deleted }
  follows: [], // { uri, by, subject, createdAt, deleted }
  blocks: [], // { uri, by, subject, createdAt }
  notifs: [], // { recipient, reason, author, uri, cid, createdAt, subjects: Set|null }
  profiles: {}, // name -> { displayName, description, avatar: cid }
  blobs: new Map(), // cid -> bytes
  labels: new Map(), // uri -> label
}
const lbl = (uri) => M.labels.get(uri) ?? uri
const alivePost = (uri) => { const p = M.posts.get(uri); return p && !p.deleted ? p : undefined }
const blocking = (a, b) => M.blocks.find((x) => x.by === a && x.subject === b && !x.deleted)
const blockBetween = (a, b) => !!(blocking(a, b) || blocking(b, a))
const followOf = (a, b) => M.follows.find((f) => f.by === a && f.subject === b && !f.deleted)
const recordAlive = (uri) => {
  const r = M.posts.get(uri) ?? M.likes.get(uri) ?? M.reposts.get(uri) ?? M.follows.find((f) => f.uri === uri)
  return r && !r.deleted
}
const strongRef = (p) => ({ uri: p.uri, cid: p.cid })
const rkeyOf = (uri) => uri.split('/').pop()
const collectionOf = (uri) => uri.split('/')[3]

/** createdAt of the next write: at least 8 ms after the previous one. */
async function stamp () {
  await sleep(8)
  return new Date().toISOString()
}

async function createRecord (user, collection, record) {
  const res = await xrpc(user, 'com.atproto.repo.createRecord', undefined, { repo: user.did, collection, record })
  check(res.uri.startsWith(`at://${user.did}/${collection}/`), `createRecord ${collection} as ${user.name} answered uri ${res.uri}`)
  return res
}

async function uploadPng (user, width, height, seed) {
  const bytes = png(width, height, seed)
  const res = await xrpc(user, 'com.atproto.repo.uploadBlob', undefined, bytes, { encoding: 'image/png' })
  const cid = res.blob.ref.toString()
  M.blobs.set(cid, bytes)
  return { blob: res.blob, cid, width, height }
}

async function putProfile (user, { displayName, description, avatar }) {
  const record = { $type: 'app.bsky.actor.profile', createdAt: await stamp() }
  if (displayName) record.displayName = displayName
  if (description) record.description = description
  if (avatar) record.avatar = avatar.blob
  await xrpc(user, 'com.atproto.repo.putRecord', undefined, { repo: user.did, collection: 'app.bsky.actor.profile', rkey: 'self', record })
  M.profiles[user.name] = { displayName, description, avatar: avatar?.cid }
}

async function follow (user, target) {
  const createdAt = await stamp()
  const res = await createRecord(user, 'app.bsky.graph.follow', { $type: 'app.bsky.graph.follow', subject: target.did, createdAt })
  M.follows.push({ uri: res.uri, cid: res.cid, by: user.name, subject: target.name, createdAt })
  M.labels.set(res.uri, `follow by ${user.name} of ${target.name}`)
  M.notifs.push({ recipient: target.name, reason: 'follow', author: user.name, uri: res.uri, cid: res.cid, createdAt, subjects: null })
}

async function block (user, target) {
  const createdAt = await stamp()
  const res = await createRecord(user, 'app.bsky.graph.block', { $type: 'app.bsky.graph.block', subject: target.did, createdAt })
  M.blocks.push({ uri: res.uri, by: user.name, subject: target.name, createdAt })
  M.labels.set(res.uri, `block by ${user.name} of ${target.name}`)
}

/**
 * A post by `user`. `mentions`: users whose handles appear in `text` as @handle (facets found by
 * RichText.detectFacets, which resolves each handle through the node). `replyTo`: the parent
 * post. `quote`: a post embedded as app.bsky.embed.record. `images`: uploaded PNGs with alt.
 * `external`: a link card.
 */
async function post (label, user, text, { mentions = [], replyTo, quote, images, external } = {}) {
  const createdAt = await stamp()
  const record = { $type: 'app.bsky.feed.post', text, createdAt, langs: ['en'] }
  if (mentions.length) {
    const rt = new api.RichText({ text })
    await rt.detectFacets(users[user.name].agent)
    const dids = (rt.facets ?? []).flatMap((f) => f.features).filter((f) => f.$type === 'app.bsky.richtext.facet#mention').map((f) => f.did)
    eqList(dids, mentions.map((m) => m.did), `RichText.detectFacets of ${fmt(text)} (resolveHandle through the node)`)
    record.facets = rt.facets
  }
  let parent, root
  if (replyTo) {
    parent = replyTo.uri
    root = replyTo.root ?? replyTo.uri
    record.reply = { root: strongRef(M.posts.get(root)), parent: strongRef(replyTo) }
  }
  let embed
  if (images) {
    record.embed = { $type: 'app.bsky.embed.images', images: images.map((i) => ({ alt: i.alt, image: i.blob, aspectRatio: { width: i.width, height: i.height } })) }
    embed = { kind: 'images', images: images.map((i) => ({ cid: i.cid, alt: i.alt, width: i.width, height: i.height })) }
  } else if (external) {
    record.embed = { $type: 'app.bsky.embed.external', external: { uri: external.uri, title: external.title, description: external.description, thumb: external.thumb.blob } }
    embed = { kind: 'external', uri: external.uri, title: external.title, description: external.description, thumb: external.thumb.cid }
  } else if (quote) {
    record.embed = { $type: 'app.bsky.embed.record', record: strongRef(quote) }
    embed = { kind: 'record', uri: quote.uri }
  }
  const res = await createRecord(user, 'app.bsky.feed.post', record)
  const p = { uri: res.uri, cid: res.cid, label, author: user.name, text, createdAt, parent, root, quote: quote?.uri, embed, deleted: false }
  M.posts.set(p.uri, p)
  M.labels.set(p.uri, label)
  M.items.push({ kind: 'post', uri: p.uri, by: user.name, subject: p.uri, createdAt })
  // Notifications as Bluesky's AppView derives them: one per recipient, mention over quote
  // over reply; a reply notifies the author of every ancestor (up to 4 levels up); never self.
  const notified = new Set([user.name])
  const notify = (recipient, reason, subjects) => {
    if (notified.has(recipient)) return
    notified.add(recipient)
    M.notifs.push({ recipient, reason, author: user.name, uri: p.uri, cid: p.cid, createdAt, subjects })
  }
  for (const m of mentions) notify(m.name, 'mention', null)
  if (quote) notify(quote.author, 'quote', new Set([quote.uri]))
  const ancestors = []
  for (let a = parent, h = 1; a && h < 5; a = M.posts.get(a).parent, h++) ancestors.push(M.posts.get(a))
  for (const a of ancestors) {
    notify(a.author, 'reply', new Set(ancestors.filter((x) => x.author === a.author).map((x) => x.uri)))
  }
  return p
}

async function like (user, p) {
  const createdAt = await stamp()
  const res = await createRecord(user, 'app.bsky.feed.like', { $type: 'app.bsky.feed.like', subject: strongRef(p), createdAt })
  M.likes.set(res.uri, { uri: res.uri, cid: res.cid, by: user.name, subject: p.uri, createdAt, deleted: false })
  M.labels.set(res.uri, `like by ${user.name} of ${p.label}`)
  if (p.author !== user.name) M.notifs.push({ recipient: p.author, reason: 'like', author: user.name, uri: res.uri, cid: res.cid, createdAt, subjects: new Set([p.uri]) })
  return res.uri
}

async function repost (user, p) {
  const createdAt = await stamp()
  const res = await createRecord(user, 'app.bsky.feed.repost', { $type: 'app.bsky.feed.repost', subject: strongRef(p), createdAt })
  M.reposts.set(res.uri, { uri: res.uri, cid: res.cid, by: user.name, subject: p.uri, createdAt, deleted: false })
  M.labels.set(res.uri, `repost by ${user.name} of ${p.label}`)
  M.items.push({ kind: 'repost', uri: res.uri, by: user.name, subject: p.uri, createdAt })
  if (p.author !== user.name) M.notifs.push({ recipient: p.author, reason: 'repost', author: user.name, uri: res.uri, cid: res.cid, createdAt, subjects: new Set([p.uri]) })
  return res.uri
}

async function deleteRecord (user, uri) {
  await stamp()
  await xrpc(user, 'com.atproto.repo.deleteRecord', undefined, { repo: user.did, collection: collectionOf(uri), rkey: rkeyOf(uri) })
  const r = M.posts.get(uri) ?? M.likes.get(uri) ?? M.reposts.get(uri)
  r.deleted = true
}

// ---------------------------------------------------------------------------------------------
// What the AppView answers, from the model.

const counts = (uri) => ({
  likeCount: [...M.likes.values()].filter((l) => l.subject === uri && !l.deleted).length,
  repostCount: [...M.reposts.values()].filter((r) => r.subject === uri && !r.deleted).length,
  replyCount: [...M.posts.values()].filter((p) => p.parent === uri && !p.deleted).length,
  quoteCount: [...M.posts.values()].filter((p) => p.quote === uri && !p.deleted).length,
})
const viewerLike = (viewer, uri) => [...M.likes.values()].find((l) => l.by === viewer && l.subject === uri && !l.deleted)?.uri
const viewerRepost = (viewer, uri) => [...M.reposts.values()].find((r) => r.by === viewer && r.subject === uri && !r.deleted)?.uri
const itemKey = (kind, byName, subjectUri) => kind === 'repost' ? `repost by ${byName} of ${lbl(subjectUri)}` : lbl(subjectUri)
const gotItemKey = (item) => item?.reason?.$type === 'app.bsky.feed.defs#reasonRepost'
  ? `repost by ${byDid.get(item.reason.by?.did)?.name ?? item.reason.by?.did} of ${lbl(item.post?.uri)}`
  : item?.reason ? `${item.reason.$type} ${lbl(item.post?.uri)}` : lbl(item?.post?.uri)

/** Feed items still standing, newest first. */
function liveItems () {
  return M.items
    .filter((i) => alivePost(i.subject) && (i.kind === 'post' || !M.reposts.get(i.uri).deleted))
    .slice()
    .sort((a, b) => (a.createdAt < b.createdAt ? 1 : a.createdAt > b.createdAt ? -1 : 0))
}
function hiddenFor (viewer, i) {
  return blockBetween(viewer, i.by) || blockBetween(viewer, M.posts.get(i.subject).author)
}
function expectedTimeline (viewer) {
  const followed = new Set(M.follows.filter((f) => f.by === viewer && !f.deleted).map((f) => f.subject))
  return liveItems().filter((i) => (i.by === viewer || followed.has(i.by)) && !hiddenFor(viewer, i))
}
function expectedAuthorFeed (actor, filter, viewer) {
  const mine = liveItems().filter((i) => i.by === actor && !hiddenFor(viewer, i))
  const own = new Set(mine.filter((i) => i.kind === 'post').map((i) => i.subject))
  const selfThread = (uri) => {
    for (let u = uri, n = 0; u && n < 100; u = M.posts.get(u).parent, n++) {
      if (!own.has(u)) return false
      if (!M.posts.get(u).parent) return true
    }
    return false
  }
  switch (filter) {
    case 'posts_with_replies': return mine
    case 'posts_no_replies': return mine.filter((i) => i.kind === 'repost' || !M.posts.get(i.subject).parent)
    case 'posts_with_media': return mine.filter((i) => i.kind === 'post' && M.posts.get(i.subject).embed?.kind === 'images')
    case 'posts_with_video': return []
    case 'posts_and_author_threads': return mine.filter((i) => i.kind === 'repost' || selfThread(i.subject))
    default: throw new Error(`unknown filter ${filter}`)
  }
}
function expectedNotifications (viewer) {
  return M.notifs
    .filter((n) => n.recipient === viewer && recordAlive(n.uri))
    .filter((n) => !(n.reason === 'like' || n.reason === 'repost') || alivePost([...n.subjects][0]))
    .filter((n) => !blockBetween(viewer, n.author))
    .sort((a, b) => (a.createdAt < b.createdAt ? 1 : a.createdAt > b.createdAt ? -1 : 0))
}
const notifKey = (n) => `${n.reason} from ${n.author} (${lbl(n.uri)})`
const gotNotifKey = (n) => `${n.reason} from ${byDid.get(n.author?.did)?.name ?? n.author?.did} (${lbl(n.uri)})`

// ---------------------------------------------------------------------------------------------
// Checking views against the model.

const blobOk = new Set()
/** A blob URL: the node's own getBlob of (did, cid), which serves the uploaded bytes. */
async function checkBlobUrl (url, owner, cid, what) {
  check(typeof url === 'string', `${what}: expected a blob URL, got ${fmt(url)}`)
  let u
  try { u = new URL(url) } catch { throw new CheckFailed(`${what}: ${fmt(url)} is not a URL`) }
  const want = `${service}/xrpc/com.atproto.sync.getBlob?did=${users[owner].did}&cid=${cid}`
  check(u.origin === new URL(service).origin && u.pathname === '/xrpc/com.atproto.sync.getBlob' &&
    u.searchParams.get('did') === users[owner].did && u.searchParams.get('cid') === cid,
  `${what}: expected ${want}, got ${url}`)
  if (blobOk.has(url)) return
  const res = await fetch(url)
  const bytes = new Uint8Array(await res.arrayBuffer())
  const expected = M.blobs.get(cid)
  eq(res.status, 200, `${what}: GET ${url} status`)
  check(bytes.length === expected.length && bytes.every((b, i) => b === expected[i]),
    `${what}: GET ${url} returned ${bytes.length} bytes, not the ${expected.length} uploaded`)
  blobOk.add(url)
}

/** profileViewBasic / profileView / profileViewDetailed of `name` as `viewer` sees it. */
async function checkProfile (got, name, viewer, what, { detailed = false, basic = false } = {}) {
  const u = users[name]
  const prof = M.profiles[name] ?? {}
  check(got && typeof got === 'object', `${what}: expected the profile of ${name}, got ${fmt(got)}`)
  eq(got.did, u.did, `${what}: did`)
  eq(got.handle, u.handle, `${what}: handle`)
  eq(got.displayName, prof.displayName, `${what}: displayName`)
  if (!basic) eq(got.description, prof.description, `${what}: description`)
  if (prof.avatar) await checkBlobUrl(got.avatar, name, prof.avatar, `${what}: avatar`)
  else eq(got.avatar, undefined, `${what}: avatar`)
  if (detailed) {
    eq(got.followersCount, M.follows.filter((f) => f.subject === name && !f.deleted).length, `${what}: followersCount`)
    eq(got.followsCount, M.follows.filter((f) => f.by === name && !f.deleted).length, `${what}: followsCount`)
    eq(got.postsCount, [...M.posts.values()].filter((p) => p.author === name && !p.deleted).length, `${what}: postsCount`)
  }
  // A profileViewBasic may leave `viewer` out; when it is there it must be right.
  if (viewer && viewer !== name && !(basic && got.viewer === undefined)) {
    const blocked = blockBetween(viewer, name)
    eq(got.viewer?.following, blocked ? undefined : followOf(viewer, name)?.uri, `${what}: viewer.following`)
    eq(got.viewer?.followedBy, blocked ? undefined : followOf(name, viewer)?.uri, `${what}: viewer.followedBy`)
    eq(got.viewer?.blocking, blocking(viewer, name)?.uri, `${what}: viewer.blocking`)
    eq(!!got.viewer?.blockedBy, !!blocking(name, viewer), `${what}: viewer.blockedBy`)
  }
}

/** A postView of `uri` as `viewer` sees it: record, author, counts, viewer state, embed. */
async function checkPostView (pv, uri, viewer, what) {
  const p = M.posts.get(uri)
  check(pv && typeof pv === 'object', `${what}: expected the postView of ${p.label}, got ${fmt(pv)}`)
  eq(pv.uri, uri, `${what}: uri (${p.label})`)
  what = `${what} [${p.label}]`
  eq(pv.cid, p.cid, `${what}: cid`)
  await checkProfile(pv.author, p.author, viewer, `${what}: author`, { basic: true })
  eq(pv.record?.text, p.text, `${what}: record.text`)
  eq(pv.record?.createdAt, p.createdAt, `${what}: record.createdAt`)
  const c = counts(uri)
  for (const k of ['likeCount', 'repostCount', 'replyCount', 'quoteCount']) eq(pv[k], c[k], `${what}: ${k}`)
  eq(pv.viewer?.like, viewerLike(viewer, uri), `${what}: viewer.like`)
  eq(pv.viewer?.repost, viewerRepost(viewer, uri), `${what}: viewer.repost`)
  const e = p.embed
  if (!e) {
    eq(pv.embed, undefined, `${what}: embed`)
  } else if (e.kind === 'images') {
    eq(pv.embed?.$type, 'app.bsky.embed.images#view', `${what}: embed.$type`)
    eq(pv.embed.images?.length, e.images.length, `${what}: embed.images.length`)
    for (const [i, img] of e.images.entries()) {
      const v = pv.embed.images[i]
      eq(v.alt, img.alt, `${what}: embed.images[${i}].alt`)
      eq(v.aspectRatio?.width, img.width, `${what}: embed.images[${i}].aspectRatio.width`)
      eq(v.aspectRatio?.height, img.height, `${what}: embed.images[${i}].aspectRatio.height`)
      await checkBlobUrl(v.thumb, p.author, img.cid, `${what}: embed.images[${i}].thumb`)
      await checkBlobUrl(v.fullsize, p.author, img.cid, `${what}: embed.images[${i}].fullsize`)
    }
  } else if (e.kind === 'external') {
    eq(pv.embed?.$type, 'app.bsky.embed.external#view', `${what}: embed.$type`)
    eq(pv.embed.external?.uri, e.uri, `${what}: embed.external.uri`)
    eq(pv.embed.external.title, e.title, `${what}: embed.external.title`)
    eq(pv.embed.external.description, e.description, `${what}: embed.external.description`)
    await checkBlobUrl(pv.embed.external.thumb, p.author, e.thumb, `${what}: embed.external.thumb`)
  } else if (e.kind === 'record') {
    const q = M.posts.get(e.uri)
    eq(pv.embed?.$type, 'app.bsky.embed.record#view', `${what}: embed.$type`)
    if (q.deleted) {
      eq(pv.embed.record?.$type, 'app.bsky.embed.record#viewNotFound', `${what}: embed.record.$type (quoted post deleted)`)
    } else {
      eq(pv.embed.record?.$type, 'app.bsky.embed.record#viewRecord', `${what}: embed.record.$type`)
      eq(pv.embed.record.uri, q.uri, `${what}: embed.record.uri`)
      eq(pv.embed.record.cid, q.cid, `${what}: embed.record.cid`)
      eq(pv.embed.record.author?.did, users[q.author].did, `${what}: embed.record.author.did`)
      eq(pv.embed.record.value?.text, q.text, `${what}: embed.record.value.text`)
    }
  }
}

/** A reply ref's root or parent: the postView, or #notFoundPost once deleted, or #blockedPost. */
async function checkRefPost (got, uri, viewer, what) {
  const p = M.posts.get(uri)
  if (!p || p.deleted) {
    eq(got?.$type, 'app.bsky.feed.defs#notFoundPost', `${what}.$type (${lbl(uri)} was deleted)`)
    eq(got.uri, uri, `${what}.uri`)
    eq(got.notFound, true, `${what}.notFound`)
  } else if (blockBetween(viewer, p.author)) {
    eq(got?.$type, 'app.bsky.feed.defs#blockedPost', `${what}.$type (${lbl(uri)} is by a blocked account)`)
    eq(got.uri, uri, `${what}.uri`)
  } else {
    eq(got?.$type, 'app.bsky.feed.defs#postView', `${what}.$type`)
    await checkPostView(got, uri, viewer, what)
  }
}

/** One feedViewPost: the post, the repost reason, the reply ref. */
async function checkFeedItem (got, exp, viewer, what) {
  const p = M.posts.get(exp.subject)
  what = `${what} [${itemKey(exp.kind, exp.by, exp.subject)}]`
  await checkPostView(got.post, p.uri, viewer, `${what} .post`)
  if (exp.kind === 'repost') {
    eq(got.reason?.$type, 'app.bsky.feed.defs#reasonRepost', `${what}: reason.$type`)
    eq(got.reason.by?.did, users[exp.by].did, `${what}: reason.by.did`)
    eq(got.reason.by.handle, users[exp.by].handle, `${what}: reason.by.handle`)
    if (got.reason.uri !== undefined) eq(got.reason.uri, exp.uri, `${what}: reason.uri`)
    if (got.reason.cid !== undefined) eq(got.reason.cid, M.reposts.get(exp.uri).cid, `${what}: reason.cid`)
  } else {
    eq(got.reason, undefined, `${what}: reason`)
  }
  if (!p.parent) {
    eq(got.reply, undefined, `${what}: reply (not a reply)`)
    return
  }
  check(got.reply && typeof got.reply === 'object', `${what}: expected a reply ref (root ${lbl(p.root)}, parent ${lbl(p.parent)}), got ${fmt(got.reply)}`)
  await checkRefPost(got.reply.root, p.root, viewer, `${what}: reply.root`)
  await checkRefPost(got.reply.parent, p.parent, viewer, `${what}: reply.parent`)
  const parent = alivePost(p.parent)
  if (parent && parent.parent && !blockBetween(viewer, parent.author)) {
    await checkProfile(got.reply.grandparentAuthor, M.posts.get(parent.parent).author, viewer, `${what}: reply.grandparentAuthor`, { basic: true })
  } else {
    eq(got.reply.grandparentAuthor, undefined, `${what}: reply.grandparentAuthor (the parent is ${parent ? 'not a reply' : 'gone'})`)
  }
}

/** A whole feed, item by item, in order. */
async function checkFeed (got, expected, viewer, what) {
  eqList(got.map(gotItemKey), expected.map((i) => itemKey(i.kind, i.by, i.subject)), `${what}: the items, newest first`)
  for (const [n, item] of got.entries()) await checkFeedItem(item, expected[n], viewer, `${what} item ${n}`)
}

/** Walks a paginated list with limit=1 (at most 500 pages) and returns every item. */
async function walkPages (user, nsid, params, key) {
  const all = []
  const seen = new Set()
  let cursor
  for (let page = 0; ; page++) {
    check(page < 500, `${nsid} ${fmt(params)} with limit=1: more than 500 pages`)
    const body = await xrpc(user, nsid, { ...params, limit: 1, cursor })
    check(body[key].length <= 1, `${nsid} ${fmt(params)} with limit=1 answered ${body[key].length} items`)
    all.push(...body[key])
    if (!body.cursor) break
    check(!seen.has(body.cursor), `${nsid} ${fmt(params)} with limit=1: cursor ${body.cursor} came twice`)
    seen.add(body.cursor)
    cursor = body.cursor
  }
  return all
}

/** Expected thread nodes for getPostThread (Bluesky's v1 thread view). */
function expThread (uri, viewer, depth, height) {
  return { kind: 'thread', uri, parent: expParent(uri, viewer, height), replies: expReplies(uri, viewer, depth) }
}
function expParent (uri, viewer, height) {
  if (height < 1) return undefined
  const parentUri = M.posts.get(uri).parent
  if (!parentUri) return undefined
  const pp = M.posts.get(parentUri)
  if (!pp || pp.deleted) return { kind: 'notFound', uri: parentUri }
  if (blockBetween(viewer, pp.author)) return { kind: 'blocked', uri: parentUri, author: pp.author }
  return { kind: 'thread', uri: parentUri, parent: expParent(parentUri, viewer, height - 1), replies: undefined }
}
function expReplies (uri, viewer, depth) {
  if (depth < 1) return undefined
  return [...M.posts.values()]
    .filter((c) => c.parent === uri && !c.deleted)
    .sort((a, b) => (a.uri < b.uri ? -1 : 1))
    .map((c) => blockBetween(viewer, c.author)
      ? { kind: 'blocked', uri: c.uri, author: c.author }
      : { kind: 'thread', uri: c.uri, parent: undefined, replies: expReplies(c.uri, viewer, depth - 1) })
}
async function checkThread (got, exp, viewer, what) {
  if (exp.kind === 'notFound') {
    eq(got?.$type, 'app.bsky.feed.defs#notFoundPost', `${what}.$type (${lbl(exp.uri)} was deleted)`)
    eq(got.uri, exp.uri, `${what}.uri`)
    eq(got.notFound, true, `${what}.notFound`)
    return
  }
  if (exp.kind === 'blocked') {
    eq(got?.$type, 'app.bsky.feed.defs#blockedPost', `${what}.$type (${lbl(exp.uri)} by ${exp.author}, ${viewer} blocks or is blocked)`)
    eq(got.uri, exp.uri, `${what}.uri`)
    eq(got.blocked, true, `${what}.blocked`)
    eq(got.author?.did, users[exp.author].did, `${what}.author.did`)
    eq(got.author.viewer?.blocking, blocking(viewer, exp.author)?.uri, `${what}.author.viewer.blocking`)
    eq(!!got.author.viewer?.blockedBy, !!blocking(exp.author, viewer), `${what}.author.viewer.blockedBy`)
    return
  }
  eq(got?.$type, 'app.bsky.feed.defs#threadViewPost', `${what}.$type (${lbl(exp.uri)})`)
  await checkPostView(got.post, exp.uri, viewer, `${what}.post`)
  if (exp.parent === undefined) check(!('parent' in got), `${what} (${lbl(exp.uri)}): expected no parent key, got ${fmt(got.parent)}`)
  else await checkThread(got.parent, exp.parent, viewer, `${what}.parent`)
  if (exp.replies === undefined) {
    check(!('replies' in got), `${what} (${lbl(exp.uri)}): expected no replies key (cut by depth, or a parent), got ${fmt(got.replies)}`)
  } else {
    check(Array.isArray(got.replies), `${what} (${lbl(exp.uri)}): expected replies ${fmt(exp.replies.map((r) => lbl(r.uri)))}, got ${fmt(got.replies)}`)
    const sorted = got.replies.slice().sort((a, b) => ((a.post?.uri ?? a.uri) < (b.post?.uri ?? b.uri) ? -1 : 1))
    eqList(sorted.map((r) => lbl(r.post?.uri ?? r.uri)), exp.replies.map((r) => lbl(r.uri)), `${what} (${lbl(exp.uri)}).replies`)
    for (const [i, r] of sorted.entries()) await checkThread(r, exp.replies[i], viewer, `${what}.replies[${i}]`)
  }
}
async function checkPostThread (viewer, uri, params, what) {
  const body = await xrpc(users[viewer], 'app.bsky.feed.getPostThread', { uri, ...params })
  const exp = expThread(uri, viewer, params.depth ?? 6, params.parentHeight ?? 80)
  await checkThread(body.thread, exp, viewer, `${what}: thread`)
}

/** listNotifications of `viewer`, exactly the model's, each read or not as `isRead` says. */
async function checkNotifications (viewer, isRead, what) {
  const body = await xrpc(users[viewer], 'app.bsky.notification.listNotifications', { limit: 100 })
  const exp = expectedNotifications(viewer)
  eqList(body.notifications.map(gotNotifKey), exp.map(notifKey), `${what}: listNotifications of ${viewer}, newest first`)
  const uris = body.notifications.map((n) => n.uri)
  check(new Set(uris).size === uris.length, `${what}: one notification per record, got ${fmt(uris.map(lbl))}`)
  for (const [i, n] of body.notifications.entries()) {
    const e = exp[i]
    const w = `${what}: notification ${i} (${notifKey(e)})`
    eq(n.cid, e.cid, `${w}: cid`)
    await checkProfile(n.author, e.author, viewer, `${w}: author`)
    eq(n.record?.$type, collectionOf(e.uri), `${w}: record.$type`)
    if (e.subjects) {
      check(e.subjects.has(n.reasonSubject), `${w}: reasonSubject: expected ${fmt([...e.subjects].map(lbl))}, got ${fmt(n.reasonSubject && lbl(n.reasonSubject))}`)
    } else {
      eq(n.reasonSubject, undefined, `${w}: reasonSubject`)
    }
    eq(n.isRead, isRead, `${w}: isRead`)
  }
  return body.notifications.length
}

/** Polls `probe` (every 100 ms, at most 10 s) until it says the index caught up; errors are fatal. */
async function settle (what, probe) {
  const deadline = Date.now() + SETTLE_MS
  let polls = 0
  for (;;) {
    polls++
    if (await probe()) break
    if (Date.now() > deadline || polls > 200) {
      console.error(`${what}: the index had not caught up after ${SETTLE_MS} ms (${polls} polls); checking anyway`)
      break
    }
    await sleep(100)
  }
  out.settlePolls = (out.settlePolls ?? 0) + polls
}

// ---------------------------------------------------------------------------------------------

try {
  out.clientValidatesResponses = await clientValidatesResponses()
  section('@atproto/api validates every response against its bundled lexicons')

  // Accounts.
  const tag = Date.now().toString(36) + Math.floor(Math.random() * 46656).toString(36)
  for (const name of ['alice', 'bob', 'carol', 'dan']) {
    const agent = new api.AtpAgent({ service })
    const handle = `${name}${tag}.test`
    try {
      const res = await agent.createAccount({ handle, password: PASSWORD, email: `${handle}@mail.test` })
      if (lexcheck) lexcheck.check('com.atproto.server.createAccount', res.data)
    } catch (err) {
      throw new CallFailed('com.atproto.server.createAccount', name, err)
    }
    users[name] = { name, handle, did: agent.session.did, agent }
    byDid.set(agent.session.did, users[name])
  }
  const { alice, bob, carol, dan } = users
  out.accounts = Object.fromEntries(Object.values(users).map((u) => [u.name, { handle: u.handle, did: u.did }]))

  // ------------------------------------------------------------------------------- writes
  await putProfile(alice, { displayName: 'Alice Liddell', description: 'Curiouser and curiouser.' })
  const bobAvatar = await uploadPng(bob, 4, 4, 1)
  await putProfile(bob, { displayName: 'Bob the Builder', avatar: bobAvatar })
  await follow(alice, bob)
  await follow(alice, carol)
  await follow(bob, alice)
  await follow(carol, alice)
  await follow(dan, alice)
  const p1 = await post('p1 bob text', bob, 'Hello from Bob')
  const p2 = await post('p2 carol mentions alice', carol, `Bonjour @${alice.handle}, ça va? ✨`, { mentions: [alice] })
  const carolPic = await uploadPng(carol, 3, 2, 2)
  const cImg = await post('cImg carol image', carol, 'A picture by Carol', { images: [{ ...carolPic, alt: 'stripes by Carol' }] })
  const bobPic = await uploadPng(bob, 6, 4, 3)
  const p3 = await post('p3 bob image', bob, 'A picture by Bob', { images: [{ ...bobPic, alt: 'a gradient, six by four' }] })
  const thumb = await uploadPng(bob, 2, 2, 4)
  const p4 = await post('p4 bob link card', bob, 'Worth reading', {
    external: { uri: 'https://example.com/article', title: 'An article', description: 'What the article is about', thumb },
  })
  await post('d1 dan text', dan, 'Dan was here')
  const r0 = await post('r0 bob thread root', bob, 'Thread root by Bob')
  const r1 = await post('r1 alice replies r0', alice, 'Alice replies', { replyTo: r0 })
  const r2 = await post('r2 bob replies r1', bob, 'Bob answers Alice', { replyTo: r1 })
  const r3 = await post('r3 carol replies r2', carol, 'Carol chimes in', { replyTo: r2 })
  const s0 = await post('s0 alice self-thread 1/3', alice, 'Self-thread 1/3')
  const s1 = await post('s1 alice self-thread 2/3', alice, 'Self-thread 2/3', { replyTo: s0 })
  await post('s2 alice self-thread 3/3', alice, 'Self-thread 3/3', { replyTo: s1 })
  const q = await post('q carol quotes p1', carol, 'Quoting Bob', { quote: p1 })
  await like(alice, p1)
  const carolLikeP1 = await like(carol, p1)
  await like(alice, cImg)
  await repost(alice, p2)
  await repost(bob, cImg)
  await repost(bob, r3)
  await like(bob, s0)
  await repost(carol, s0)
  const a0 = await post('a0 alice question', alice, 'Question for everyone')
  const x1 = await post('x1 bob replies a0, quotes a0, mentions alice', bob, `@${alice.handle} see my answer`, { replyTo: a0, quote: a0, mentions: [alice] })
  await post('x2 carol replies a0, quotes a0', carol, 'Quoting while replying', { replyTo: a0, quote: a0 })
  await post('x3 dan replies x1', dan, 'Dan replies to Bob', { replyTo: x1 })
  const a1 = await post('a1 alice doomed', alice, 'This post will be deleted')
  await like(bob, a1)
  await block(dan, carol)
  await post('x4 carol mentions dan (blocked)', carol, `Hi @${dan.handle}`, { mentions: [dan] })
  await post('x5 bob mentions dan', bob, `Hi @${dan.handle}`, { mentions: [dan] })
  out.writes = { posts: M.posts.size, likes: M.likes.size, reposts: M.reposts.size, follows: M.follows.length, blocks: M.blocks.length }
  section('writes: profiles (one with an avatar), follows, posts (text, mention facets, images, link card, 4-deep reply chain, self-thread, quotes), likes, reposts, a block')

  // ------------------------------------------------------------------------------- reads
  const timelineKeys = async (viewer) => (await xrpc(users[viewer], 'app.bsky.feed.getTimeline', { limit: 100 })).feed.map(gotItemKey)
  const notifKeys = async (viewer) => (await xrpc(users[viewer], 'app.bsky.notification.listNotifications', { limit: 100 })).notifications.map(gotNotifKey)
  const same = (a, b) => a.length === b.length && a.every((x, i) => x === b[i])
  const caughtUp = async () =>
    same(await timelineKeys('alice'), expectedTimeline('alice').map((i) => itemKey(i.kind, i.by, i.subject))) &&
    same(await notifKeys('alice'), expectedNotifications('alice').map(notifKey)) &&
    same(await notifKeys('dan'), expectedNotifications('dan').map(notifKey))
  await settle('after the writes', caughtUp)

  // Timeline.
  {
    const got = await xrpc(alice, 'app.bsky.feed.getTimeline', { limit: 100 })
    await checkFeed(got.feed, expectedTimeline('alice'), 'alice', 'getTimeline as alice')
    const paged = await walkPages(alice, 'app.bsky.feed.getTimeline', {}, 'feed')
    eqList(paged.map(gotItemKey), got.feed.map(gotItemKey), 'getTimeline as alice with limit=1, page by page, against one page of 100')
    section('getTimeline: own and followed accounts\' posts and reposts, newest first, #reasonRepost items, reply refs with grandparentAuthor, counts, viewer.like/repost, avatar bytes, embeds (images, external, record) with blob bytes, limit=1 paging')
  }

  // Author feeds, every filter, every author, as alice.
  const FILTERS = ['posts_with_replies', 'posts_no_replies', 'posts_with_media', 'posts_and_author_threads', 'posts_with_video']
  for (const actor of ['bob', 'alice', 'carol', 'dan']) {
    for (const filter of FILTERS) {
      const got = await xrpc(alice, 'app.bsky.feed.getAuthorFeed', { actor: users[actor].did, filter, limit: 100 })
      await checkFeed(got.feed, expectedAuthorFeed(actor, filter, 'alice'), 'alice', `getAuthorFeed ${actor} ${filter} as alice`)
    }
  }
  {
    // The default filter is posts_with_replies; a handle works as the actor.
    const got = await xrpc(alice, 'app.bsky.feed.getAuthorFeed', { actor: bob.handle, limit: 100 })
    await checkFeed(got.feed, expectedAuthorFeed('bob', 'posts_with_replies', 'alice'), 'alice', 'getAuthorFeed bob (by handle, no filter) as alice')
    check(expectedAuthorFeed('bob', 'posts_with_media', 'alice').length === 1, 'scenario: bob has one media post of his own (a reposted image is not his)')
    check(expectedAuthorFeed('alice', 'posts_and_author_threads', 'alice').some((i) => i.subject === s1.uri) &&
      !expectedAuthorFeed('alice', 'posts_and_author_threads', 'alice').some((i) => i.subject === r1.uri), 'scenario: alice\'s self-thread is in, her reply to bob is out')
    for (const [actor, filter] of [['bob', 'posts_with_replies'], ['bob', 'posts_no_replies'], ['alice', 'posts_with_replies'], ['bob', 'posts_with_media']]) {
      const one = await xrpc(alice, 'app.bsky.feed.getAuthorFeed', { actor: users[actor].did, filter, limit: 100 })
      const paged = await walkPages(alice, 'app.bsky.feed.getAuthorFeed', { actor: users[actor].did, filter }, 'feed')
      eqList(paged.map(gotItemKey), one.feed.map(gotItemKey), `getAuthorFeed ${actor} ${filter} with limit=1, page by page, against one page of 100`)
    }
    await xrpcError(dan, 'app.bsky.feed.getAuthorFeed', { actor: carol.did }, 'BlockedActor', 'getAuthorFeed of carol as dan (dan blocks carol)')
    await xrpcError(carol, 'app.bsky.feed.getAuthorFeed', { actor: dan.did }, 'BlockedByActor', 'getAuthorFeed of dan as carol (dan blocks carol)')
    section('getAuthorFeed: 4 authors x 5 filters (posts_with_replies, posts_no_replies keeps reposts, posts_with_media own image posts only, posts_and_author_threads keeps reposts and whole self-threads, posts_with_video empty), handle as actor, limit=1 paging, BlockedActor / BlockedByActor')
  }

  // Threads.
  await checkPostThread('alice', r0.uri, {}, 'getPostThread r0 as alice')
  await checkPostThread('alice', r0.uri, { depth: 1 }, 'getPostThread r0 depth=1 as alice')
  await checkPostThread('alice', r3.uri, { parentHeight: 2 }, 'getPostThread r3 parentHeight=2 as alice')
  await checkPostThread('alice', r3.uri, {}, 'getPostThread r3 as alice')
  await checkPostThread('dan', r0.uri, {}, 'getPostThread r0 as dan (who blocks carol)')
  await checkPostThread('alice', a0.uri, {}, 'getPostThread a0 as alice')
  section('getPostThread: nested replies, depth=1 cuts (no replies key), parentHeight=2 (two parents), #blockedPost for the blocked account\'s reply')

  // Posts, likes, reposts, quotes.
  {
    const bogus = `at://${bob.did}/app.bsky.feed.post/3zzzzzzzzzzzz`
    const got = await xrpc(alice, 'app.bsky.feed.getPosts', { uris: [p3.uri, bogus, p1.uri, q.uri, p4.uri] })
    eqList(got.posts.map((p) => lbl(p.uri)), [p3, p1, q, p4].map((p) => p.label), 'getPosts (input order, unknown URI left out)')
    for (const [i, pv] of got.posts.entries()) await checkPostView(pv, [p3, p1, q, p4][i].uri, 'alice', `getPosts[${i}]`)

    const likes = await xrpc(alice, 'app.bsky.feed.getLikes', { uri: p1.uri })
    eq(likes.uri, p1.uri, 'getLikes p1: uri')
    const expLikes = [...M.likes.values()].filter((l) => l.subject === p1.uri && !l.deleted).reverse()
    eqList(likes.likes.map((l) => byDid.get(l.actor?.did)?.name), expLikes.map((l) => l.by), 'getLikes p1: who, newest first')
    for (const [i, l] of likes.likes.entries()) {
      await checkProfile(l.actor, expLikes[i].by, 'alice', `getLikes p1 [${i}].actor`)
      eq(l.createdAt, expLikes[i].createdAt, `getLikes p1 [${i}].createdAt`)
    }
    for (const [subject, by] of [[p2, ['alice']], [s0, ['carol']], [cImg, ['bob']]]) {
      const rb = await xrpc(alice, 'app.bsky.feed.getRepostedBy', { uri: subject.uri })
      eq(rb.uri, subject.uri, `getRepostedBy ${subject.label}: uri`)
      eqList(rb.repostedBy.map((a) => byDid.get(a.did)?.name), by, `getRepostedBy ${subject.label}`)
      for (const [i, a] of rb.repostedBy.entries()) await checkProfile(a, by[i], 'alice', `getRepostedBy ${subject.label} [${i}]`)
    }
    for (const [subject, quotes] of [[p1, [q]], [a0, [...M.posts.values()].filter((p) => p.quote === a0.uri).reverse()]]) {
      const qs = await xrpc(alice, 'app.bsky.feed.getQuotes', { uri: subject.uri })
      eq(qs.uri, subject.uri, `getQuotes ${subject.label}: uri`)
      eqList(qs.posts.map((p) => lbl(p.uri)), quotes.map((p) => p.label), `getQuotes ${subject.label}, newest first`)
      for (const [i, pv] of qs.posts.entries()) await checkPostView(pv, quotes[i].uri, 'alice', `getQuotes ${subject.label} [${i}]`)
    }
    const al = await xrpc(alice, 'app.bsky.feed.getActorLikes', { actor: alice.did, limit: 100 })
    const expAl = [...M.likes.values()].filter((l) => l.by === 'alice' && !l.deleted).reverse()
      .map((l) => ({ kind: 'post', by: M.posts.get(l.subject).author, subject: l.subject }))
    await checkFeed(al.feed, expAl, 'alice', 'getActorLikes alice as alice')
    section('getPosts (input order, unknown left out), getLikes (actors, newest first), getRepostedBy, getQuotes, getActorLikes')
  }

  // Profiles, follows, blocks.
  {
    await checkProfile(await xrpc(alice, 'app.bsky.actor.getProfile', { actor: bob.did }), 'bob', 'alice', 'getProfile bob as alice', { detailed: true })
    await checkProfile(await xrpc(alice, 'app.bsky.actor.getProfile', { actor: alice.handle }), 'alice', 'alice', 'getProfile alice (by handle) as alice', { detailed: true })
    const bobSeen = await xrpc(alice, 'app.bsky.actor.getProfile', { actor: bob.did })
    check(bobSeen.viewer?.following && bobSeen.viewer?.followedBy, `getProfile bob as alice: viewer.following and viewer.followedBy both set, got ${fmt(bobSeen.viewer)}`)
    const names = ['alice', 'bob', 'carol', 'dan']
    const ps = await xrpc(alice, 'app.bsky.actor.getProfiles', { actors: names.map((n) => users[n].did) })
    eqList(ps.profiles.map((p) => byDid.get(p.did)?.name), names, 'getProfiles as alice (input order)')
    for (const [i, p] of ps.profiles.entries()) await checkProfile(p, names[i], 'alice', `getProfiles [${names[i]}] as alice`, { detailed: true })
    const carolByDan = await xrpc(dan, 'app.bsky.actor.getProfile', { actor: carol.did })
    await checkProfile(carolByDan, 'carol', 'dan', 'getProfile carol as dan', { detailed: true })
    check(carolByDan.viewer?.blocking, `getProfile carol as dan: viewer.blocking set, got ${fmt(carolByDan.viewer)}`)
    const danByCarol = await xrpc(carol, 'app.bsky.actor.getProfile', { actor: dan.did })
    await checkProfile(danByCarol, 'dan', 'carol', 'getProfile dan as carol', { detailed: true })
    eq(danByCarol.viewer?.blockedBy, true, 'getProfile dan as carol: viewer.blockedBy')

    const fs = await xrpc(alice, 'app.bsky.graph.getFollows', { actor: alice.did, limit: 100 })
    await checkProfile(fs.subject, 'alice', 'alice', 'getFollows alice: subject')
    const expFs = M.follows.filter((f) => f.by === 'alice' && !f.deleted).reverse().map((f) => f.subject)
    eqList(fs.follows.map((p) => byDid.get(p.did)?.name), expFs, 'getFollows alice, newest first')
    for (const [i, p] of fs.follows.entries()) await checkProfile(p, expFs[i], 'alice', `getFollows alice [${i}]`)
    const fr = await xrpc(alice, 'app.bsky.graph.getFollowers', { actor: alice.did, limit: 100 })
    await checkProfile(fr.subject, 'alice', 'alice', 'getFollowers alice: subject')
    const expFr = M.follows.filter((f) => f.subject === 'alice' && !f.deleted).reverse().map((f) => f.by)
    eqList(fr.followers.map((p) => byDid.get(p.did)?.name), expFr, 'getFollowers alice, newest first')
    for (const [i, p] of fr.followers.entries()) await checkProfile(p, expFr[i], 'alice', `getFollowers alice [${i}]`)
    const bl = await xrpc(dan, 'app.bsky.graph.getBlocks', { limit: 100 })
    eqList(bl.blocks.map((p) => byDid.get(p.did)?.name), ['carol'], 'getBlocks as dan')
    await checkProfile(bl.blocks[0], 'carol', 'dan', 'getBlocks as dan [0]')
    section('getProfile / getProfiles: counts, displayName, description, avatar, viewer.following / followedBy / blocking / blockedBy; getFollows, getFollowers, getBlocks')
  }

  // Notifications.
  {
    const n = await checkNotifications('alice', false, 'before updateSeen')
    check(n > 0, 'alice has notifications')
    const unread = await xrpc(alice, 'app.bsky.notification.getUnreadCount', {})
    eq(unread.count, n, 'getUnreadCount of alice before updateSeen')
    const reasons = new Set(expectedNotifications('alice').map((x) => x.reason))
    for (const r of ['follow', 'mention', 'reply', 'quote', 'like', 'repost']) check(reasons.has(r), `scenario: alice has a ${r} notification`)
    await checkNotifications('bob', false, 'bob')
    await checkNotifications('dan', false, 'dan (carol\'s mention hidden: dan blocks her)')
    await sleep(10)
    await xrpc(alice, 'app.bsky.notification.updateSeen', undefined, { seenAt: new Date().toISOString() })
    await checkNotifications('alice', true, 'after updateSeen')
    eq((await xrpc(alice, 'app.bsky.notification.getUnreadCount', {})).count, 0, 'getUnreadCount of alice after updateSeen')
    out.notifications = { alice: n }
    section('listNotifications: follow, mention, reply (every ancestor\'s author, once per post), quote, like, repost; mention > quote > reply; blocked account\'s mention hidden; isRead / getUnreadCount before and after updateSeen')
  }

  // ------------------------------------------------------------------------------- deletes
  await deleteRecord(carol, carolLikeP1)
  await deleteRecord(bob, r2.uri)
  await deleteRecord(alice, a1.uri)
  await settle('after the deletes', async () =>
    (await caughtUp()) &&
    (await xrpc(alice, 'app.bsky.feed.getPosts', { uris: [p1.uri] })).posts[0]?.likeCount === counts(p1.uri).likeCount)
  {
    const got = await xrpc(alice, 'app.bsky.feed.getTimeline', { limit: 100 })
    await checkFeed(got.feed, expectedTimeline('alice'), 'alice', 'getTimeline as alice after the deletes')
    for (const filter of FILTERS) {
      const bf = await xrpc(alice, 'app.bsky.feed.getAuthorFeed', { actor: bob.did, filter, limit: 100 })
      await checkFeed(bf.feed, expectedAuthorFeed('bob', filter, 'alice'), 'alice', `getAuthorFeed bob ${filter} as alice after the deletes`)
    }
    const af = await xrpc(alice, 'app.bsky.feed.getAuthorFeed', { actor: alice.did, limit: 100 })
    await checkFeed(af.feed, expectedAuthorFeed('alice', 'posts_with_replies', 'alice'), 'alice', 'getAuthorFeed alice as alice after the deletes')
    const p1v = (await xrpc(alice, 'app.bsky.feed.getPosts', { uris: [p1.uri] })).posts[0]
    eq(p1v?.likeCount, 1, 'likeCount of p1 after carol deleted her like')
    await checkPostThread('alice', r3.uri, {}, 'getPostThread r3 after bob deleted r2')
    const r3t = await xrpc(alice, 'app.bsky.feed.getPostThread', { uri: r3.uri })
    eq(r3t.thread.parent?.$type, 'app.bsky.feed.defs#notFoundPost', 'getPostThread r3 after r2 was deleted: parent.$type')
    await checkPostThread('alice', r0.uri, {}, 'getPostThread r0 after bob deleted r2')
    await xrpcError(alice, 'app.bsky.feed.getPostThread', { uri: r2.uri }, 'NotFound', 'getPostThread of the deleted r2')
    const likes = await xrpc(alice, 'app.bsky.feed.getLikes', { uri: p1.uri })
    eqList(likes.likes.map((l) => byDid.get(l.actor?.did)?.name), ['alice'], 'getLikes p1 after carol deleted her like')
    const names = ['alice', 'bob', 'carol', 'dan']
    const ps = await xrpc(alice, 'app.bsky.actor.getProfiles', { actors: names.map((x) => users[x].did) })
    for (const [i, p] of ps.profiles.entries()) await checkProfile(p, names[i], 'alice', `getProfiles [${names[i]}] as alice after the deletes`, { detailed: true })
    check(!expectedNotifications('alice').some((x) => x.uri === r2.uri || x.subjects?.has(a1.uri)), 'scenario: r2\'s reply and the like of a1 are gone')
    await checkNotifications('alice', true, 'after the deletes (r2\'s reply gone, the like of the deleted a1 not listed)')
    eq((await xrpc(alice, 'app.bsky.notification.getUnreadCount', {})).count, 0, 'getUnreadCount of alice after the deletes')
    section('deletes: a post leaves timelines and author feeds, replies below show #notFoundPost parents, getPostThread of it is NotFound, a deleted like lowers likeCount, a like of a deleted post is not listed')
  }

  out.lexcheckedBodies = lexcheck ? lexcheck.checked : 0
  out.ok = true
  console.log(JSON.stringify(out))
} catch (err) {
  out.ok = false
  out.error = err instanceof CheckFailed || err instanceof CallFailed
    ? err.message
    : String(err?.stack || err) + (err?.cause ? ' cause: ' + String(err.cause?.message || err.cause) : '')
  console.log(JSON.stringify(out))
  console.error(`FAILED: ${out.error}`)
  process.exit(1)
}
