// An independent verifier for the node's W3C Verifiable Credentials (Digital Bazaar's libraries):
// the Rust tests sign with the node's own code and ask this script whether the rest of the world
// agrees.
//
// Reads one JSON request on stdin:
//   {"credential": {...}, "statusLists": {"<url>": <status list credential>}, "now": "<optional>"}
// and prints one line:
//   {"verified": bool, "revoked": bool|null, "error": string|null}
//
// did:key is resolved offline (security-document-loader); the status list URLs are served from the
// request, so nothing touches the network. `revoked` is null when the credential has no
// credentialStatus or its status could not be read. A malformed request exits 2.

import {readFileSync} from 'node:fs';

import * as vc from '@digitalbazaar/vc';
import {DataIntegrityProof} from '@digitalbazaar/data-integrity';
import {createVerifyCryptosuite} from '@digitalbazaar/eddsa-jcs-2022-cryptosuite';
import {securityLoader} from '@digitalbazaar/security-document-loader';
import {checkStatus} from '@digitalbazaar/vc-bitstring-status-list';

function message(error) {
  if(!error) {
    return null;
  }
  if(Array.isArray(error)) {
    return error.map(message).join('; ');
  }
  if(error.errors) {
    return message(error.errors);
  }
  const cause = error.cause ? ` (cause: ${message(error.cause)})` : '';
  return `${error.message ?? String(error)}${cause}`;
}

// The first error anywhere in a verifyCredential result.
function firstError(result) {
  if(result.error) {
    return message(result.error);
  }
  for(const r of result.results ?? []) {
    if(r.error) {
      return message(r.error);
    }
  }
  if(result.statusResult && !result.statusResult.verified) {
    return message(result.statusResult.error) ??
      message(result.statusResult.results?.find(r => r.error)?.error) ??
      'status check failed';
  }
  return null;
}

async function main() {
  let request;
  try {
    request = JSON.parse(readFileSync(0, 'utf8'));
  } catch(e) {
    process.stderr.write(`vc_verify: bad request: ${e.message}\n`);
    process.exit(2);
  }
  const {credential, statusLists = {}, now} = request;
  if(!credential || typeof credential !== 'object') {
    process.stderr.write('vc_verify: bad request: "credential" must be an object\n');
    process.exit(2);
  }

  const baseLoader = securityLoader().build();
  const documentLoader = async url => {
    if(Object.hasOwn(statusLists, url)) {
      // A copy: verifying the list must not change what a later load returns.
      return {contextUrl: null, documentUrl: url, document: structuredClone(statusLists[url])};
    }
    return baseLoader(url);
  };
  const suite = new DataIntegrityProof({cryptosuite: createVerifyCryptosuite()});

  const options = {credential, suite, documentLoader, checkStatus};
  if(now) {
    options.now = now;
  }
  const result = await vc.verifyCredential(options);

  let revoked = null;
  const status = result.statusResult?.results?.[0];
  if(status && status.verified && typeof status.status === 'boolean') {
    revoked = status.status;
  }
  const out = {
    verified: result.verified === true,
    revoked,
    error: result.verified === true ? null : (firstError(result) ?? 'not verified'),
  };
  process.stdout.write(JSON.stringify(out) + '\n');
}

main().catch(e => {
  process.stdout.write(JSON.stringify({verified: false, revoked: null, error: message(e)}) + '\n');
});
