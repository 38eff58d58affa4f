//! Client-server API: "Adding Account Administrative Contact Information" — the e-mail
//! addresses of an account (`/account/3pid/*`), the validation mails that prove them
//! (`…/email/requestToken`) and the link in those mails. Work in `identity` and
//! `users::validation`.
//!
//! Hearth sends its own validation mails (`smtp_*` settings); without a mail server the
//! `requestToken` endpoints answer `M_THREEPID_DENIED`, as before. Phone numbers are not
//! validated (no SMS gateway): their endpoints answer `M_THREEPID_DENIED` too.
//! Binding at an identity server (`/bind`, `/unbind`) works with or without mail.

use std::sync::Arc;

use axum::{
    body::Bytes,
    extract::{Query, State},
    response::Html,
};
use http::StatusCode;
use ruma::api::client::{account::get_3pids, uiaa::AuthData, uiaa::AuthType};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::{
    api::{caller_of, Ruma},
    error::{Error, Result},
    identity::email::Purpose as MailPurpose,
    users::uiaa::Purpose,
    Services,
};

/// `GET /_matrix/client/v3/account/3pid`. Written out by hand: ruma leaves an empty list
/// out, and Element reads `threepids` without a default.
pub async fn get_3pids(State(s): State<Arc<Services>>, req: Ruma<get_3pids::v3::Request>) -> Result<axum::Json<Value>> {
    let caller = req.caller()?;
    Ok(axum::Json(json!({"threepids": s.identity.list(&caller.user_id)?})))
}

pub fn routes() -> axum::Router<Arc<Services>> {
    use axum::routing::{get, post};
    let mut router = axum::Router::new()
        .route("/_hearth/client/email/validate", get(validate_link))
        .route("/_matrix/client/unstable/account/3pid/bind", post(bind))
        .route("/_matrix/client/unstable/account/3pid/unbind", post(unbind));
    for v in ["r0", "v3"] {
        let p = |rest: &str| format!("/_matrix/client/{v}/{rest}");
        router = router
            .route(&p("account/3pid"), post(add_deprecated))
            .route(&p("account/3pid/add"), post(add))
            .route(&p("account/3pid/bind"), post(bind))
            .route(&p("account/3pid/email/requestToken"), post(request_token_account))
            .route(&p("account/3pid/msisdn/requestToken"), post(no_sms))
            .route(&p("account/3pid/delete"), post(delete))
            .route(&p("account/3pid/unbind"), post(unbind))
            .route(&p("register/email/requestToken"), post(request_token_register))
            .route(&p("register/msisdn/requestToken"), post(no_sms))
            .route(&p("account/password/email/requestToken"), post(request_token_password))
            .route(&p("account/password/msisdn/requestToken"), post(no_sms));
    }
    router
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T> {
    serde_json::from_slice(body).map_err(|e| Error::bad_json(format!("Invalid request: {e}")))
}

async fn no_sms() -> Result<axum::Json<Value>> {
    Err(Error::matrix(StatusCode::FORBIDDEN, "M_THREEPID_DENIED", "This server does not validate phone numbers"))
}

#[derive(Deserialize)]
struct RequestToken {
    client_secret: String,
    email: String,
    send_attempt: u64,
}

/// Starts (or repeats) a validation and sends its mail when there is one to send.
async fn request_token(s: &Services, body: &[u8], purpose: MailPurpose) -> Result<axum::Json<Value>> {
    s.identity.email.require()?;
    let b: RequestToken = parse(body)?;
    let address = crate::identity::canonical("email", &b.email);
    if !address.contains('@') || address.chars().any(char::is_whitespace) {
        return Err(Error::invalid_param(format!("{address} is not an e-mail address")));
    }
    match purpose {
        // Only an address the password may be reset through (`identity::Threepid::recovery`).
        MailPurpose::ResetPassword if s.identity.recovery_owner("email", &address)?.is_none() => {
            return Err(Error::matrix(StatusCode::BAD_REQUEST, "M_THREEPID_NOT_FOUND", "No account has that address"))
        }
        MailPurpose::Register | MailPurpose::AddToAccount if s.identity.owner("email", &address)?.is_some() => {
            return Err(Error::matrix(StatusCode::BAD_REQUEST, "M_THREEPID_IN_USE", "That address is already in use"))
        }
        _ => {}
    }
    let started = s.users.start_validation("email", &address, &b.client_secret, b.send_attempt)?;
    if let Some(token) = &started.token {
        s.identity.email.send_validation(&address, &started.sid, &b.client_secret, token, purpose).await?;
    }
    Ok(axum::Json(json!({"sid": started.sid})))
}

async fn request_token_register(State(s): State<Arc<Services>>, body: Bytes) -> Result<axum::Json<Value>> {
    request_token(&s, &body, MailPurpose::Register).await
}

async fn request_token_password(State(s): State<Arc<Services>>, body: Bytes) -> Result<axum::Json<Value>> {
    request_token(&s, &body, MailPurpose::ResetPassword).await
}

/// Unauthenticated in the spec (the address is added by `/account/3pid/add`, which is not).
async fn request_token_account(State(s): State<Arc<Services>>, body: Bytes) -> Result<axum::Json<Value>> {
    request_token(&s, &body, MailPurpose::AddToAccount).await
}

#[derive(Deserialize)]
struct Link {
    sid: String,
    client_secret: String,
    token: String,
}

/// `GET /_hearth/client/email/validate`: the link in a validation mail.
async fn validate_link(State(s): State<Arc<Services>>, Query(link): Query<Link>) -> (StatusCode, Html<String>) {
    let page = |title: &str, text: &str| {
        Html(format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{title}</title></head><body><h1>{title}</h1><p>{text}</p></body></html>"
    ))
    };
    match s.users.submit_validation(&link.sid, &link.client_secret, &link.token) {
        Ok(()) => (StatusCode::OK, page("Address confirmed", "You may go back to your Matrix client now.")),
        Err(_) => (
            StatusCode::BAD_REQUEST,
            page("Link not valid", "This link is wrong or has expired. Ask your Matrix client for a new mail."),
        ),
    }
}

#[derive(Deserialize)]
struct Creds {
    sid: String,
    client_secret: String,
    #[serde(default)]
    id_server: Option<String>,
    #[serde(default)]
    id_access_token: Option<String>,
}

/// `POST /account/3pid/add`: adds an address this server validated, behind a password UIA
/// stage.
async fn add(State(s): State<Arc<Services>>, parts: http::request::Parts, body: Bytes) -> Result<axum::Json<Value>> {
    let caller = caller_of(&s, &parts)?;
    let mut raw: serde_json::Map<String, Value> = parse(&body)?;
    let auth: Option<AuthData> = match raw.remove("auth") {
        Some(a) => Some(serde_json::from_value(a).map_err(|e| Error::bad_json(format!("Invalid auth: {e}")))?),
        None => None,
    };
    let creds: Creds = serde_json::from_value(Value::Object(raw)).map_err(|e| Error::bad_json(e.to_string()))?;
    if caller.appservice.is_none() {
        let flows = vec![vec![AuthType::Password]];
        s.uiaa.check(Purpose::AddThreepid, Some(&caller.user_id), &flows, auth.as_ref()).await?;
    }
    let (medium, address, at) = s.users.validated(&creds.sid, &creds.client_secret)?;
    s.identity.add(&caller.user_id, &medium, &address, at, true)?;
    Ok(axum::Json(json!({})))
}

#[derive(Deserialize)]
struct AddDeprecated {
    #[serde(alias = "threePidCreds")]
    three_pid_creds: Creds,
    #[serde(default)]
    bind: bool,
}

/// `POST /account/3pid` (deprecated, still sent by older clients and sytest): adds an
/// address this server validated and, with `bind`, binds it at the identity server. It
/// asks for no password, as on Synapse, so the address serves for login but not for a
/// password reset (see `identity::Threepid::recovery`).
async fn add_deprecated(
    State(s): State<Arc<Services>>,
    parts: http::request::Parts,
    body: Bytes,
) -> Result<axum::Json<Value>> {
    let caller = caller_of(&s, &parts)?;
    let b: AddDeprecated = parse(&body)?;
    let creds = b.three_pid_creds;
    // The spec documents 403 for credentials that do not check out here.
    let (medium, address, at) = s.users.validated(&creds.sid, &creds.client_secret).map_err(|e| match e {
        Error::Matrix { errcode: "M_THREEPID_AUTH_FAILED", message, .. } => {
            Error::matrix(StatusCode::FORBIDDEN, "M_THREEPID_AUTH_FAILED", message)
        }
        e => e,
    })?;
    s.identity.add(&caller.user_id, &medium, &address, at, false)?;
    if b.bind {
        let (Some(id_server), Some(token)) = (creds.id_server.as_deref(), creds.id_access_token.as_deref()) else {
            return Err(Error::missing_param("Binding needs id_server and id_access_token"));
        };
        s.identity.bind(&caller.user_id, id_server, token, &creds.sid, &creds.client_secret).await?;
    }
    Ok(axum::Json(json!({})))
}

#[derive(Deserialize)]
struct Bind {
    id_server: String,
    id_access_token: String,
    sid: String,
    client_secret: String,
}

/// `POST /account/3pid/bind`: binds an address the identity server validated.
async fn bind(State(s): State<Arc<Services>>, parts: http::request::Parts, body: Bytes) -> Result<axum::Json<Value>> {
    let caller = caller_of(&s, &parts)?;
    let b: Bind = parse(&body)?;
    s.identity.bind(&caller.user_id, &b.id_server, &b.id_access_token, &b.sid, &b.client_secret).await?;
    Ok(axum::Json(json!({})))
}

#[derive(Deserialize)]
struct Remove {
    medium: String,
    address: String,
    #[serde(default)]
    id_server: Option<String>,
}

/// `POST /account/3pid/delete`: removes an address from the account and unbinds it.
async fn delete(State(s): State<Arc<Services>>, parts: http::request::Parts, body: Bytes) -> Result<axum::Json<Value>> {
    let caller = caller_of(&s, &parts)?;
    let b: Remove = parse(&body)?;
    let result = s.identity.delete(&caller.user_id, &b.medium, &b.address, b.id_server.as_deref()).await?;
    Ok(axum::Json(json!({"id_server_unbind_result": result})))
}

/// `POST /account/3pid/unbind`: unbinds an address at identity servers, keeping it on the
/// account.
async fn unbind(State(s): State<Arc<Services>>, parts: http::request::Parts, body: Bytes) -> Result<axum::Json<Value>> {
    let caller = caller_of(&s, &parts)?;
    let b: Remove = parse(&body)?;
    let result = s.identity.unbind(&caller.user_id, &b.medium, &b.address, b.id_server.as_deref()).await?;
    Ok(axum::Json(json!({"id_server_unbind_result": result})))
}
