//! Email the node sends: confirmation, email change, password reset, account deletion and PLC
//! operation tokens, and the operator's notices. Over SMTP with `lettre` when `[email] smtp_url`
//! is set; without it, every mail (with its token) is appended as one JSON line to the outbox
//! file and logged at info level, so a local operator and the tests can finish every flow.
//!
//! Bodies come from template files (`Subject: ...`, a blank line, the text; `{{token}}`,
//! `{{handle}}`, `{{email}}`, `{{host}}` replaced), built in and overridable one by one from
//! `[email] templates_dir`. At most [`MAILS_PER_HOUR`] mails go to one address an hour, so no
//! caller fills a mailbox or the outbox.

use std::io::Write;
use std::num::NonZeroU32;
use std::path::PathBuf;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use lettre::message::{Mailbox, header::ContentType};
use lettre::{SmtpTransport, Transport};
use serde_json::json;

use super::NodeError;

/// Mails to one address an hour (the reference's hourly limit on the methods that send them).
pub const MAILS_PER_HOUR: u32 = 5;

/// The outbox file is moved aside (to `mail.jsonl.1`, replacing the last) past this size.
pub const OUTBOX_MAX_BYTES: u64 = 16 << 20;

/// Where and how the node sends mail (`[email]` in `node.toml`).
#[derive(Debug, Clone)]
pub struct MailConfig {
    /// `smtps://user:password@host` (TLS), `smtp://host:587?tls=required` (STARTTLS),
    /// `smtp://127.0.0.1:25` (plain, for a relay on the same machine); `None`: the outbox file
    /// only.
    pub smtp_url: Option<String>,
    /// The sender (`UES <noreply@example.com>`).
    pub from: String,
    /// Directory with template files overriding the built-in ones (`<name>.txt`).
    pub templates: Option<PathBuf>,
    /// The outbox file when no SMTP server is configured.
    pub outbox: PathBuf,
    /// How long an emailed token stays good.
    pub token_ttl: std::time::Duration,
    /// SMTP connection and command timeout.
    pub timeout: std::time::Duration,
}

/// The mails the node sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Template {
    /// A token confirming the account's email.
    ConfirmEmail,
    /// A token allowing a confirmed email to be changed.
    UpdateEmail,
    /// A token resetting the password.
    ResetPassword,
    /// A token deleting the account.
    DeleteAccount,
    /// A token allowing the node to sign a PLC operation for the account.
    PlcOperation,
    /// The operator's words (`com.atproto.admin.sendEmail`).
    Notice,
    /// A code completing a sign-in (two-factor sign-in by email).
    SignIn,
}

impl Template {
    /// The template's file name (without `.txt`).
    pub fn name(self) -> &'static str {
        match self {
            Self::ConfirmEmail => "confirm_email",
            Self::UpdateEmail => "update_email",
            Self::ResetPassword => "reset_password",
            Self::DeleteAccount => "delete_account",
            Self::PlcOperation => "plc_operation",
            Self::Notice => "notice",
            Self::SignIn => "sign_in",
        }
    }

    fn builtin(self) -> &'static str {
        match self {
            Self::ConfirmEmail => include_str!("../../templates/mail/confirm_email.txt"),
            Self::UpdateEmail => include_str!("../../templates/mail/update_email.txt"),
            Self::ResetPassword => include_str!("../../templates/mail/reset_password.txt"),
            Self::DeleteAccount => include_str!("../../templates/mail/delete_account.txt"),
            Self::PlcOperation => include_str!("../../templates/mail/plc_operation.txt"),
            Self::Notice => include_str!("../../templates/mail/notice.txt"),
            Self::SignIn => include_str!("../../templates/mail/sign_in.txt"),
        }
    }
}

/// A mail ready to go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mail {
    /// The recipient.
    pub to: String,
    /// The subject line.
    pub subject: String,
    /// The plain-text body.
    pub body: String,
}

/// Sends the node's mail.
pub struct Mailer {
    cfg: MailConfig,
    smtp: Option<SmtpTransport>,
    from: Mailbox,
    per_address: DefaultKeyedRateLimiter<String>,
    outbox: parking_lot::Mutex<()>,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer").field("to", &self.describe()).finish()
    }
}

/// Addresses the per-address limiter remembers before forgetting those with a full budget.
const MAX_ADDRESSES: usize = 100_000;

impl Mailer {
    /// A mailer for `cfg`: the SMTP URL and sender are checked now (nothing is connected).
    pub fn new(cfg: MailConfig) -> Result<Self, String> {
        let from: Mailbox = cfg.from.parse().map_err(|e| format!("[email] from {:?}: {e}", cfg.from))?;
        let smtp = match &cfg.smtp_url {
            Some(url) => Some(
                SmtpTransport::from_url(url)
                    .map_err(|e| format!("[email] smtp_url: {e}"))?
                    .timeout(Some(cfg.timeout))
                    .build(),
            ),
            None => None,
        };
        let quota = Quota::per_hour(NonZeroU32::new(MAILS_PER_HOUR).expect("not zero"));
        Ok(Self { cfg, smtp, from, per_address: RateLimiter::keyed(quota), outbox: parking_lot::Mutex::new(()) })
    }

    /// Where mail goes, for logs and status (the SMTP URL without credentials, or the outbox).
    pub fn describe(&self) -> String {
        match &self.cfg.smtp_url {
            Some(url) => match url.split_once('@') {
                Some((scheme_user, host)) => {
                    format!("{}://…@{host}", scheme_user.split("://").next().unwrap_or("smtp"))
                }
                None => url.clone(),
            },
            None => format!("outbox {}", self.cfg.outbox.display()),
        }
    }

    /// How long an emailed token stays good.
    pub fn token_ttl(&self) -> std::time::Duration {
        self.cfg.token_ttl
    }

    /// Fills `template` for `to`: the override in the templates directory when there is one,
    /// else the built-in text.
    pub fn render(&self, to: &str, template: Template, vars: &[(&str, &str)]) -> Result<Mail, NodeError> {
        let text = match &self.cfg.templates {
            Some(dir) => match std::fs::read_to_string(dir.join(format!("{}.txt", template.name()))) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => template.builtin().to_string(),
                Err(e) => return Err(NodeError::internal(format!("template {}: {e}", template.name()))),
            },
            None => template.builtin().to_string(),
        };
        let mut filled = text;
        for (name, value) in vars {
            filled = filled.replace(&format!("{{{{{name}}}}}"), value);
        }
        let (head, body) = filled.split_once("\n\n").unwrap_or(("", filled.as_str()));
        let subject = head
            .lines()
            .find_map(|l| l.strip_prefix("Subject:"))
            .map(|s| s.trim().to_string())
            .ok_or_else(|| NodeError::internal(format!("template {} has no Subject: line", template.name())))?;
        Ok(Mail { to: to.to_string(), subject, body: body.to_string() })
    }

    /// Sends `template` to `to` with `vars` filled in. Refused (`429`) past
    /// [`MAILS_PER_HOUR`] to the address.
    pub fn send(&self, to: &str, template: Template, vars: &[(&str, &str)]) -> Result<(), NodeError> {
        self.admit(to, template)?;
        let mail = self.render(to, template, vars)?;
        self.deliver(&mail, template, None)
    }

    /// Sends `template` with a token `make_token` makes once the address may have another
    /// mail (so a refused mail leaves the token sent before it good). The token fills
    /// `{{token}}` and goes into the outbox line when there is no SMTP server.
    pub fn send_token(
        &self,
        to: &str,
        template: Template,
        vars: &[(&str, &str)],
        make_token: impl FnOnce() -> Result<String, NodeError>,
    ) -> Result<(), NodeError> {
        self.admit(to, template)?;
        let token = make_token()?;
        let mut all = vars.to_vec();
        all.push(("token", &token));
        let mail = self.render(to, template, &all)?;
        self.deliver(&mail, template, Some(&token))
    }

    /// Spends one of the address's mails this hour, or refuses (`429`).
    fn admit(&self, to: &str, template: Template) -> Result<(), NodeError> {
        if self.per_address.len() > MAX_ADDRESSES {
            self.per_address.retain_recent();
        }
        if self.per_address.check_key(&to.to_ascii_lowercase()).is_err() {
            tracing::warn!(to, template = template.name(), "mail refused: too many to this address this hour");
            return Err(NodeError::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                "RateLimitExceeded",
                "Too many emails to this address; try again later",
            ));
        }
        Ok(())
    }

    /// Delivers a rendered mail (the address's budget already spent).
    fn deliver(&self, mail: &Mail, template: Template, token: Option<&str>) -> Result<(), NodeError> {
        match &self.smtp {
            Some(smtp) => {
                let to: Mailbox =
                    mail.to.parse().map_err(|e| NodeError::invalid(format!("cannot send to {:?}: {e}", mail.to)))?;
                let message = lettre::Message::builder()
                    .from(self.from.clone())
                    .to(to)
                    .subject(&mail.subject)
                    .header(ContentType::TEXT_PLAIN)
                    .body(mail.body.clone())
                    .map_err(NodeError::internal)?;
                smtp.send(&message).map_err(|e| {
                    tracing::error!(to = %mail.to, template = template.name(), error = %e, "mail not sent");
                    NodeError::new(
                        axum::http::StatusCode::BAD_GATEWAY,
                        "MailNotSent",
                        "The mail server did not take the message; try again later",
                    )
                })?;
                tracing::info!(to = %mail.to, template = template.name(), "mail sent");
                Ok(())
            }
            None => {
                let line = json!({
                    "time": super::firehose_time(),
                    "from": self.cfg.from,
                    "to": mail.to,
                    "subject": mail.subject,
                    "template": template.name(),
                    "token": token,
                    "body": mail.body,
                });
                self.append(&line).map_err(|e| NodeError::internal(format!("outbox: {e}")))?;
                tracing::info!(to = %mail.to, template = template.name(), token, outbox = %self.cfg.outbox.display(), "mail kept in the outbox (no SMTP server configured)");
                Ok(())
            }
        }
    }

    fn append(&self, line: &serde_json::Value) -> std::io::Result<()> {
        let _one_at_a_time = self.outbox.lock();
        if let Some(dir) = self.cfg.outbox.parent() {
            std::fs::create_dir_all(dir)?;
        }
        if std::fs::metadata(&self.cfg.outbox).is_ok_and(|m| m.len() > OUTBOX_MAX_BYTES) {
            let mut old = self.cfg.outbox.clone().into_os_string();
            old.push(".1");
            std::fs::rename(&self.cfg.outbox, old)?;
        }
        let mut options = std::fs::OpenOptions::new();
        options.create(true).append(true);
        // Tokens are credentials: the outbox is for the operator's eyes only.
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut f = options.open(&self.cfg.outbox)?;
        let mut bytes = serde_json::to_vec(line).map_err(std::io::Error::other)?;
        bytes.push(b'\n');
        f.write_all(&bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mailer(dir: &std::path::Path, templates: Option<PathBuf>) -> Mailer {
        Mailer::new(MailConfig {
            smtp_url: None,
            from: "UES <noreply@example.test>".into(),
            templates,
            outbox: dir.join("outbox/mail.jsonl"),
            token_ttl: std::time::Duration::from_secs(900),
            timeout: std::time::Duration::from_secs(5),
        })
        .unwrap()
    }

    #[test]
    fn every_builtin_template_has_a_subject_and_uses_its_token() {
        let dir = tempfile::tempdir().unwrap();
        let m = mailer(dir.path(), None);
        for t in [
            Template::ConfirmEmail,
            Template::UpdateEmail,
            Template::ResetPassword,
            Template::DeleteAccount,
            Template::PlcOperation,
        ] {
            let mail = m
                .render(
                    "a@example.test",
                    t,
                    &[("token", "ABCDE-FGHIJ"), ("handle", "alice.test"), ("host", "pds.test")],
                )
                .unwrap();
            assert!(!mail.subject.is_empty(), "{t:?}");
            assert!(mail.body.contains("ABCDE-FGHIJ"), "{t:?}: {}", mail.body);
            assert!(!mail.body.contains("{{"), "{t:?} left a placeholder: {}", mail.body);
        }
    }

    #[test]
    fn a_template_file_overrides_the_builtin_one() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("reset_password.txt"), "Subject: Reset at {{host}}\n\nCode {{token}}\n")
            .unwrap();
        let m = mailer(dir.path(), Some(dir.path().to_path_buf()));
        let mail = m.render("a@x.test", Template::ResetPassword, &[("token", "T"), ("host", "h.test")]).unwrap();
        assert_eq!(mail.subject, "Reset at h.test");
        assert_eq!(mail.body, "Code T\n");
        // The others stay built in.
        assert!(m.render("a@x.test", Template::ConfirmEmail, &[]).is_ok());
        std::fs::write(dir.path().join("notice.txt"), "no subject here\n\nbody").unwrap();
        assert!(m.render("a@x.test", Template::Notice, &[]).is_err());
    }

    #[test]
    fn outbox_lines_carry_the_token_and_one_address_gets_a_bounded_number() {
        let dir = tempfile::tempdir().unwrap();
        let m = mailer(dir.path(), None);
        for i in 0..MAILS_PER_HOUR {
            m.send_token("Bob@Example.test", Template::ConfirmEmail, &[], || Ok(format!("TOKEN-{i}"))).unwrap();
        }
        let made = std::cell::Cell::new(false);
        let err = m
            .send_token("bob@example.test", Template::ConfirmEmail, &[], || {
                made.set(true);
                Ok("X".into())
            })
            .unwrap_err();
        assert_eq!(err.status, axum::http::StatusCode::TOO_MANY_REQUESTS);
        assert!(!made.get(), "no token is made for a mail that is not sent");
        m.send("carol@example.test", Template::Notice, &[("subject", "Hi"), ("content", "Y")]).unwrap();
        let text = std::fs::read_to_string(dir.path().join("outbox/mail.jsonl")).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), MAILS_PER_HOUR as usize + 1);
        assert_eq!(lines[0]["token"], "TOKEN-0");
        assert_eq!(lines.last().unwrap()["to"], "carol@example.test");
        assert_eq!(lines.last().unwrap()["subject"], "Hi");
        assert!(lines[0]["body"].as_str().unwrap().contains("TOKEN-0"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("outbox/mail.jsonl")).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "only the operator reads the outbox");
    }

    #[test]
    fn bad_configuration_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = mailer(dir.path(), None).cfg;
        cfg.from = "not an address".into();
        assert!(Mailer::new(cfg.clone()).is_err());
        cfg.from = "a@b.test".into();
        cfg.smtp_url = Some("gopher://x".into());
        assert!(Mailer::new(cfg).is_err());
    }
}
