// Validates XRPC output bodies against the reference lexicons of ../shared (the ones the node
// is built to), independently of the copies bundled in @atproto/api:
//   const lc = loadLexicons('/path/to/shared/reference/atproto-lexicons')
//   lc.check('app.bsky.feed.getTimeline', body)   // throws on the first violation
// Every *.json under the folder is added to @atproto/lexicon's `Lexicons`; a document the library
// cannot load (a type it does not know, such as `permission-set` in older versions) is skipped
// and counted, not fatal. An NSID absent from the folder is an error: the scenario only calls
// methods the reference defines.
import { readdirSync, readFileSync, statSync } from 'node:fs'
import { join } from 'node:path'
import lexicon from '@atproto/lexicon'

const MAX_FILES = 5000
const MAX_DEPTH = 16

/** Loads every lexicon document under `dir`: `{ loaded, skipped, skippedFiles, checked, check }`. */
export function loadLexicons (dir) {
  const lex = new lexicon.Lexicons()
  const files = []
  const walk = (d, depth) => {
    if (depth > MAX_DEPTH) throw new Error(`lexcheck: ${d} is nested deeper than ${MAX_DEPTH}`)
    for (const name of readdirSync(d).sort()) {
      const p = join(d, name)
      if (statSync(p).isDirectory()) walk(p, depth + 1)
      else if (name.endsWith('.json')) {
        files.push(p)
        if (files.length > MAX_FILES) throw new Error(`lexcheck: more than ${MAX_FILES} files under ${dir}`)
      }
    }
  }
  walk(dir, 0)
  if (files.length === 0) throw new Error(`lexcheck: no lexicon JSON under ${dir}`)
  const skippedFiles = []
  let loaded = 0
  for (const file of files) {
    let doc
    try {
      doc = JSON.parse(readFileSync(file, 'utf8'))
    } catch (err) {
      throw new Error(`lexcheck: ${file} is not JSON: ${err.message}`)
    }
    try {
      lex.add(doc)
      loaded++
    } catch (err) {
      skippedFiles.push({ file, type: doc?.defs?.main?.type, why: String(err.message).slice(0, 200) })
    }
  }
  const out = {
    lexicons: lex,
    loaded,
    skipped: skippedFiles.length,
    skippedFiles,
    checked: 0,
    /** Throws unless `body` is a valid output of the query or procedure `nsid`. */
    check (nsid, body) {
      try {
        lex.assertValidXrpcOutput(nsid, body)
      } catch (err) {
        throw new Error(`${nsid}: the answer does not match the reference lexicon: ${err.message}\nbody: ${JSON.stringify(body).slice(0, 2000)}`)
      }
      out.checked++
    },
  }
  return out
}
