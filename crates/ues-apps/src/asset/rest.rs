//! The registry over REST (`/api/v1/assets/...`): each route mirrors one XRPC method.

use std::sync::Arc;

use axum::Router;
use axum::http::HeaderMap;
use futures::future::BoxFuture;
use serde_json::Value;
use ues_protocol::node::Node;

use super::Asset;
use crate::mirror::{self, Answer, Input, Mirrored, Route};

/// The registry's method lexicons, for the OpenAPI document.
const LEXICONS: &[&str] = &[
    include_str!("../../../../lexicons/dev/ues/asset/createClass.json"),
    include_str!("../../../../lexicons/dev/ues/asset/mint.json"),
    include_str!("../../../../lexicons/dev/ues/asset/transfer.json"),
    include_str!("../../../../lexicons/dev/ues/asset/burn.json"),
    include_str!("../../../../lexicons/dev/ues/asset/approve.json"),
    include_str!("../../../../lexicons/dev/ues/asset/getClass.json"),
    include_str!("../../../../lexicons/dev/ues/asset/getBalance.json"),
    include_str!("../../../../lexicons/dev/ues/asset/listTokens.json"),
    include_str!("../../../../lexicons/dev/ues/asset/getHistory.json"),
    include_str!("../../../../lexicons/dev/ues/asset/verifyLedger.json"),
    include_str!("../../../../lexicons/dev/ues/asset/createListing.json"),
    include_str!("../../../../lexicons/dev/ues/asset/cancelListing.json"),
    include_str!("../../../../lexicons/dev/ues/asset/buyListing.json"),
    include_str!("../../../../lexicons/dev/ues/asset/getListings.json"),
    include_str!("../../../../lexicons/dev/ues/contract/instantiate.json"),
    include_str!("../../../../lexicons/dev/ues/contract/execute.json"),
    include_str!("../../../../lexicons/dev/ues/contract/query.json"),
];

const ROUTES: &[Route] = &[
    ("post", "/api/v1/assets/classes", "dev.ues.asset.createClass", &[]),
    ("post", "/api/v1/assets/mint", "dev.ues.asset.mint", &[]),
    ("post", "/api/v1/assets/transfer", "dev.ues.asset.transfer", &[]),
    ("post", "/api/v1/assets/burn", "dev.ues.asset.burn", &[]),
    ("post", "/api/v1/assets/approve", "dev.ues.asset.approve", &[]),
    ("get", "/api/v1/assets/class", "dev.ues.asset.getClass", &[]),
    ("get", "/api/v1/assets/balance", "dev.ues.asset.getBalance", &[]),
    ("get", "/api/v1/assets/tokens", "dev.ues.asset.listTokens", &[]),
    ("get", "/api/v1/assets/history", "dev.ues.asset.getHistory", &[]),
    ("get", "/api/v1/assets/verify", "dev.ues.asset.verifyLedger", &[]),
    ("post", "/api/v1/assets/listings", "dev.ues.asset.createListing", &[]),
    ("get", "/api/v1/assets/listings", "dev.ues.asset.getListings", &[]),
    ("post", "/api/v1/assets/listings/{listingId}/cancel", "dev.ues.asset.cancelListing", &["listingId"]),
    ("post", "/api/v1/assets/listings/{listingId}/buy", "dev.ues.asset.buyListing", &["listingId"]),
    ("post", "/api/v1/contracts/instances", "dev.ues.contract.instantiate", &[]),
    ("post", "/api/v1/contracts/execute", "dev.ues.contract.execute", &[]),
    ("get", "/api/v1/contracts/query", "dev.ues.contract.query", &[]),
];

fn public(nsid: &str) -> bool {
    matches!(
        nsid,
        "dev.ues.asset.getClass"
            | "dev.ues.asset.getBalance"
            | "dev.ues.asset.listTokens"
            | "dev.ues.asset.getHistory"
            | "dev.ues.asset.verifyLedger"
            | "dev.ues.asset.getListings"
            | "dev.ues.contract.query"
    )
}

impl Mirrored for Asset {
    fn dispatch(self: Arc<Self>, headers: HeaderMap, nsid: &'static str, input: Input) -> BoxFuture<'static, Answer> {
        Box::pin(async move {
            match input {
                Input::Params(p) => match nsid {
                    "dev.ues.asset.getClass" => super::get_class(self, headers, p).await,
                    "dev.ues.asset.getBalance" => super::get_balance(self, headers, p).await,
                    "dev.ues.asset.listTokens" => super::list_tokens(self, headers, p).await,
                    "dev.ues.asset.getHistory" => super::get_history(self, headers, p).await,
                    "dev.ues.asset.getListings" => super::get_listings(self, headers, p).await,
                    "dev.ues.contract.query" => super::contract_query(self, headers, p).await,
                    _ => super::verify_ledger(self, headers, p).await,
                },
                Input::Body(body) => match nsid {
                    "dev.ues.asset.createClass" => super::create_class(self, headers, body).await,
                    "dev.ues.contract.instantiate" => super::instantiate(self, headers, body).await,
                    _ => super::operate(self, headers, nsid, body).await,
                },
            }
        })
    }

    fn public(&self, nsid: &str) -> bool {
        public(nsid)
    }
}

/// The REST routes.
pub(super) fn routes(app: Arc<Asset>, node: Arc<Node>) -> Router {
    mirror::routes(app, node, ROUTES)
}

/// The OpenAPI `paths` of the registry's REST routes, from its lexicons.
pub(super) fn openapi() -> Value {
    mirror::openapi(LEXICONS, ROUTES, "assets", public)
}
