//! Repository import (`com.atproto.repo.importRepo`): any bytes either import a verified
//! repository or fail with an error; never a panic, never an unbounded allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ues_sync::repo::crypto::{KeyType, Keypair};
use ues_sync::repo::ipld::storage::MemoryBlockstore;
use ues_sync::repo::repo::import_car;
use ues_sync::repo::syntax::Did;

fuzz_target!(|data: &[u8]| {
    // A fixed key: random bytes never carry its signature, so this explores the CAR reader, the
    // commit decoder and the DID check in front of the signature.
    let key = Keypair::from_bytes(KeyType::K256, &[7u8; 32]).expect("a valid secret").public();
    let did = Did::new("did:plc:ewvi7nxzyoun6zhxrhs64oiz").expect("a valid DID");
    let _ = import_car(MemoryBlockstore::new(), data, &did, &key);
});
