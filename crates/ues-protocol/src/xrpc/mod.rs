//! The XRPC server AT Protocol clients talk to (`/xrpc/<nsid>`): the `com.atproto.*` methods,
//! the node's own `dev.ues.*` ones, and the `app.bsky.*` calls it forwards to an AppView. Every
//! error is `{"error", "message"}` with the reference PDS's names and statuses; internals are
//! logged, never sent. The handlers stand on [`crate::node`] and on no other face.

mod admin;
pub(crate) mod blob;
mod email;
pub(crate) mod firehose;
mod identity;
pub(crate) mod index;
mod invites;
mod misc;
mod munge;
mod proxy;
pub(crate) mod repo;
pub(crate) mod server;
pub(crate) mod sync;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};

use crate::node::{Node, extract, limits, metrics};

/// The tables of the XRPC face (preferences, moderation reports): apply them with
/// [`Node::migrate`] before serving.
pub const MIGRATIONS: &[ues_sync::repo::ipld::storage::Migration] = misc::MIGRATIONS;

/// The XRPC routes. Starts nothing: see [`crate::node::start_tasks`].
pub fn router(state: Arc<Node>) -> Router {
    router_with(state, Router::new())
}

/// The XRPC routes with more methods (the hosted applications'), served with the same layers:
/// rate limits, parameter validation against their lexicons, metrics.
pub fn router_with(state: Arc<Node>, methods: Router<Arc<Node>>) -> Router {
    let limit = state.cfg.max_body_bytes;
    Router::new()
        .merge(methods)
        .route("/xrpc/com.atproto.server.describeServer", get(server::describe_server))
        .route("/xrpc/com.atproto.server.createAccount", post(server::create_account))
        .route("/xrpc/com.atproto.server.createSession", post(server::create_session))
        .route("/xrpc/com.atproto.server.createInviteCode", post(invites::create_invite_code))
        .route("/xrpc/com.atproto.server.createInviteCodes", post(invites::create_invite_codes))
        .route("/xrpc/com.atproto.server.getAccountInviteCodes", get(invites::get_account_invite_codes))
        .route("/xrpc/com.atproto.admin.getInviteCodes", get(invites::get_invite_codes))
        .route("/xrpc/com.atproto.admin.disableInviteCodes", post(invites::disable_invite_codes))
        .route("/xrpc/com.atproto.admin.disableAccountInvites", post(invites::disable_account_invites))
        .route("/xrpc/com.atproto.admin.enableAccountInvites", post(invites::enable_account_invites))
        .route("/xrpc/com.atproto.server.requestEmailConfirmation", post(email::request_email_confirmation))
        .route("/xrpc/com.atproto.server.confirmEmail", post(email::confirm_email))
        .route("/xrpc/com.atproto.server.requestEmailUpdate", post(email::request_email_update))
        .route("/xrpc/com.atproto.server.updateEmail", post(email::update_email))
        .route("/xrpc/com.atproto.server.requestPasswordReset", post(email::request_password_reset))
        .route("/xrpc/com.atproto.server.resetPassword", post(email::reset_password))
        .route("/xrpc/com.atproto.server.requestAccountDelete", post(email::request_account_delete))
        .route("/xrpc/com.atproto.server.deleteAccount", post(email::delete_account))
        .route("/xrpc/com.atproto.admin.sendEmail", post(email::send_email))
        .route("/xrpc/com.atproto.server.refreshSession", post(server::refresh_session))
        .route("/xrpc/com.atproto.server.getSession", get(server::get_session))
        .route("/xrpc/com.atproto.server.deleteSession", post(server::delete_session))
        .route("/xrpc/com.atproto.server.getServiceAuth", get(server::get_service_auth))
        .route("/xrpc/com.atproto.server.createAppPassword", post(server::create_app_password))
        .route("/xrpc/com.atproto.server.listAppPasswords", get(server::list_app_passwords))
        .route("/xrpc/com.atproto.server.revokeAppPassword", post(server::revoke_app_password))
        .route("/xrpc/com.atproto.identity.resolveHandle", get(server::resolve_handle))
        .route("/xrpc/com.atproto.identity.resolveDid", get(identity::resolve_did))
        .route("/xrpc/com.atproto.identity.resolveIdentity", get(identity::resolve_identity))
        .route("/xrpc/com.atproto.identity.refreshIdentity", post(identity::refresh_identity))
        .route(
            "/xrpc/com.atproto.identity.getRecommendedDidCredentials",
            get(identity::get_recommended_did_credentials),
        )
        .route(
            "/xrpc/com.atproto.identity.requestPlcOperationSignature",
            post(identity::request_plc_operation_signature),
        )
        .route("/xrpc/com.atproto.identity.signPlcOperation", post(identity::sign_plc_operation))
        .route("/xrpc/com.atproto.identity.submitPlcOperation", post(identity::submit_plc_operation))
        .route("/xrpc/com.atproto.server.reserveSigningKey", post(identity::reserve_signing_key))
        .route("/xrpc/com.atproto.temp.checkSignupQueue", get(identity::check_signup_queue))
        .route("/xrpc/com.atproto.temp.checkHandleAvailability", get(identity::check_handle_availability))
        .route("/xrpc/com.atproto.identity.updateHandle", post(server::update_handle))
        .route("/xrpc/com.atproto.server.activateAccount", post(server::activate_account))
        .route("/xrpc/com.atproto.server.deactivateAccount", post(server::deactivate_account))
        .route("/xrpc/com.atproto.server.checkAccountStatus", get(server::check_account_status))
        .route("/xrpc/com.atproto.repo.describeRepo", get(repo::describe_repo))
        .route("/xrpc/com.atproto.repo.createRecord", post(repo::create_record))
        .route("/xrpc/com.atproto.repo.putRecord", post(repo::put_record))
        .route("/xrpc/com.atproto.repo.deleteRecord", post(repo::delete_record))
        .route("/xrpc/com.atproto.repo.getRecord", get(repo::get_record))
        .route("/xrpc/com.atproto.repo.listRecords", get(repo::list_records))
        .route("/xrpc/com.atproto.repo.applyWrites", post(repo::apply_writes))
        .route(
            "/xrpc/com.atproto.repo.uploadBlob",
            post(blob::upload_blob).layer(DefaultBodyLimit::max(state.cfg.max_blob_bytes as usize + 1)),
        )
        .route("/xrpc/com.atproto.repo.listMissingBlobs", get(blob::list_missing_blobs))
        .route(
            "/xrpc/com.atproto.repo.importRepo",
            post(repo::import_repo).layer(DefaultBodyLimit::max(state.cfg.max_blob_bytes as usize)),
        )
        .route("/xrpc/com.atproto.sync.getBlob", get(blob::get_blob))
        .route("/xrpc/com.atproto.sync.listBlobs", get(blob::list_blobs))
        .route("/xrpc/com.atproto.sync.getRepo", get(sync::get_repo))
        .route("/xrpc/com.atproto.sync.getLatestCommit", get(sync::get_latest_commit))
        .route("/xrpc/com.atproto.sync.getHead", get(sync::get_head))
        // Deprecated for getRepo, which answers it (without `since`) as the reference does.
        .route("/xrpc/com.atproto.sync.getCheckout", get(sync::get_repo))
        .route("/xrpc/com.atproto.sync.listReposByCollection", get(sync::list_repos_by_collection))
        .route("/xrpc/com.atproto.sync.getHostStatus", get(sync::get_host_status))
        .route("/xrpc/com.atproto.sync.listHosts", get(sync::list_hosts))
        .route("/xrpc/com.atproto.sync.getRecord", get(sync::get_record))
        .route("/xrpc/com.atproto.sync.listRepos", get(sync::list_repos))
        .route("/xrpc/app.bsky.actor.getPreferences", get(misc::get_preferences))
        .route("/xrpc/app.bsky.actor.putPreferences", post(misc::put_preferences))
        .route("/xrpc/com.atproto.moderation.createReport", post(misc::create_report))
        .route("/xrpc/com.atproto.sync.subscribeRepos", get(firehose::subscribe_repos))
        .route("/xrpc/com.atproto.sync.getRepoStatus", get(sync::get_repo_status))
        .route("/xrpc/com.atproto.sync.getBlocks", get(sync::get_blocks))
        .route("/xrpc/dev.ues.repo.queryIndex", get(index::query_index))
        .route("/xrpc/dev.ues.repo.searchRecords", get(index::search_records))
        .route("/xrpc/dev.ues.repo.listBacklinks", get(index::list_backlinks))
        .route("/xrpc/dev.ues.repo.listRecordsByTime", get(index::list_records_by_time))
        .route("/xrpc/com.atproto.admin.getAccountInfo", get(admin::get_account_info))
        .route("/xrpc/com.atproto.admin.getAccountInfos", get(admin::get_account_infos))
        .route("/xrpc/com.atproto.admin.updateAccountHandle", post(admin::update_account_handle))
        .route("/xrpc/com.atproto.admin.updateAccountPassword", post(admin::update_account_password))
        .route("/xrpc/com.atproto.admin.updateAccountEmail", post(admin::update_account_email))
        .route("/xrpc/com.atproto.admin.getSubjectStatus", get(admin::get_subject_status))
        .route("/xrpc/com.atproto.admin.updateSubjectStatus", post(admin::update_subject_status))
        .route("/xrpc/com.atproto.admin.deleteAccount", post(admin::delete_account))
        .route("/xrpc/com.atproto.admin.searchAccounts", get(admin::search_accounts))
        .route("/xrpc/dev.ues.admin.requestCrawl", post(admin::request_crawl))
        .route(
            "/xrpc/dev.ues.admin.importRepo",
            post(admin::import_repo).layer(DefaultBodyLimit::max(state.cfg.max_blob_bytes as usize)),
        )
        .route("/xrpc/dev.ues.admin.listReports", get(admin::list_reports))
        .route("/xrpc/dev.ues.admin.backup", post(admin::backup))
        .route("/xrpc/dev.ues.admin.getStatus", get(admin::get_status))
        .route("/xrpc/dev.ues.admin.listPeers", get(admin::list_peers))
        .route("/xrpc/dev.ues.admin.connectPeer", post(admin::connect_peer))
        .route("/xrpc/dev.ues.admin.authorizeDevice", post(admin::authorize_device))
        .route("/xrpc/dev.ues.admin.replicate", post(admin::replicate))
        .route("/xrpc/dev.ues.admin.getReplication", get(admin::get_replication))
        .route("/.well-known/atproto-did", get(server::well_known_atproto_did))
        .route("/.well-known/did.json", get(server::well_known_did_json))
        .route("/metrics", get(metrics::render))
        .route("/xrpc/{*method}", axum::routing::any(proxy::fallback))
        .layer(axum::middleware::from_fn_with_state(state.clone(), extract::validate_params))
        .layer(axum::middleware::from_fn_with_state(state.clone(), limits::guard))
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(state.clone(), metrics::track))
        // One span per request (method, path) in the logs, with status and latency at the end.
        .layer(tower_http::trace::TraceLayer::new_for_http())
        // Browser clients call XRPC cross-origin; tokens travel in headers, never cookies.
        .layer(tower_http::cors::CorsLayer::permissive().max_age(std::time::Duration::from_secs(86_400)))
        .with_state(state)
}
