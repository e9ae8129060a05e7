// Bluesky's own OAuth client (@atproto/oauth-client-node) against a running UES node, with a
// real headless Chromium (playwright-core) as the user's browser:
//
//   node oauth_e2e.mjs <node base URL> <handle> <password> <plc directory URL> <screenshot dir>
//
// The client resolves the handle (through the node's resolveHandle) and the DID (through the
// PLC directory), finds the node's authorization server from its protected-resource metadata,
// pushes its request; the browser signs in and consents on the node's page; the client
// exchanges the code, writes and reads a record with its DPoP-bound token, refreshes it; the
// browser signs in to the account page and revokes the app; the client's next call is refused.
// Prints one JSON line of what happened; exits non-zero on the first step that fails.
import http from 'node:http'
import fs from 'node:fs'
import path from 'node:path'
import { NodeOAuthClient } from '@atproto/oauth-client-node'
import { Agent } from '@atproto/api'
import { chromium } from 'playwright-core'

const [base, handle, password, plcUrl, shots] = process.argv.slice(2)
const out = {}
const step = (name, value = true) => {
  out[name] = value
  console.error(`oauth e2e: ${name}`)
}
const deadline = (ms, what) =>
  new Promise((_, reject) => setTimeout(() => reject(new Error(`timed out: ${what}`)), ms))

// Where the browser comes back to: a one-shot HTTP server on loopback.
let resolveCallback
const callbackParams = new Promise((r) => (resolveCallback = r))
const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://127.0.0.1')
  if (url.pathname === '/callback') {
    resolveCallback(url.searchParams)
    res.writeHead(200, { 'content-type': 'text/plain' })
    res.end('Signed in; you may close this window.')
  } else {
    res.writeHead(404)
    res.end()
  }
})
await new Promise((r) => server.listen(0, '127.0.0.1', r))
const redirectUri = `http://127.0.0.1:${server.address().port}/callback`
const scope = 'atproto transition:generic'

const memory = () => {
  const m = new Map()
  return { get: async (k) => m.get(k), set: async (k, v) => void m.set(k, v), del: async (k) => void m.delete(k) }
}
// The client's requests to the token endpoint, as the server answered them: a refresh is
// counted from what went over the wire, not from what the client reports.
const refreshes = []
const countingFetch = async (input, init) => {
  const request = new Request(input, init)
  const body = request.url.endsWith('/oauth/token') ? await request.clone().text() : ''
  const response = await fetch(request)
  if (body.includes('grant_type=refresh_token')) refreshes.push(response.status)
  return response
}
let locked = Promise.resolve()
const client = new NodeOAuthClient({
  clientMetadata: {
    client_id: `http://localhost?redirect_uri=${encodeURIComponent(redirectUri)}&scope=${encodeURIComponent(scope)}`,
    redirect_uris: [redirectUri],
    scope,
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    application_type: 'native',
    token_endpoint_auth_method: 'none',
    dpop_bound_access_tokens: true,
  },
  stateStore: memory(),
  sessionStore: memory(),
  handleResolver: base,
  plcDirectoryUrl: plcUrl,
  allowHttp: true,
  fetch: countingFetch,
  // One process: a promise chain is lock enough.
  requestLock: (_key, fn) => {
    const run = locked.then(fn)
    locked = run.catch(() => {})
    return run
  },
})

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
})
try {
  const page = await browser.newPage({ viewport: { width: 560, height: 900 } })

  const url = await client.authorize(handle, { scope })
  step('pushed', url.searchParams.get('request_uri')?.startsWith('urn:ietf:params:oauth:request_uri:'))
  await page.goto(url.href)
  // The login hint the client sent is already filled in.
  step('hinted', await page.inputValue('#identifier'))
  await page.fill('#password', password)
  step('consent_lists', await page.locator('main ul li').allInnerTexts())
  await page.screenshot({ path: path.join(shots, 'oauth-consent.png'), fullPage: true })
  await page.getByRole('button', { name: 'Allow' }).click()
  const params = await Promise.race([callbackParams, deadline(30_000, 'the redirect back to the client')])
  step('redirected_with_iss', params.get('iss'))

  const { session } = await client.callback(params)
  step('session_sub', session.did)
  const agent = new Agent(session)
  const made = await agent.com.atproto.repo.createRecord({
    repo: session.did,
    collection: 'app.bsky.feed.post',
    record: { $type: 'app.bsky.feed.post', text: 'written through OAuth', createdAt: new Date().toISOString() },
  })
  step('created', made.data.uri)
  const rkey = made.data.uri.split('/').pop()
  const read = await agent.com.atproto.repo.getRecord({ repo: session.did, collection: 'app.bsky.feed.post', rkey })
  step('read_back', read.data.value.text)
  const me = await agent.com.atproto.server.getSession()
  step('session_handle', me.data.handle)

  // A refresh (forced), then a write with the new access token.
  await session.getTokenInfo(true)
  step('refreshes_answered', refreshes.slice())
  const again = await agent.com.atproto.repo.createRecord({
    repo: session.did,
    collection: 'app.bsky.feed.post',
    record: { $type: 'app.bsky.feed.post', text: 'after a refresh', createdAt: new Date().toISOString() },
  })
  step('created_after_refresh', again.data.uri)

  // The user revokes the app from the account page.
  await page.goto(`${base}/account`)
  await page.fill('#identifier', handle)
  await page.fill('#password', password)
  await page.getByRole('button', { name: 'Sign in' }).click()
  await page.waitForURL(`${base}/account`)
  const apps = await page.locator('section.app').count()
  step('apps_listed', apps)
  await page.screenshot({ path: path.join(shots, 'oauth-account.png'), fullPage: true })
  await page.locator('section.app button').first().click()
  await page.waitForURL(/revoked=1/)
  step('revoked_note', await page.locator('[role=status]').innerText())
  step('apps_after_revoke', await page.locator('section.app').count())

  try {
    await agent.com.atproto.repo.createRecord({
      repo: session.did,
      collection: 'app.bsky.feed.post',
      record: { $type: 'app.bsky.feed.post', text: 'must not land', createdAt: new Date().toISOString() },
    })
    step('refused_after_revoke', false)
  } catch (e) {
    step('refused_after_revoke', String(e?.message ?? e))
  }
} finally {
  await browser.close()
  server.close()
}
fs.writeSync(1, JSON.stringify(out) + '\n')
process.exit(0)
