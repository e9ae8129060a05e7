//! did:plc against a real directory: `@did-plc/server` (in-memory) started from `tests/js`.
//! Genesis and update operations built here are accepted, resolved and audited there; a forged
//! one is refused.

#[path = "../../../tests/support/plc.rs"]
mod plc_support;
#[path = "../../../tests/support/shared.rs"]
mod shared;

use ues_repo::crypto::{KeyType, Keypair};
use ues_repo::identity::parse_did_document;
use ues_repo::plc::{Genesis, PlcClient, PlcClientError, operation_cid};
use ues_repo::syntax::Did;

#[test]
fn genesis_update_resolve_audit_and_refusal() {
    let Some(js) = shared::node_tests() else { return };
    let directory = plc_support::start_directory(&js);
    let url = directory.url.clone();
    let client = PlcClient::new(&url);

    let rotation = Keypair::generate(KeyType::K256);
    let signing = Keypair::generate(KeyType::K256);
    let mut state = Genesis {
        rotation_keys: vec![rotation.public().did_key()],
        signing_key: signing.public().did_key(),
        handle: "alice.test".into(),
        pds_endpoint: "http://127.0.0.1:2583".into(),
    };
    let (genesis, did) = state.sign(&rotation).unwrap();
    client.submit(&did, &genesis).unwrap();

    let doc = client.resolve(&did).unwrap();
    let id = parse_did_document(&doc, &Did::new(did.clone()).unwrap()).unwrap();
    assert_eq!(id.handle.unwrap().as_str(), "alice.test");
    assert_eq!(id.signing_key.unwrap(), signing.public());
    assert_eq!(id.pds_endpoint.as_deref(), Some("http://127.0.0.1:2583"));

    // An update signed by the rotation key: new handle.
    state.handle = "alice2.test".into();
    let update = state.update(&operation_cid(&genesis).unwrap().to_string(), &rotation).unwrap();
    client.submit(&did, &update).unwrap();
    let id = parse_did_document(&client.resolve(&did).unwrap(), &Did::new(did.clone()).unwrap()).unwrap();
    assert_eq!(id.handle.unwrap().as_str(), "alice2.test");
    assert_eq!(client.audit_log(&did).unwrap().len(), 2, "the log validates with our validator");

    // An update signed by a key that is not a rotation key is refused by the directory.
    let mallory = Keypair::generate(KeyType::K256);
    state.handle = "mallory.test".into();
    let forged = state.update(&operation_cid(&update).unwrap().to_string(), &mallory).unwrap();
    assert!(matches!(client.submit(&did, &forged), Err(PlcClientError::Refused { status: 400, .. })));
    assert_eq!(client.audit_log(&did).unwrap().len(), 2);
}
