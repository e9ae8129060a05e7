//! The chat over REST (`/api/v1/chat/...`): each route mirrors one XRPC method, takes the
//! same input (checked against the method's lexicon), runs the same handler and answers the
//! same JSON; the OpenAPI operations are made from the same lexicons.

use std::sync::Arc;

use axum::Router;
use axum::http::HeaderMap;
use futures::future::BoxFuture;
use serde_json::Value;
use ues_protocol::node::Node;

use super::Chat;
use crate::mirror::{self, Answer, Input, Mirrored, Route};

/// The chat's lexicons, for the OpenAPI document.
const LEXICONS: &[&str] = &[
    include_str!("../../../../lexicons/dev/ues/chat/uploadKeys.json"),
    include_str!("../../../../lexicons/dev/ues/chat/queryKeys.json"),
    include_str!("../../../../lexicons/dev/ues/chat/claimKeys.json"),
    include_str!("../../../../lexicons/dev/ues/chat/sendToDevice.json"),
    include_str!("../../../../lexicons/dev/ues/chat/getInbox.json"),
    include_str!("../../../../lexicons/dev/ues/chat/ackInbox.json"),
    include_str!("../../../../lexicons/dev/ues/chat/createConvo.json"),
    include_str!("../../../../lexicons/dev/ues/chat/listConvos.json"),
    include_str!("../../../../lexicons/dev/ues/chat/sendMessage.json"),
    include_str!("../../../../lexicons/dev/ues/chat/getMessages.json"),
    include_str!("../../../../lexicons/dev/ues/chat/addMember.json"),
    include_str!("../../../../lexicons/dev/ues/chat/removeMember.json"),
    include_str!("../../../../lexicons/dev/ues/chat/leaveConvo.json"),
];

/// (HTTP method, path, XRPC method, the input fields the path carries).
const ROUTES: &[Route] = &[
    ("post", "/api/v1/chat/keys", "dev.ues.chat.uploadKeys", &[]),
    ("get", "/api/v1/chat/keys/{did}", "dev.ues.chat.queryKeys", &["did"]),
    ("post", "/api/v1/chat/keys/{did}/{deviceId}/claim", "dev.ues.chat.claimKeys", &["did", "deviceId"]),
    ("post", "/api/v1/chat/to-device", "dev.ues.chat.sendToDevice", &[]),
    ("get", "/api/v1/chat/inbox/{deviceId}", "dev.ues.chat.getInbox", &["deviceId"]),
    ("post", "/api/v1/chat/inbox/{deviceId}/ack", "dev.ues.chat.ackInbox", &["deviceId"]),
    ("post", "/api/v1/chat/convos", "dev.ues.chat.createConvo", &[]),
    ("get", "/api/v1/chat/convos", "dev.ues.chat.listConvos", &[]),
    ("post", "/api/v1/chat/convos/{convoId}/messages", "dev.ues.chat.sendMessage", &["convoId"]),
    ("get", "/api/v1/chat/convos/{convoId}/messages", "dev.ues.chat.getMessages", &["convoId"]),
    ("post", "/api/v1/chat/convos/{convoId}/members", "dev.ues.chat.addMember", &["convoId"]),
    ("delete", "/api/v1/chat/convos/{convoId}/members/{did}", "dev.ues.chat.removeMember", &["convoId", "did"]),
    ("post", "/api/v1/chat/convos/{convoId}/leave", "dev.ues.chat.leaveConvo", &["convoId"]),
];

impl Mirrored for Chat {
    fn dispatch(self: Arc<Self>, headers: HeaderMap, nsid: &'static str, input: Input) -> BoxFuture<'static, Answer> {
        Box::pin(async move {
            match input {
                Input::Params(p) => match nsid {
                    "dev.ues.chat.queryKeys" => super::query_keys(self, headers, p).await,
                    "dev.ues.chat.getInbox" => super::get_inbox(self, headers, p).await,
                    "dev.ues.chat.listConvos" => super::list_convos(self, headers, p).await,
                    _ => super::get_messages(self, headers, p).await,
                },
                Input::Body(body) => match nsid {
                    "dev.ues.chat.uploadKeys" => super::upload_keys(self, headers, body).await,
                    "dev.ues.chat.claimKeys" => super::claim_keys(self, headers, body).await,
                    "dev.ues.chat.sendToDevice" => super::send_to_device(self, headers, body).await,
                    "dev.ues.chat.ackInbox" => super::ack_inbox(self, headers, body).await,
                    "dev.ues.chat.createConvo" => super::create_convo(self, headers, body).await,
                    "dev.ues.chat.sendMessage" => super::send_message(self, headers, body).await,
                    "dev.ues.chat.addMember" => super::add_member(self, headers, body).await,
                    "dev.ues.chat.removeMember" => super::remove_member(self, headers, body).await,
                    _ => super::leave_convo(self, headers, body).await,
                },
            }
        })
    }
}

/// The REST routes.
pub(super) fn routes(app: Arc<Chat>, node: Arc<Node>) -> Router {
    mirror::routes(app, node, ROUTES)
}

/// The OpenAPI `paths` of the chat's REST routes, from its lexicons.
pub(super) fn openapi() -> Value {
    mirror::openapi(LEXICONS, ROUTES, "chat", |_| false)
}
