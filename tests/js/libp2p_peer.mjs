// A js-libp2p peer for the UES interop test:
//   node libp2p_peer.mjs NODE_MULTIADDR DID
// Dials the node over TCP (Noise, Yamux), pings it, waits for identify, subscribes to the
// account's head topic ues/repo/<DID> and prints one JSON line per event on stdout; exits 0 after
// the first announcement arrives, 1 after 90 s without one.
if (!Promise.withResolvers) {
  // Node 20 lacks it; libp2p v3 uses it.
  Promise.withResolvers = function () {
    let resolve, reject
    const promise = new Promise((res, rej) => { resolve = res; reject = rej })
    return { promise, resolve, reject }
  }
}
const { createLibp2p } = await import('libp2p')
const { tcp } = await import('@libp2p/tcp')
const { noise } = await import('@chainsafe/libp2p-noise')
const { yamux } = await import('@chainsafe/libp2p-yamux')
const { identify } = await import('@libp2p/identify')
const { ping } = await import('@libp2p/ping')
const { gossipsub } = await import('@libp2p/gossipsub')
const { multiaddr } = await import('@multiformats/multiaddr')

const [target, did] = process.argv.slice(2)
const say = (o) => console.log(JSON.stringify(o))
const node = await createLibp2p({
  addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
  transports: [tcp()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  services: {
    identify: identify(),
    ping: ping(),
    pubsub: gossipsub({ allowPublishToZeroTopicPeers: true }),
  },
})
const timer = setTimeout(() => { say({ event: 'timeout' }); process.exit(1) }, 90_000)
const topic = `ues/repo/${did}`
node.services.pubsub.subscribe(topic)
node.services.pubsub.addEventListener('message', (evt) => {
  const m = evt.detail
  const text = Buffer.from(m.data).toString('latin1')
  say({ event: 'message', topic: m.topic, from: m.from?.toString(), size: m.data.length, hasDid: text.includes(did) })
  clearTimeout(timer)
  node.stop().then(() => process.exit(0))
})
node.addEventListener('peer:identify', (evt) => {
  const d = evt.detail
  say({ event: 'identify', peer: d.peerId.toString(), agent: d.agentVersion, protocols: d.protocols })
})
say({ event: 'started', peerId: node.peerId.toString(), addrs: node.getMultiaddrs().map(String) })
const ma = multiaddr(target)
await node.dial(ma)
const rtt = await node.services.ping.ping(ma)
say({ event: 'ping', rtt })
