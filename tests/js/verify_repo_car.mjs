// Verifies a repository CAR with Bluesky's own implementation (@atproto/repo):
//   node verify_repo_car.mjs FILE.car DID DID_KEY
// Prints a JSON summary and exits 0 when the CAR verifies, 1 (with the error) when it does not.
import { readFileSync } from 'node:fs'
import repo from '@atproto/repo'

const [file, did, key] = process.argv.slice(2)
try {
  const verified = await repo.verifyRepoCar(new Uint8Array(readFileSync(file)), did, key)
  console.log(JSON.stringify({
    ok: true,
    records: verified.creates.length,
    rev: verified.commit.rev,
    commit: verified.commit.cid.toString(),
  }))
} catch (err) {
  console.log(JSON.stringify({ ok: false, error: String(err && err.message || err) }))
  process.exit(1)
}
