//! Validation mails: the mail with a link that proves a user reads an address, sent through
//! the operator's mail server (`smtp_*` settings) with lettre over rustls.
//!
//! Anyone may ask for such a mail, so they are limited: five an hour to one address, sixty
//! a minute in all (429 `M_LIMIT_EXCEEDED` beyond).
//!
//! The link leads to this server (`well_known.client`, else `https://SERVER_NAME`) at
//! `/_hearth/client/email/validate`, which marks the session validated; the link carries
//! the session id, the client's secret and the token, as Synapse's links do. Without a
//! mail server configured nothing is sent, and the operations that need a mail answer
//! `M_THREEPID_DENIED`.

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use parking_lot::Mutex;

use lettre::{
    message::{header::ContentType, Mailbox},
    transport::smtp::{authentication::Credentials, client::Tls, client::TlsParameters},
    AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
};

use crate::{
    config::Config,
    error::{Error, Result},
};

/// How long the mail server has for one mail.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// Anyone may ask for a validation mail (registration, password reset): at most this many
/// go to one address an hour, and this many leave the server a minute, so that Hearth
/// cannot be made to flood a mailbox or the mail server.
const PER_ADDRESS_PER_HOUR: usize = 5;
const PER_MINUTE: usize = 60;
const HOUR: Duration = Duration::from_secs(3600);
const MINUTE: Duration = Duration::from_secs(60);

/// What a validation mail is for: the wording of its text.
#[derive(Debug, Clone, Copy)]
pub enum Purpose {
    Register,
    AddToAccount,
    ResetPassword,
}

pub struct Email {
    transport: Option<AsyncSmtpTransport<Tokio1Executor>>,
    from: Option<Mailbox>,
    link_base: String,
    server_name: String,
    /// When mails were sent, by address and in all (see [`PER_ADDRESS_PER_HOUR`]).
    sent: Mutex<Sent>,
}

#[derive(Default)]
struct Sent {
    by_address: HashMap<String, VecDeque<Instant>>,
    all: VecDeque<Instant>,
}

impl Sent {
    /// Records a mail to `address` now, unless that would pass a limit.
    fn admit(&mut self, address: &str) -> bool {
        let now = Instant::now();
        while self.all.front().is_some_and(|t| now.duration_since(*t) > MINUTE) {
            self.all.pop_front();
        }
        self.by_address.retain(|_, times| {
            while times.front().is_some_and(|t| now.duration_since(*t) > HOUR) {
                times.pop_front();
            }
            !times.is_empty()
        });
        let times = self.by_address.entry(address.to_owned()).or_default();
        if times.len() >= PER_ADDRESS_PER_HOUR || self.all.len() >= PER_MINUTE {
            return false;
        }
        times.push_back(now);
        self.all.push_back(now);
        true
    }
}

impl Email {
    /// The mailer of `config` (none when `smtp_host` is unset). A bad setting is an
    /// error naming it.
    pub fn from_config(config: &Config) -> std::result::Result<Self, String> {
        let link_base = config
            .well_known
            .client
            .clone()
            .unwrap_or_else(|| format!("https://{}", config.server_name))
            .trim_end_matches('/')
            .to_owned();
        let server_name = config.server_name.to_string();
        let Some(host) = config.smtp_host.as_deref().filter(|h| !h.is_empty()) else {
            return Ok(Email { transport: None, from: None, link_base, server_name, sent: Default::default() });
        };
        let tls = match config.smtp_tls.as_str() {
            "none" => Tls::None,
            "starttls" | "tls" => {
                let params = TlsParameters::new(host.to_owned()).map_err(|e| format!("smtp_host: {e}"))?;
                if config.smtp_tls == "tls" {
                    Tls::Wrapper(params)
                } else {
                    Tls::Required(params)
                }
            }
            other => return Err(format!("smtp_tls must be starttls, tls or none, not {other}")),
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
            .port(config.smtp_port)
            .tls(tls)
            .timeout(Some(SEND_TIMEOUT));
        if let (Some(user), Some(pass)) = (&config.smtp_username, &config.smtp_password) {
            builder = builder.credentials(Credentials::new(user.clone(), pass.clone()));
        }
        let from: Mailbox = match &config.email_from {
            Some(from) => from.parse().map_err(|e| format!("email_from {from:?}: {e}"))?,
            // The server name's host, without a port; an address literal is no mail domain.
            None => format!("Hearth <noreply@{}>", config.server_name.host())
                .parse()
                .or_else(|_| "Hearth <noreply@localhost>".parse())
                .map_err(|e| format!("the default email_from: {e}"))?,
        };
        Ok(Email {
            transport: Some(builder.build()),
            from: Some(from),
            link_base,
            server_name,
            sent: Default::default(),
        })
    }

    /// Whether mails can be sent at all.
    pub fn enabled(&self) -> bool {
        self.transport.is_some()
    }

    /// 403 `M_THREEPID_DENIED` unless mails can be sent.
    pub fn require(&self) -> Result<()> {
        match self.enabled() {
            true => Ok(()),
            false => Err(Error::matrix(
                http::StatusCode::FORBIDDEN,
                "M_THREEPID_DENIED",
                "This server sends no e-mail: it cannot validate addresses",
            )),
        }
    }

    /// Sends the validation mail of a session to `address`.
    pub async fn send_validation(
        &self,
        address: &str,
        sid: &str,
        client_secret: &str,
        token: &str,
        purpose: Purpose,
    ) -> Result<()> {
        self.require()?;
        let (Some(transport), Some(from)) = (&self.transport, &self.from) else { return Ok(()) };
        let to: Mailbox =
            address.parse().map_err(|_| Error::invalid_param(format!("{address} is not an e-mail address")))?;
        if !self.sent.lock().admit(address) {
            return Err(Error::matrix(
                http::StatusCode::TOO_MANY_REQUESTS,
                "M_LIMIT_EXCEEDED",
                "Too many validation mails were asked for; try again later",
            ));
        }
        let mut link = url::Url::parse(&format!("{}/_hearth/client/email/validate", self.link_base))
            .map_err(|e| Error::internal(format!("the validation link's base is not a URL: {e}")))?;
        link.query_pairs_mut()
            .append_pair("sid", sid)
            .append_pair("client_secret", client_secret)
            .append_pair("token", token);
        let server = &self.server_name;
        let (subject, what) = match purpose {
            Purpose::Register => (format!("Confirm your address for {server}"), "to register an account"),
            Purpose::AddToAccount => {
                (format!("Confirm your address for {server}"), "to add this address to your account")
            }
            Purpose::ResetPassword => (format!("Reset your password on {server}"), "to reset your password"),
        };
        let body = format!(
            "Someone asked {server} {what}. If that was you, open this link:\n\n{link}\n\nIf not, ignore this mail.\n"
        );
        let mail = Message::builder()
            .from(from.clone())
            .to(to)
            .subject(subject)
            .header(ContentType::TEXT_PLAIN)
            .body(body)
            .map_err(|e| Error::invalid_param(format!("Cannot write that mail: {e}")))?;
        transport.send(mail).await.map_err(|e| {
            tracing::warn!(error = %e, "could not send a validation mail");
            Error::unavailable("The mail server did not take the mail; try again later")
        })?;
        Ok(())
    }
}
