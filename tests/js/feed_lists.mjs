// Lists and custom feeds through Bluesky's official client, against a node serving its own
// AppView (dev.ues.feed):
//   node --experimental-websocket feed_lists.mjs http://127.0.0.1:PORT [SHARED_LEXICONS_DIR]
// Two accounts; ann makes a curate list with two members, a feed generator record hosted by the
// node ("dev.ues.feed.algorithm": posts matching "rust" by those ann follows) and another
// ("posts liked most in the last 24 hours by those ann follows"); bob posts and likes. Checks
// getLists, getList, getFeedGenerator(s), getFeed (both feeds, paged), UnknownFeed for a
// generator the node does not compute; searchPosts, searchActors and the typeahead; every body is validated by the client and, with the
// shared lexicons, by @atproto/lexicon. Prints one JSON line; exits non-zero on the first failure.
import api from '@atproto/api'
import { loadLexicons } from './lexcheck.mjs'

const [service, sharedLexicons] = process.argv.slice(2)
const check = (cond, what) => { if (!cond) throw new Error(`check failed: ${what}`) }
const lc = sharedLexicons ? loadLexicons(sharedLexicons) : null
if (!lc) console.error('!!!!!!!! SKIPPED: no shared lexicons; bodies validated by the client only !!!!!!!!')
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))
const out = { checks: 0 }
const ok = (cond, what) => { check(cond, what); out.checks++ }
const tag = Date.now().toString(36)

async function account (name) {
  const agent = new api.AtpAgent({ service })
  await agent.createAccount({ handle: `${name}${tag}.test`, password: 'a long password', email: `${name}${tag}@x.test` })
  return agent
}
const now = () => new Date().toISOString()
async function create (agent, collection, record) {
  const r = await agent.com.atproto.repo.createRecord({ repo: agent.session.did, collection, record: { $type: collection, ...record } })
  await sleep(5)
  return r.data
}
/** Calls an app.bsky query as `agent`, validating the body with the shared lexicons too. */
async function q (agent, nsid, params) {
  const parts = nsid.split('.')
  const fn = parts.slice(0, -1).reduce((o, k) => o[k], agent)[parts[parts.length - 1]]
  const res = await fn.call(parts.slice(0, -1).reduce((o, k) => o[k], agent), params)
  if (lc) lc.check(nsid, res.data)
  return res.data
}
/** Waits (at most 10 s) until the node's feed index has caught up. */
async function caughtUp () {
  for (let i = 0; i < 200; i++) {
    const r = await fetch(`${service}/xrpc/dev.ues.feed.getStatus`)
    if ((await r.json()).caughtUp) return
    await sleep(50)
  }
  throw new Error('the feed did not catch up within 10 s')
}

try {
  const desc = await fetch(`${service}/xrpc/com.atproto.server.describeServer`).then((r) => r.json())
  const ann = await account('ann')
  const bob = await account('bob')
  const cid = await account('cid')
  await create(ann, 'app.bsky.graph.follow', { subject: bob.session.did, createdAt: now() })
  const list = await create(ann, 'app.bsky.graph.list', { name: 'Rustaceans', purpose: 'app.bsky.graph.defs#curatelist', description: 'people who write Rust', createdAt: now() })
  const item1 = await create(ann, 'app.bsky.graph.listitem', { subject: bob.session.did, list: list.uri, createdAt: now() })
  const item2 = await create(ann, 'app.bsky.graph.listitem', { subject: cid.session.did, list: list.uri, createdAt: now() })
  const search = await create(ann, 'app.bsky.feed.generator', {
    did: desc.did, displayName: 'Rust from friends', description: 'posts about rust by people I follow', createdAt: now(),
    'dev.ues.feed.algorithm': { kind: 'followsSearch', q: 'rust' },
  })
  const top = await create(ann, 'app.bsky.feed.generator', {
    did: desc.did, displayName: 'Liked by friends', createdAt: now(),
    'dev.ues.feed.algorithm': { kind: 'followsTopLiked', hours: 24 },
  })
  const elsewhere = await create(ann, 'app.bsky.feed.generator', { did: 'did:web:feeds.example.com', displayName: 'Not here', createdAt: now() })
  const b1 = await create(bob, 'app.bsky.feed.post', { text: 'I like Rust a lot', createdAt: now() })
  const b2 = await create(bob, 'app.bsky.feed.post', { text: 'lunch time', createdAt: now() })
  const b3 = await create(bob, 'app.bsky.feed.post', { text: 'rust and sqlite', createdAt: now() })
  const c1 = await create(cid, 'app.bsky.feed.post', { text: 'rust from a stranger', createdAt: now() })
  // Likes by those ann follows (bob) and by ann: b2 twice, b1 once; c1 liked by cid (not followed).
  await create(bob, 'app.bsky.feed.like', { subject: { uri: b2.uri, cid: b2.cid }, createdAt: now() })
  await create(ann, 'app.bsky.feed.like', { subject: { uri: b2.uri, cid: b2.cid }, createdAt: now() })
  await create(ann, 'app.bsky.feed.like', { subject: { uri: b1.uri, cid: b1.cid }, createdAt: now() })
  await create(cid, 'app.bsky.feed.like', { subject: { uri: c1.uri, cid: c1.cid }, createdAt: now() })
  await create(bob, 'app.bsky.feed.like', { subject: { uri: search.uri, cid: search.cid }, createdAt: now() })
  await caughtUp()

  const lists = await q(ann, 'app.bsky.graph.getLists', { actor: ann.session.did })
  ok(lists.lists.length === 1 && lists.lists[0].uri === list.uri, `getLists: ${JSON.stringify(lists)}`)
  ok(lists.lists[0].listItemCount === 2 && lists.lists[0].name === 'Rustaceans', 'listView counts and name')
  const mod = await q(ann, 'app.bsky.graph.getLists', { actor: ann.session.did, purposes: ['modlist'] })
  ok(mod.lists.length === 0, 'purposes filter')
  const got = await q(bob, 'app.bsky.graph.getList', { list: list.uri })
  ok(got.list.uri === list.uri, 'getList list')
  ok(got.items.map((i) => i.uri).join() === [item2.uri, item1.uri].join(), `getList items newest first: ${JSON.stringify(got.items)}`)
  ok(got.items[1].subject.did === bob.session.did, 'getList subject')
  const page1 = await q(bob, 'app.bsky.graph.getList', { list: list.uri, limit: 1 })
  const page2 = await q(bob, 'app.bsky.graph.getList', { list: list.uri, limit: 1, cursor: page1.cursor })
  ok(page1.items[0].uri === item2.uri && page2.items[0].uri === item1.uri, 'getList pages')
  const profile = await q(bob, 'app.bsky.actor.getProfile', { actor: ann.session.did })
  ok(profile.associated.lists === 1 && profile.associated.feedgens === 3, `associated: ${JSON.stringify(profile.associated)}`)

  const gen = await q(bob, 'app.bsky.feed.getFeedGenerator', { feed: search.uri })
  ok(gen.isOnline && gen.isValid && gen.view.did === desc.did && gen.view.likeCount === 1, `getFeedGenerator: ${JSON.stringify(gen)}`)
  ok(gen.view.viewer.like && gen.view.viewer.like.startsWith(`at://${bob.session.did}/app.bsky.feed.like/`), 'viewer.like on the generator')
  const away = await q(bob, 'app.bsky.feed.getFeedGenerator', { feed: elsewhere.uri })
  ok(!away.isOnline && !away.isValid, 'a generator served elsewhere is not online here')
  const gens = await q(bob, 'app.bsky.feed.getFeedGenerators', { feeds: [top.uri, search.uri] })
  ok(gens.feeds.map((f) => f.uri).join() === [top.uri, search.uri].join(), 'getFeedGenerators in order')

  const s = await q(ann, 'app.bsky.feed.getFeed', { feed: search.uri })
  ok(s.feed.map((f) => f.post.uri).join() === [b3.uri, b1.uri].join(), `followsSearch: ${JSON.stringify(s.feed.map((f) => f.post.record.text))}`)
  const s1 = await q(ann, 'app.bsky.feed.getFeed', { feed: search.uri, limit: 1 })
  const s2 = await q(ann, 'app.bsky.feed.getFeed', { feed: search.uri, limit: 1, cursor: s1.cursor })
  ok(s1.feed[0].post.uri === b3.uri && s2.feed[0].post.uri === b1.uri, 'followsSearch pages')
  const t = await q(ann, 'app.bsky.feed.getFeed', { feed: top.uri })
  ok(t.feed.map((f) => f.post.uri).join() === [b2.uri, b1.uri].join(), `followsTopLiked: ${JSON.stringify(t.feed.map((f) => f.post.record.text))}`)
  ok(t.feed[0].post.likeCount === 2 && t.feed[0].post.viewer.like, 'ranked post hydrated for the viewer')
  let unknown = null
  try { await q(ann, 'app.bsky.feed.getFeed', { feed: elsewhere.uri }) } catch (e) { unknown = e }
  ok(unknown && unknown.error === 'UnknownFeed', `UnknownFeed: ${unknown}`)
  // Search: posts (newest first, by author), actors (handle, display name), typeahead.
  const found = await q(ann, 'app.bsky.feed.searchPosts', { q: 'rust' })
  ok(found.posts.map((p) => p.uri).join() === [c1.uri, b3.uri, b1.uri].join(), `searchPosts: ${JSON.stringify(found.posts.map((p) => p.record.text))}`)
  const byBob = await q(ann, 'app.bsky.feed.searchPosts', { q: 'rust', author: bob.session.did, limit: 1 })
  const byBob2 = await q(ann, 'app.bsky.feed.searchPosts', { q: 'rust', author: bob.session.did, limit: 1, cursor: byBob.cursor })
  ok(byBob.posts[0].uri === b3.uri && byBob2.posts[0].uri === b1.uri, 'searchPosts by author, paged')
  const actors = await q(bob, 'app.bsky.actor.searchActors', { q: `ann${tag}` })
  ok(actors.actors.length === 1 && actors.actors[0].did === ann.session.did, `searchActors: ${JSON.stringify(actors)}`)
  const ahead = await q(bob, 'app.bsky.actor.searchActorsTypeahead', { q: `bo` })
  ok(ahead.actors.some((a) => a.did === bob.session.did) && !ahead.actors.some((a) => a.did === ann.session.did), `typeahead: ${JSON.stringify(ahead)}`)
  out.lexcheck = lc ? 'checked' : 'SKIPPED'
  console.log(JSON.stringify(out))
} catch (e) {
  console.error(e.stack || String(e))
  console.log(JSON.stringify({ ...out, error: String(e.message || e) }))
  process.exit(1)
}
