//! Client-server API: account registration and management (`/register`, `/account/*`).

use std::sync::Arc;

use http::StatusCode;
use ruma::api::client::{
    account::{
        change_password, check_registration_token_validity, deactivate, get_username_availability, register,
        register::RegistrationKind, whoami, ThirdPartyIdRemovalStatus,
    },
    uiaa::AuthType,
};
use ruma::{OwnedDeviceId, OwnedUserId};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{
    api::Ruma,
    error::{Error, Result},
    users::{
        uiaa::{Operation, Purpose},
        NewAccount, UsernameProblem,
    },
    Services,
};

/// What a registration asks for: the request's body without `auth`. A UIA session
/// remembers it (see `users::uiaa`), so the final request may carry `auth` alone.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Params {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    device_id: Option<OwnedDeviceId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    initial_device_display_name: Option<String>,
    #[serde(default)]
    inhibit_login: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    guest_access_token: Option<String>,
}

/// `POST /_matrix/client/v3/register`
///
/// Creates an account behind UIA: `m.login.registration_token` then `m.login.dummy` when a
/// token is configured, otherwise `m.login.dummy` alone; 403 when registration is closed. The username is checked
/// before UIA so a client learns about a taken name at once. The parameters of the request
/// that opened the UIA session count when the final request sends none, and retrying a
/// request that completed logs the same account in again (as Synapse does; sytest and
/// clients retrying after a lost response rely on both). With `guest_access_token` a guest
/// account becomes a full one; `kind=guest` makes a guest account (`allow_guest_access`).
///
/// Written as JSON here: with `inhibit_login` the answer has no `device_id` key at all (ruma
/// would send `null`, which clients and sytest read as a device).
pub async fn register(
    axum::extract::State(s): axum::extract::State<Arc<Services>>,
    req: Ruma<register::v3::Request>,
) -> Result<axum::Json<Value>> {
    let mut params: Map<String, Value> = serde_json::from_slice(&req.json).unwrap_or_default();
    params.remove("auth");
    let ip = req.client_ip.map(|ip| ip.to_string());
    let body = req.body;
    if body.kind == RegistrationKind::Guest {
        return register_guest(&s, body.initial_device_display_name, ip);
    }
    if body.login_type.is_some() || req.caller.as_ref().is_some_and(|c| c.appservice.is_some()) {
        return register_appservice_user(&s, req.caller.as_ref(), params, ip);
    }
    if !s.config.allow_registration {
        return Err(Error::forbidden("Registration is disabled on this server"));
    }
    if let Some(session) = body.auth.as_ref().and_then(|a| a.session()) {
        if let Some((user_id, stored)) = s.uiaa.registered_by(session) {
            let stored: Params = serde_json::from_value(Value::Object(stored)).unwrap_or_default();
            return log_in_registered(&s, user_id, stored, ip);
        }
    }
    // What this request names is checked before UIA: a taken name or someone else's guest
    // account is reported at once.
    check_username(&s, body.username.as_deref(), body.guest_access_token.as_deref())?;

    // Token then dummy, as Synapse offers it: matrix-nio's `register_with_token` expects a
    // second stage after the token, and every other client follows whatever flow it gets.
    // With a mail server, registering with a validated e-mail address is a flow of its own
    // (after the token, when one is required).
    let token_required = s.registration_token_required()?;
    let mut flows = if token_required {
        vec![vec![AuthType::RegistrationToken, AuthType::Dummy]]
    } else {
        vec![vec![AuthType::Dummy]]
    };
    if s.identity.email.enabled() {
        flows.push(match token_required {
            true => vec![AuthType::RegistrationToken, AuthType::EmailIdentity],
            false => vec![AuthType::EmailIdentity],
        });
    }
    let op = Operation { purpose: Purpose::Register, subject: String::new(), user: None, params };
    let done = s.uiaa.check_bound(op, &flows, body.auth.as_ref()).await?;
    let params: Params = serde_json::from_value(Value::Object(done.params))
        .map_err(|e| Error::bad_json(format!("Invalid registration parameters: {e}")))?;
    // The remembered parameters may name what this request did not: check them again.
    check_username(&s, params.username.as_deref(), params.guest_access_token.as_deref())?;
    if let Some((medium, address, _)) = &done.threepid {
        if s.identity.owner(medium, address)?.is_some() {
            return Err(Error::matrix(StatusCode::BAD_REQUEST, "M_THREEPID_IN_USE", "That address is already in use"));
        }
    }
    if let Some(token) = &done.registration_token {
        s.registration_tokens.consume(token)?;
    }

    let users = s.users.clone();
    let password = params.password.clone();
    let guest = match &params.guest_access_token {
        Some(token) => Some(s.users.authenticate(token)?.user_id),
        None => None,
    };
    let localpart = match &params.username {
        // Not trimmed: a name with white space in it is refused, not quietly changed.
        Some(name) => name.to_lowercase(),
        None => s.users.random_localpart(),
    };
    let user_id = tokio::task::spawn_blocking(move || match guest {
        Some(user_id) => users.upgrade_guest(&user_id, password.as_deref()).map(|()| user_id),
        None => users.create_account(NewAccount {
            localpart: &localpart,
            password: password.as_deref(),
            admin: None,
            guest: false,
            appservice: false,
        }),
    })
    .await
    .map_err(|e| Error::internal(format!("registration task: {e}")))??;
    if let Some((medium, address, at)) = &done.threepid {
        s.identity.add(&user_id, medium, address, *at, true)?;
    }
    s.uiaa.set_registered(&done.session, &user_id);
    log_in_registered(&s, user_id, params, ip)
}

/// `POST /register` with `type: m.login.application_service`: an application service
/// creates a user of its namespaces, without UIA (and whether or not registration is open).
fn register_appservice_user(
    s: &Services,
    caller: Option<&crate::api::Caller>,
    params: Map<String, Value>,
    ip: Option<String>,
) -> Result<axum::Json<Value>> {
    let service = caller
        .and_then(|c| c.appservice.as_deref())
        .and_then(|id| s.appservices.by_id(id))
        .ok_or_else(|| Error::forbidden("Only an application service may register with m.login.application_service"))?;
    let params: Params = serde_json::from_value(Value::Object(params))
        .map_err(|e| Error::bad_json(format!("Invalid registration parameters: {e}")))?;
    let name =
        params.username.as_deref().ok_or_else(|| Error::invalid_param("An application service names the user"))?;
    // A full user id is taken for its localpart, as Synapse does.
    let localpart = match ruma::UserId::parse(name) {
        Ok(user) if user.server_name() == s.config.server_name => user.localpart().to_owned(),
        _ => name.to_lowercase(),
    };
    s.users.check_new_localpart(&localpart)?.map_err(UsernameProblem::into_error)?;
    let user_id = s.users.user_id(&localpart)?;
    if !service.is_user_in_namespace(&user_id) {
        return Err(Error::matrix(
            StatusCode::BAD_REQUEST,
            "M_EXCLUSIVE",
            "This user id is not in the application service's namespaces",
        ));
    }
    s.appservices.check_user_free(&user_id, Some(service.id()))?;
    let user_id = s.users.create_account(NewAccount {
        localpart: &localpart,
        password: None,
        admin: Some(false),
        guest: false,
        appservice: true,
    })?;
    log_in_registered(s, user_id, params, ip)
}

/// The checks of a requested username: free, or (with `guest_access_token`) the localpart
/// of that same guest account.
fn check_username(s: &Services, username: Option<&str>, guest_access_token: Option<&str>) -> Result<()> {
    match (guest_access_token, username) {
        (Some(token), name) => {
            let caller = s.users.authenticate(token)?;
            if !caller.guest {
                return Err(Error::forbidden("guest_access_token is not a guest's access token"));
            }
            if name.is_some_and(|n| n.to_lowercase() != caller.user_id.localpart()) || name.is_none() {
                return Err(Error::forbidden("A guest can only register its own user id"));
            }
            Ok(())
        }
        (None, Some(name)) => {
            let localpart = name.to_lowercase();
            s.users.check_new_localpart(&localpart)?.map_err(UsernameProblem::into_error)?;
            s.appservices.check_user_free(&s.users.user_id(&localpart)?, None)
        }
        (None, None) => Ok(()),
    }
}

/// The answer to a registration: the account, logged in on a device unless
/// `inhibit_login`.
fn log_in_registered(
    s: &Services,
    user_id: OwnedUserId,
    params: Params,
    ip: Option<String>,
) -> Result<axum::Json<Value>> {
    let mut res = serde_json::json!({"user_id": user_id});
    if !params.inhibit_login {
        let (device_id, token) =
            s.users.login_device(&user_id, params.device_id, params.initial_device_display_name, ip)?;
        res["device_id"] = serde_json::json!(device_id);
        res["access_token"] = serde_json::json!(token);
    }
    Ok(axum::Json(res))
}

/// Attempts at a free guest localpart before giving up (16 random digits: never needed).
const GUEST_ID_ATTEMPTS: usize = 8;

/// `POST /register?kind=guest`: a guest account, logged in, without UIA (as Synapse).
fn register_guest(s: &Services, display_name: Option<String>, ip: Option<String>) -> Result<axum::Json<Value>> {
    if !s.config.allow_guest_access {
        return Err(Error::matrix(StatusCode::FORBIDDEN, "M_GUEST_ACCESS_FORBIDDEN", "Guest access is disabled"));
    }
    for _ in 0..GUEST_ID_ATTEMPTS {
        let localpart = s.users.guest_localpart();
        if s.users.check_new_localpart(&localpart)?.is_err() {
            continue;
        }
        let user_id = s.users.create_account(NewAccount {
            localpart: &localpart,
            password: None,
            admin: None,
            guest: true,
            appservice: false,
        })?;
        let params = Params { initial_device_display_name: display_name, ..Params::default() };
        return log_in_registered(s, user_id, params, ip);
    }
    Err(Error::internal("no free guest user id found"))
}

/// `GET /_matrix/client/v3/register/available`
pub async fn get_username_availability(
    s: Arc<Services>,
    req: Ruma<get_username_availability::v3::Request>,
) -> Result<get_username_availability::v3::Response> {
    if !s.config.allow_registration {
        return Err(Error::forbidden("Registration is disabled on this server"));
    }
    let localpart = req.body.username.to_lowercase();
    s.users.check_new_localpart(&localpart)?.map_err(UsernameProblem::into_error)?;
    s.appservices.check_user_free(&s.users.user_id(&localpart)?, None)?;
    Ok(get_username_availability::v3::Response::new(true))
}

/// `GET /_matrix/client/v1/register/m.login.registration_token/validity`
pub async fn check_registration_token_validity(
    s: Arc<Services>,
    req: Ruma<check_registration_token_validity::v1::Request>,
) -> Result<check_registration_token_validity::v1::Response> {
    if !s.config.allow_registration {
        return Err(Error::forbidden("Registration is disabled on this server"));
    }
    Ok(check_registration_token_validity::v1::Response::new(s.registration_token_valid(&req.body.token)?))
}

/// `GET /_matrix/client/v3/account/whoami`
pub async fn whoami(_s: Arc<Services>, req: Ruma<whoami::v3::Request>) -> Result<whoami::v3::Response> {
    let caller = req.caller()?;
    let mut res = whoami::v3::Response::new(caller.user_id.clone(), caller.guest);
    res.device_id = Some(caller.device_id.clone());
    Ok(res)
}

/// `POST /_matrix/client/v3/account/password`
///
/// Behind a password UIA stage. With `logout_devices` (the default) every other device is
/// signed out.
pub async fn change_password(
    s: Arc<Services>,
    req: Ruma<change_password::v3::Request>,
) -> Result<change_password::v3::Response> {
    let body = req.body;
    let Some(caller) = req.caller.clone() else {
        return reset_password(&s, body).await;
    };
    let flows = vec![vec![AuthType::Password]];
    s.uiaa.check(Purpose::ChangePassword, Some(&caller.user_id), &flows, body.auth.as_ref()).await?;
    let users = s.users.clone();
    let user_id = caller.user_id.clone();
    let password = body.new_password;
    tokio::task::spawn_blocking(move || users.set_password(&user_id, &password))
        .await
        .map_err(|e| Error::internal(format!("password task: {e}")))??;
    if body.logout_devices {
        let others: Vec<String> = s
            .users
            .devices(&caller.user_id)?
            .into_iter()
            .map(|(d, _)| d.to_string())
            .filter(|d| d.as_str() != caller.device_id.as_str())
            .collect();
        s.users.delete_all_devices_except(&caller.user_id, Some(&caller.device_id))?;
        s.keys.forget_devices(&s.rooms, &caller.user_id, &others)?;
    }
    Ok(change_password::v3::Response::new())
}

/// `POST /account/password` without an access token: a password reset, proved by the
/// validation of an address of the account (`m.login.email.identity`). Every device is
/// signed out unless `logout_devices` is false.
async fn reset_password(s: &Services, body: change_password::v3::Request) -> Result<change_password::v3::Response> {
    s.identity.email.require()?;
    let flows = vec![vec![AuthType::EmailIdentity]];
    let done = s.uiaa.check(Purpose::ResetPassword, None, &flows, body.auth.as_ref()).await?;
    let (medium, address, _) = done.threepid.ok_or_else(|| Error::forbidden("No address was validated"))?;
    let user_id = s
        .identity
        .recovery_owner(&medium, &address)?
        .ok_or_else(|| Error::matrix(StatusCode::BAD_REQUEST, "M_THREEPID_NOT_FOUND", "No account has that address"))?;
    let users = s.users.clone();
    let (uid, password) = (user_id.clone(), body.new_password);
    tokio::task::spawn_blocking(move || users.set_password(&uid, &password))
        .await
        .map_err(|e| Error::internal(format!("password task: {e}")))??;
    if body.logout_devices {
        let all: Vec<String> = s.users.devices(&user_id)?.into_iter().map(|(d, _)| d.to_string()).collect();
        s.users.delete_all_devices_except(&user_id, None)?;
        s.keys.forget_devices(&s.rooms, &user_id, &all)?;
    }
    Ok(change_password::v3::Response::new())
}

/// `POST /_matrix/client/v3/account/deactivate`
///
/// Behind a password UIA stage. The account keeps its id forever, loses its password,
/// devices, tokens and profile, and leaves its rooms; with `erase`, its messages are
/// hidden from those who were not there to see them (`rooms::erasure`).
pub async fn deactivate(s: Arc<Services>, req: Ruma<deactivate::v3::Request>) -> Result<deactivate::v3::Response> {
    let caller = req.caller()?.clone();
    // An application service deactivates the users it masquerades as without UIA.
    if caller.appservice.is_none() {
        let flows = vec![vec![AuthType::Password]];
        s.uiaa.check(Purpose::Deactivate, Some(&caller.user_id), &flows, req.body.auth.as_ref()).await?;
    }
    let unbound = s.identity.remove_all(&caller.user_id).await?;
    s.admin.deactivate(&caller.user_id, req.body.erase)?;
    let status = match unbound {
        "success" => ThirdPartyIdRemovalStatus::Success,
        _ => ThirdPartyIdRemovalStatus::NoSupport,
    };
    Ok(deactivate::v3::Response::new(status))
}
