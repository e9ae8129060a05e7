//! OAuth scopes as the AT Protocol permission specification defines them, parsed from a
//! session's scope string and checked on every call made with its access token:
//!
//! - `atproto` (who the account is), and the transitional scopes: `transition:generic` (what an
//!   app password may do), `transition:chat.bsky` (with it, a privileged one),
//!   `transition:email` (the account's email address);
//! - the granular forms: `repo:<collection>?action=create|update|delete` (records),
//!   `rpc:<lxm>?aud=<did#service>` (calls to services in the account's name, and the node's own
//!   methods), `blob:<mime glob>` (uploads), `account:email|repo|status?action=read|manage`,
//!   `identity:handle|*`.
//!
//! `include:<nsid>?aud=<did#service>` names a permission set: resolved from the lexicons this
//! node holds (built in, or added by the operator with `[xrpc] lexicons_dir`), never fetched
//! from the network; a set this node does not hold is refused when asked for. Its `repo` and
//! `rpc` permissions count, within the set's own namespace (its NSID without the last segment),
//! without wildcards, an `rpc` one's audience inherited from the `include` when it says
//! `inheritAud`; a permission with a resource or parameter not understood is ignored, as the
//! specification requires.
//!
//! A scope string that does not parse, or names a resource or parameter not defined, is refused
//! with the reason when a client asks for it; the checks below take only what parsed.

/// A record operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// A new record.
    Create,
    /// A record replaced.
    Update,
    /// A record removed.
    Delete,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Update => "update",
            Self::Delete => "delete",
        }
    }
}

/// One granular permission.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Permission {
    /// Record writes: collections (`*` all), actions (empty: all).
    Repo { collections: Vec<String>, actions: Vec<Action> },
    /// Calls to a service: methods (`*` all) and the service (`*` any).
    Rpc { methods: Vec<String>, aud: String },
    /// Uploads of these MIME types (globs `*/*`, `image/*`).
    Blob { accept: Vec<String> },
    /// An account attribute (`email`, `repo`, `status`); `manage` includes `read`.
    Account { attr: String, manage: bool },
    /// The handle (`handle`) or the whole identity (`*`).
    Identity { attr: String },
}

/// What a session's scope grants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permissions {
    /// `transition:generic`.
    pub generic: bool,
    /// `transition:chat.bsky`.
    pub chat: bool,
    /// `transition:email`.
    pub email: bool,
    granted: Vec<Permission>,
    /// The permission sets included: title and detail, for the pages.
    sets: Vec<(String, String)>,
}

/// Finds a permission set's definition (the `main` def of a `permission-set` lexicon) by NSID.
pub type SetResolver<'a> = &'a dyn Fn(&str) -> Option<serde_json::Value>;

/// The permissions of the set `nsid` (its definition `def`), included with audience `aud`.
fn expand_set(nsid: &str, def: &serde_json::Value, aud: Option<&str>) -> Vec<Permission> {
    use serde_json::Value;
    // The set's authority: its group, and everything beneath it.
    let group = nsid.rsplit_once('.').map_or("", |(g, _)| g);
    let within = |name: &str| name.strip_prefix(group).is_some_and(|rest| rest.starts_with('.')) && is_nsid(name);
    let strings = |v: Option<&Value>| -> Option<Vec<String>> {
        v?.as_array()?.iter().map(|x| x.as_str().map(str::to_string)).collect::<Option<Vec<_>>>()
    };
    let mut out = Vec::new();
    for p in def.get("permissions").and_then(Value::as_array).into_iter().flatten() {
        let Some(obj) = p.as_object() else { continue };
        if obj.get("type").and_then(Value::as_str) != Some("permission") {
            continue;
        }
        let keys_ok = |allowed: &[&str]| obj.keys().all(|k| allowed.contains(&k.as_str()));
        match obj.get("resource").and_then(Value::as_str) {
            Some("repo") if keys_ok(&["type", "resource", "collection", "action"]) => {
                let Some(collections) = strings(obj.get("collection")) else { continue };
                let actions = match obj.get("action") {
                    None => Some(Vec::new()),
                    Some(a) => strings(Some(a)).and_then(|a| {
                        a.iter()
                            .map(|x| match x.as_str() {
                                "create" => Some(Action::Create),
                                "update" => Some(Action::Update),
                                "delete" => Some(Action::Delete),
                                _ => None,
                            })
                            .collect::<Option<Vec<_>>>()
                    }),
                };
                if let Some(actions) = actions
                    && !collections.is_empty()
                    && collections.iter().all(|c| within(c))
                {
                    out.push(Permission::Repo { collections, actions });
                }
            }
            Some("rpc") if keys_ok(&["type", "resource", "lxm", "aud", "inheritAud"]) => {
                let Some(methods) = strings(obj.get("lxm")) else { continue };
                let inherit = obj.get("inheritAud").and_then(Value::as_bool).unwrap_or(false);
                let own = obj.get("aud").and_then(Value::as_str);
                let aud = match (inherit, own, aud) {
                    (true, None, Some(a)) => a.to_string(),
                    (false, Some("*"), _) => "*".to_string(),
                    // A set does not name DIDs; an inherited audience needs one from the include.
                    _ => continue,
                };
                if !methods.is_empty() && methods.iter().all(|m| within(m)) {
                    out.push(Permission::Rpc { methods, aud });
                }
            }
            _ => {}
        }
    }
    out
}

/// Why a scope string is refused (`invalid_scope`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ScopeError(pub String);

/// `s` percent-decoded (`+` stays a plus sign).
fn decode(s: &str) -> String {
    let query = format!("v={}", s.replace('+', "%2B"));
    form_urlencoded::parse(query.as_bytes()).next().map(|(_, v)| v.into_owned()).unwrap_or_default()
}

fn is_nsid(s: &str) -> bool {
    ues_sync::repo::syntax::Nsid::new(s).is_ok()
}

fn is_mime_glob(s: &str) -> bool {
    let Some((top, sub)) = s.split_once('/') else { return false };
    let token = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b));
    (top == "*" && sub == "*") || (token(top) && (sub == "*" || token(sub)))
}

/// A scope string's parts: its resource, positional value and parameters.
type Parts<'a> = (&'a str, Option<String>, Vec<(String, String)>);

/// One scope string's resource, positional value and parameters.
fn split(scope: &str) -> Result<Parts<'_>, ScopeError> {
    let bad = || ScopeError(format!("{scope} is not a valid scope"));
    if scope.is_empty() || scope.len() > 1024 || !scope.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad());
    }
    let (head, query) = scope.split_once('?').map_or((scope, None), |(h, q)| (h, Some(q)));
    let (resource, positional) = head.split_once(':').map_or((head, None), |(r, p)| (r, Some(decode(p))));
    if resource.is_empty() || !resource.bytes().all(|b| b.is_ascii_lowercase()) {
        return Err(bad());
    }
    if positional.as_deref() == Some("") || query == Some("") && positional.is_none() {
        return Err(bad());
    }
    let params = form_urlencoded::parse(query.unwrap_or("").replace('+', "%2B").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect::<Vec<_>>();
    if params.iter().any(|(k, v)| k.is_empty() || v.is_empty()) {
        return Err(bad());
    }
    Ok((resource, positional, params))
}

/// The values of `name`: the positional one, or the parameters (not both), checked each.
fn values(
    scope: &str,
    name: &str,
    positional: Option<String>,
    params: &[(String, String)],
) -> Result<Vec<String>, ScopeError> {
    let named: Vec<String> = params.iter().filter(|(k, _)| k == name).map(|(_, v)| v.clone()).collect();
    match (positional, named.is_empty()) {
        (Some(_), false) => Err(ScopeError(format!("{scope} gives {name} twice"))),
        (Some(p), true) => Ok(vec![p]),
        (None, _) => Ok(named),
    }
}

fn only(scope: &str, params: &[(String, String)], allowed: &[&str]) -> Result<(), ScopeError> {
    match params.iter().find(|(k, _)| !allowed.contains(&k.as_str())) {
        Some((k, _)) => Err(ScopeError(format!("{scope}: unknown parameter {k}"))),
        None => Ok(()),
    }
}

fn permission(scope: &str) -> Result<Permission, ScopeError> {
    let (resource, positional, params) = split(scope)?;
    let bad = |m: &str| Err(ScopeError(format!("{scope}: {m}")));
    match resource {
        "repo" => {
            only(scope, &params, &["collection", "action"])?;
            let collections = values(scope, "collection", positional, &params)?;
            if collections.is_empty() || collections.iter().any(|c| c != "*" && !is_nsid(c)) {
                return bad("collection must be an NSID or *");
            }
            let mut actions = Vec::new();
            for (_, a) in params.iter().filter(|(k, _)| k == "action") {
                actions.push(match a.as_str() {
                    "create" => Action::Create,
                    "update" => Action::Update,
                    "delete" => Action::Delete,
                    _ => return bad("action must be create, update or delete"),
                });
            }
            Ok(Permission::Repo { collections, actions })
        }
        "rpc" => {
            only(scope, &params, &["lxm", "aud"])?;
            let methods = values(scope, "lxm", positional, &params)?;
            let auds: Vec<&String> = params.iter().filter(|(k, _)| k == "aud").map(|(_, v)| v).collect();
            let [aud] = auds.as_slice() else { return bad("aud is required, once") };
            if methods.is_empty() || methods.iter().any(|m| m != "*" && !is_nsid(m)) {
                return bad("lxm must be an NSID or *");
            }
            let aud_ok =
                *aud == "*" || aud.starts_with("did:") && aud.split_once('#').is_some_and(|(_, f)| !f.is_empty());
            if !aud_ok {
                return bad("aud must be a DID with a service fragment (did:...#service) or *");
            }
            if *aud == "*" && methods.iter().any(|m| m == "*") {
                return bad("lxm and aud may not both be *");
            }
            Ok(Permission::Rpc { methods, aud: (*aud).clone() })
        }
        "blob" => {
            only(scope, &params, &["accept"])?;
            let accept = values(scope, "accept", positional, &params)?;
            if accept.is_empty() || !accept.iter().all(|a| is_mime_glob(a)) {
                return bad("accept must be MIME types or globs (image/*, */*)");
            }
            Ok(Permission::Blob { accept })
        }
        "account" => {
            only(scope, &params, &["attr", "action"])?;
            let attrs = values(scope, "attr", positional, &params)?;
            let [attr] = attrs.as_slice() else { return bad("attr is required, once") };
            if !matches!(attr.as_str(), "email" | "repo" | "status") {
                return bad("attr must be email, repo or status");
            }
            let actions: Vec<&String> = params.iter().filter(|(k, _)| k == "action").map(|(_, v)| v).collect();
            let manage = match actions.as_slice() {
                [] => false,
                [a] if a.as_str() == "read" => false,
                [a] if a.as_str() == "manage" => true,
                _ => return bad("action must be read or manage, once"),
            };
            Ok(Permission::Account { attr: attr.clone(), manage })
        }
        "identity" => {
            only(scope, &params, &["attr"])?;
            let attrs = values(scope, "attr", positional, &params)?;
            let [attr] = attrs.as_slice() else { return bad("attr is required, once") };
            if !matches!(attr.as_str(), "handle" | "*") {
                return bad("attr must be handle or *");
            }
            Ok(Permission::Identity { attr: attr.clone() })
        }
        "include" => bad("a permission set is resolved with the node's lexicons"),
        _ => bad("unknown resource"),
    }
}

/// Whether a MIME type matches a glob of `accept`.
fn mime_matches(glob: &str, mime: &str) -> bool {
    let mime = mime.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match glob.split_once('/') {
        Some(("*", "*")) => true,
        Some((top, "*")) => mime.split_once('/').is_some_and(|(t, _)| t == top),
        _ => mime == glob,
    }
}

/// The service an `rpc` permission's `aud` names matches `aud` (a `did#service`, or a bare DID
/// as `getServiceAuth` takes it, which matches any service of that DID).
fn aud_matches(granted: &str, aud: &str) -> bool {
    granted == "*"
        || granted == aud
        || (!aud.contains('#') && granted.split_once('#').is_some_and(|(did, _)| did == aud))
}

impl Permissions {
    /// Parses a scope string (space-separated); it must include `atproto`. `include:` is
    /// refused: see [`Permissions::parse_with`].
    pub fn parse(scope: &str) -> Result<Self, ScopeError> {
        Self::parse_with(scope, &|_| None)
    }

    /// Parses a scope string, resolving `include:` permission sets with `sets`.
    pub fn parse_with(scope: &str, sets: SetResolver<'_>) -> Result<Self, ScopeError> {
        let mut out = Self::default();
        let mut atproto = false;
        for s in scope.split(' ') {
            match s {
                "atproto" => atproto = true,
                "transition:generic" => out.generic = true,
                "transition:chat.bsky" => out.chat = true,
                "transition:email" => out.email = true,
                _ if s.starts_with("include:") || s.starts_with("include?") => {
                    let (_, positional, params) = split(s)?;
                    only(s, &params, &["nsid", "aud"])?;
                    let names = values(s, "nsid", positional, &params)?;
                    let [nsid] = names.as_slice() else { return Err(ScopeError(format!("{s}: one nsid"))) };
                    let auds: Vec<&String> = params.iter().filter(|(k, _)| k == "aud").map(|(_, v)| v).collect();
                    let aud = match auds.as_slice() {
                        [] => None,
                        [a] if a.starts_with("did:") && a.contains('#') => Some(a.as_str()),
                        _ => return Err(ScopeError(format!("{s}: aud must be one did#service"))),
                    };
                    let def = is_nsid(nsid).then(|| sets(nsid)).flatten().ok_or_else(|| {
                        ScopeError(format!("{s}: the permission set {nsid} is not known to this server"))
                    })?;
                    let text = |k: &str| def.get(k).and_then(serde_json::Value::as_str).unwrap_or("").to_string();
                    let title = if text("title").is_empty() { nsid.clone() } else { text("title") };
                    out.sets.push((title, text("detail")));
                    out.granted.extend(expand_set(nsid, &def, aud));
                }
                _ => out.granted.push(permission(s)?),
            }
        }
        if !atproto {
            return Err(ScopeError("scope must include atproto".into()));
        }
        Ok(out)
    }

    /// Writes of `action` to `collection`.
    pub fn allows_repo(&self, collection: &str, action: Action) -> bool {
        self.generic
            || self.granted.iter().any(|p| match p {
                Permission::Repo { collections, actions } => {
                    collections.iter().any(|c| c == "*" || c == collection)
                        && (actions.is_empty() || actions.contains(&action))
                }
                _ => false,
            })
    }

    /// A call of `method` on the service `aud` (`did#service`).
    pub fn allows_rpc(&self, method: &str, aud: &str) -> bool {
        if self.generic && (!method.starts_with("chat.bsky.") || self.chat) {
            return true;
        }
        self.granted.iter().any(|p| match p {
            Permission::Rpc { methods, aud: granted } => {
                methods.iter().any(|m| m == "*" || m == method) && aud_matches(granted, aud)
            }
            _ => false,
        })
    }

    /// An upload of type `mime`.
    pub fn allows_blob(&self, mime: &str) -> bool {
        self.generic
            || self.granted.iter().any(|p| match p {
                Permission::Blob { accept } => accept.iter().any(|g| mime_matches(g, mime)),
                _ => false,
            })
    }

    /// Reading (or, `manage`, changing) the account attribute `attr`.
    pub fn allows_account(&self, attr: &str, manage: bool) -> bool {
        (attr == "email" && !manage && self.email)
            || self.granted.iter().any(|p| match p {
                Permission::Account { attr: a, manage: m } => a == attr && (*m || !manage),
                _ => false,
            })
    }

    /// Changing the handle (`handle`) or anything of the identity (`*`).
    pub fn allows_identity(&self, attr: &str) -> bool {
        self.granted.iter().any(|p| match p {
            Permission::Identity { attr: a } => a == "*" || a == attr,
            _ => false,
        })
    }

    /// What the scope lets a client do, in plain words (for the consent and account pages).
    pub fn describe(&self) -> Vec<String> {
        let mut out = vec!["Know who you are (your account's DID and handle)".to_string()];
        if self.generic {
            out.push("Read and write your posts, likes, follows and other records, and upload files".into());
        }
        if self.chat {
            out.push("Read and send your direct messages".into());
        }
        if self.email {
            out.push("See your email address".into());
        }
        for (title, detail) in &self.sets {
            out.push(if detail.is_empty() { title.clone() } else { format!("{title}: {detail}") });
        }
        for p in &self.granted {
            out.push(match p {
                Permission::Repo { collections, actions } => {
                    let what = if collections.iter().any(|c| c == "*") {
                        "any kind of record".to_string()
                    } else {
                        format!("records of type {}", collections.join(", "))
                    };
                    let verbs = if actions.is_empty() {
                        "Create, change and delete".to_string()
                    } else {
                        let v: Vec<&str> = actions.iter().map(|a| a.name()).collect();
                        let mut s = v.join(", ");
                        s[..1].make_ascii_uppercase();
                        s
                    };
                    format!("{verbs} {what} in your repository")
                }
                Permission::Rpc { methods, aud } => {
                    let service = if aud == "*" { "any service".to_string() } else { aud.clone() };
                    let methods =
                        if methods.iter().any(|m| m == "*") { "any method".to_string() } else { methods.join(", ") };
                    format!("Call {methods} on {service} in your name")
                }
                Permission::Blob { accept } => format!("Upload files of type {}", accept.join(", ")),
                Permission::Account { attr, manage } => match (attr.as_str(), manage) {
                    ("email", false) => "See your email address".into(),
                    ("email", true) => "See and change your email address".into(),
                    ("repo", true) => "Replace your whole repository (import one)".into(),
                    ("status", true) => "Activate or deactivate your account".into(),
                    (a, _) => format!("See your account's {a}"),
                },
                Permission::Identity { attr } if attr == "*" => "Change your handle and your DID document".into(),
                Permission::Identity { .. } => "Change your handle".into(),
            });
        }
        out.dedup();
        out
    }

    /// Whether every permission of `other` is one of these (a refresh may narrow, never widen).
    pub fn covers(&self, other: &Self) -> bool {
        (!other.generic || self.generic)
            && (!other.chat || self.chat)
            && (!other.email || self.email)
            && other.granted.iter().all(|p| self.granted.contains(p))
    }
}

/// What a call with an OAuth access token needs before its handler runs.
#[derive(Debug, Clone)]
pub enum Needs {
    /// Nothing beyond the token (the account's own session), or the handler checks the
    /// specifics (the collection of a write, the type of an upload, the service of a proxied
    /// call).
    Checked,
    /// A permission, named as a scope for the 403 that says what is missing.
    Scope {
        /// The scope named when it is missing.
        scope: String,
        /// Whether the session's permissions hold it.
        granted: fn(&Permissions) -> bool,
    },
    /// A call on a service (`rpc:<method>?aud=<aud>`).
    Rpc {
        /// The method called.
        method: String,
        /// The service (`did#service`).
        aud: String,
    },
    /// Only what an app password may do (`transition:generic`).
    Generic,
}

/// What an XRPC call of `method` needs from a granular OAuth token. `own` is this node's
/// service reference (`did#atproto_pds`), `appview` the AppView's (`did#bsky_appview`).
pub fn xrpc_needs(method: &str, proxy: Option<&str>, own: &str, appview: Option<&str>) -> Needs {
    let scope = |scope: &str, granted: fn(&Permissions) -> bool| Needs::Scope { scope: scope.into(), granted };
    match method {
        // The handlers check the collection, the type, the service.
        "com.atproto.repo.createRecord"
        | "com.atproto.repo.putRecord"
        | "com.atproto.repo.deleteRecord"
        | "com.atproto.repo.applyWrites"
        | "com.atproto.repo.uploadBlob"
        | "com.atproto.server.getServiceAuth"
        | "com.atproto.server.getSession" => Needs::Checked,
        "com.atproto.identity.updateHandle" => scope("identity:handle", |p| p.allows_identity("handle")),
        "com.atproto.identity.requestPlcOperationSignature"
        | "com.atproto.identity.signPlcOperation"
        | "com.atproto.identity.submitPlcOperation"
        | "com.atproto.identity.getRecommendedDidCredentials" => scope("identity:*", |p| p.allows_identity("*")),
        "com.atproto.server.requestEmailUpdate"
        | "com.atproto.server.updateEmail"
        | "com.atproto.server.requestEmailConfirmation"
        | "com.atproto.server.confirmEmail" => {
            scope("account:email?action=manage", |p| p.allows_account("email", true))
        }
        "com.atproto.repo.importRepo"
        | "com.atproto.repo.listMissingBlobs"
        | "com.atproto.server.checkAccountStatus" => {
            scope("account:repo?action=manage", |p| p.allows_account("repo", true))
        }
        "com.atproto.server.activateAccount" | "com.atproto.server.deactivateAccount" => {
            scope("account:status?action=manage", |p| p.allows_account("status", true))
        }
        _ if proxy.is_some() => Needs::Checked,
        // Kept here, but the AppView's to grant (as the reference PDS does).
        "app.bsky.actor.getPreferences" | "app.bsky.actor.putPreferences" => match appview {
            Some(aud) => Needs::Rpc { method: method.into(), aud: aud.into() },
            None => Needs::Generic,
        },
        _ if method.starts_with("dev.ues.") => Needs::Rpc { method: method.into(), aud: own.into() },
        _ if !method.starts_with("com.atproto.") => Needs::Checked,
        // Account management (app passwords, deletion, invites, sessions) and anything not
        // listed: as an app password at least.
        _ => Needs::Generic,
    }
}

/// The 403 for a call outside the grant, naming the scope missing.
pub fn missing(scope: &str) -> crate::node::NodeError {
    tracing::info!(scope, "call outside an OAuth grant refused");
    crate::node::NodeError::new(
        axum::http::StatusCode::FORBIDDEN,
        "InsufficientScope",
        format!("Missing scope: {scope}"),
    )
}

impl crate::node::auth::Claims {
    /// Refuses a write of `action` to `collection` outside an OAuth grant.
    pub fn check_repo(&self, collection: &str, action: Action) -> Result<(), crate::node::NodeError> {
        match &self.permissions {
            Some(p) if !p.allows_repo(collection, action) => {
                Err(missing(&format!("repo:{collection}?action={}", action.name())))
            }
            _ => Ok(()),
        }
    }

    /// Refuses an upload of type `mime` outside an OAuth grant.
    pub fn check_blob(&self, mime: &str) -> Result<(), crate::node::NodeError> {
        match &self.permissions {
            Some(p) if !p.allows_blob(mime) => Err(missing(&format!("blob:{mime}"))),
            _ => Ok(()),
        }
    }

    /// Refuses a call of `method` on the service `aud` outside an OAuth grant.
    pub fn check_rpc(&self, method: &str, aud: &str) -> Result<(), crate::node::NodeError> {
        match &self.permissions {
            Some(p) if !p.allows_rpc(method, aud) => {
                Err(missing(&format!("rpc:{method}?aud={}", aud.replace('#', "%23"))))
            }
            _ => Ok(()),
        }
    }

    /// Whether the caller may see the account's email address.
    pub fn may_read_email(&self) -> bool {
        self.permissions.as_ref().is_none_or(|p| p.allows_account("email", false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_specifications_examples_parse_and_grant_what_they_say() {
        let p = Permissions::parse(
            "atproto repo:app.example.profile?action=create&action=update repo?collection=app.example.post \
             rpc:app.example.moderation.createReport?aud=* rpc?lxm=*&aud=did:web:api.example.com%23svc_appview \
             blob?accept=video/*&accept=text/html account:email identity:handle account:repo?action=manage",
        )
        .unwrap();
        assert!(p.allows_repo("app.example.profile", Action::Create));
        assert!(p.allows_repo("app.example.profile", Action::Update));
        assert!(!p.allows_repo("app.example.profile", Action::Delete));
        assert!(p.allows_repo("app.example.post", Action::Delete));
        assert!(!p.allows_repo("app.example.like", Action::Create));
        assert!(p.allows_rpc("app.example.moderation.createReport", "did:web:mod.example#atproto_labeler"));
        assert!(p.allows_rpc("app.example.getFeed", "did:web:api.example.com#svc_appview"));
        assert!(!p.allows_rpc("app.example.getFeed", "did:web:other.example#svc_appview"));
        assert!(p.allows_rpc("app.example.getFeed", "did:web:api.example.com"), "a bare DID matches its services");
        assert!(p.allows_blob("video/mp4") && p.allows_blob("text/html; charset=utf-8"));
        assert!(!p.allows_blob("image/png"));
        assert!(p.allows_account("email", false) && !p.allows_account("email", true));
        assert!(p.allows_account("repo", true) && p.allows_account("repo", false));
        assert!(p.allows_identity("handle") && !p.allows_identity("*"));
        assert!(Permissions::parse("atproto identity:*?").unwrap().allows_identity("*"));
        assert!(Permissions::parse("atproto identity:*").unwrap().allows_identity("handle"));
    }

    #[test]
    fn malformed_and_unknown_scopes_are_refused_with_a_reason() {
        for bad in [
            "repo",
            "repo:",
            "repo:?",
            "resource:positional?key=val",
            "repo:app.example.post?collection=app.example.other",
            "repo:app.example.post?action=publish",
            "repo:com.example.*",
            "rpc:app.example.getFeed",
            "rpc?lxm=*&aud=*",
            "rpc:app.example.getFeed?aud=did:web:x.example",
            "blob:image",
            "account:password",
            "account:email?action=own",
            "identity:did",
            "repo:app.example.post?x=1",
            "emoji:☺",
        ] {
            let e = Permissions::parse(&format!("atproto {bad}"));
            assert!(e.is_err(), "{bad} was taken");
        }
        assert!(Permissions::parse("transition:generic").is_err(), "atproto is required");
        assert!(Permissions::parse("atproto include:app.example.authFull").is_err(), "no set known");
    }

    #[test]
    fn the_transitional_scopes_act_as_app_passwords() {
        let p = Permissions::parse("atproto transition:generic").unwrap();
        assert!(p.allows_repo("app.bsky.feed.post", Action::Delete));
        assert!(p.allows_blob("image/png"));
        assert!(p.allows_rpc("app.bsky.feed.getTimeline", "did:web:api.bsky.app#bsky_appview"));
        assert!(!p.allows_rpc("chat.bsky.convo.listConvos", "did:web:api.bsky.chat#bsky_chat"));
        assert!(!p.allows_account("email", false) && !p.allows_identity("handle"));
        let chat = Permissions::parse("atproto transition:generic transition:chat.bsky transition:email").unwrap();
        assert!(chat.allows_rpc("chat.bsky.convo.listConvos", "did:web:api.bsky.chat#bsky_chat"));
        assert!(chat.allows_account("email", false) && !chat.allows_account("email", true));
        assert!(chat.covers(&p) && !p.covers(&chat));
        let only = Permissions::parse("atproto").unwrap();
        assert!(!only.allows_repo("app.bsky.feed.post", Action::Create) && !only.allows_blob("image/png"));
    }

    #[test]
    fn permission_sets_grant_within_their_namespace() {
        let set = serde_json::json!({
            "type": "permission-set", "title": "Basic App Functionality", "detail": "Posts and likes",
            "permissions": [
                {"type": "permission", "resource": "repo", "collection": ["app.example.post"]},
                {"type": "permission", "resource": "repo", "collection": ["app.example.like"], "action": ["delete"]},
                {"type": "permission", "resource": "repo", "collection": ["com.other.post"]},
                {"type": "permission", "resource": "repo", "collection": ["*"]},
                {"type": "permission", "resource": "repo", "collection": ["app.example.x"], "future": true},
                {"type": "permission", "resource": "rpc", "inheritAud": true, "lxm": ["app.example.getFeed"]},
                {"type": "permission", "resource": "rpc", "aud": "*", "lxm": ["app.example.getFeedSkeleton"]},
                {"type": "permission", "resource": "blob", "accept": ["*/*"]},
                {"type": "permission", "resource": "video", "lxm": ["app.example.x"]},
            ]
        });
        let sets = |nsid: &str| (nsid == "app.example.authBasic").then(|| set.clone());
        let p = Permissions::parse_with(
            "atproto include:app.example.authBasic?aud=did:web:api.example.com%23svc_appview",
            &sets,
        )
        .unwrap();
        assert!(p.allows_repo("app.example.post", Action::Update));
        assert!(
            p.allows_repo("app.example.like", Action::Delete) && !p.allows_repo("app.example.like", Action::Create)
        );
        assert!(!p.allows_repo("com.other.post", Action::Create), "outside the set's namespace");
        assert!(!p.allows_repo("app.example.anything", Action::Create), "no wildcard in a set");
        assert!(!p.allows_repo("app.example.x", Action::Create), "an unknown parameter voids the permission");
        assert!(p.allows_rpc("app.example.getFeed", "did:web:api.example.com#svc_appview"));
        assert!(!p.allows_rpc("app.example.getFeed", "did:web:other.example#svc_appview"));
        assert!(p.allows_rpc("app.example.getFeedSkeleton", "did:web:feeds.example#bsky_fg"));
        assert!(!p.allows_blob("image/png"), "blobs are not granted by sets");
        assert_eq!(p.describe()[1], "Basic App Functionality: Posts and likes");
        // Without an audience, inherited rpc permissions are void.
        let p = Permissions::parse_with("atproto include:app.example.authBasic", &sets).unwrap();
        assert!(!p.allows_rpc("app.example.getFeed", "did:web:api.example.com#svc_appview"));
        assert!(p.allows_repo("app.example.post", Action::Create));
        assert!(Permissions::parse_with("atproto include:app.example.authOther", &sets).is_err());
    }

    #[test]
    fn descriptions_name_every_permission() {
        let p = Permissions::parse("atproto repo:app.bsky.feed.like?action=create blob:image/*").unwrap();
        let d = p.describe();
        assert_eq!(d.len(), 3, "{d:?}");
        assert!(d[1].contains("app.bsky.feed.like") && d[1].starts_with("Create"), "{d:?}");
        assert!(d[2].contains("image/*"));
    }

    #[test]
    fn method_needs() {
        let own = "did:web:pds.example#atproto_pds";
        let appview = Some("did:web:api.bsky.app#bsky_appview");
        assert!(matches!(xrpc_needs("com.atproto.repo.createRecord", None, own, appview), Needs::Checked));
        assert!(matches!(xrpc_needs("com.atproto.server.createAppPassword", None, own, appview), Needs::Generic));
        assert!(matches!(xrpc_needs("com.atproto.server.deleteAccount", None, own, appview), Needs::Generic));
        match xrpc_needs("com.atproto.identity.updateHandle", None, own, appview) {
            Needs::Scope { scope, granted } => {
                assert_eq!(scope, "identity:handle");
                assert!(granted(&Permissions::parse("atproto identity:handle").unwrap()));
                assert!(!granted(&Permissions::parse("atproto transition:generic").unwrap()));
            }
            other => panic!("{other:?}"),
        }
        match xrpc_needs("app.bsky.actor.getPreferences", None, own, appview) {
            Needs::Rpc { aud, .. } => assert_eq!(Some(aud.as_str()), appview),
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(xrpc_needs("dev.ues.chat.getInbox", None, own, appview), Needs::Rpc { aud, .. } if aud == own)
        );
        assert!(matches!(xrpc_needs("app.bsky.feed.getTimeline", None, own, appview), Needs::Checked));
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        fn nsid() -> impl Strategy<Value = String> {
            "[a-z]{2,8}\\.[a-z]{2,8}\\.[a-z][a-zA-Z]{1,10}"
        }

        proptest! {
            /// Any scope string a client sends: parsed or refused, never a panic, and what
            /// parses is described in as many lines as it grants.
            #[test]
            fn any_scope_string_parses_or_is_refused(scope in "\\PC{0,200}") {
                if let Ok(p) = Permissions::parse(&scope) {
                    prop_assert!(!p.describe().is_empty());
                    prop_assert!(p.covers(&p));
                }
                let _ = Permissions::parse(&format!("atproto {scope}"));
            }

            /// A repo permission grants its collections and actions, and nothing else.
            #[test]
            fn repo_permissions_grant_what_they_name(
                granted in nsid(),
                other in nsid(),
                actions in proptest::sample::subsequence(vec!["create", "update", "delete"], 0..=3),
            ) {
                let query: Vec<String> = actions.iter().map(|a| format!("action={a}")).collect();
                let scope = if query.is_empty() {
                    format!("atproto repo:{granted}")
                } else {
                    format!("atproto repo:{granted}?{}", query.join("&"))
                };
                let p = Permissions::parse(&scope).unwrap();
                for (name, action) in [("create", Action::Create), ("update", Action::Update), ("delete", Action::Delete)] {
                    let expected = actions.is_empty() || actions.contains(&name);
                    prop_assert_eq!(p.allows_repo(&granted, action), expected);
                    if other != granted {
                        prop_assert!(!p.allows_repo(&other, action));
                    }
                }
                prop_assert!(!p.allows_blob("image/png") && !p.allows_identity("handle"));
            }

            /// An rpc permission grants its method on its service only.
            #[test]
            fn rpc_permissions_grant_their_service(method in nsid(), host in "[a-z]{3,10}", kind in "[a-z_]{3,12}") {
                let aud = format!("did:web:{host}.example#{kind}");
                let p = Permissions::parse(&format!("atproto rpc:{method}?aud={}", aud.replace('#', "%23"))).unwrap();
                prop_assert!(p.allows_rpc(&method, &aud));
                let elsewhere = format!("did:web:{host}.example#other_{kind}");
                prop_assert!(!p.allows_rpc(&method, &elsewhere));
                prop_assert!(!p.allows_rpc("com.example.other", &aud));
            }
        }
    }
}
