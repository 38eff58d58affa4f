//! Client-server API: account registration and management (`/register`, `/account/*`).

use std::sync::Arc;

use http::StatusCode;
use ruma::api::client::{
    account::{
        change_password, check_registration_token_validity, deactivate, get_3pids, get_username_availability, register,
        register::RegistrationKind, whoami, ThirdPartyIdRemovalStatus,
    },
    uiaa::AuthType,
};

use crate::{
    api::Ruma,
    error::{Error, Result},
    users::{uiaa::Purpose, NewAccount, UsernameProblem},
    Services,
};

fn username_error(problem: UsernameProblem) -> Error {
    match problem {
        UsernameProblem::InUse => Error::matrix(StatusCode::BAD_REQUEST, "M_USER_IN_USE", "User ID already taken"),
        UsernameProblem::Invalid(why) => Error::matrix(StatusCode::BAD_REQUEST, "M_INVALID_USERNAME", why),
    }
}

/// `POST /_matrix/client/v3/register`
///
/// Creates an account behind UIA: `m.login.registration_token` then `m.login.dummy` when a
/// token is configured, otherwise `m.login.dummy` alone; 403 when registration is closed. The username is checked
/// before UIA so a client learns about a taken name at once.
pub async fn register(s: Arc<Services>, req: Ruma<register::v3::Request>) -> Result<register::v3::Response> {
    let body = req.body;
    if !s.config.allow_registration {
        return Err(Error::forbidden("Registration is disabled on this server"));
    }
    if body.kind == RegistrationKind::Guest {
        return Err(Error::matrix(StatusCode::FORBIDDEN, "M_GUEST_ACCESS_FORBIDDEN", "Guest access is disabled"));
    }
    if body.login_type.is_some() {
        return Err(Error::forbidden("Application services are not supported"));
    }
    let localpart = match &body.username {
        // Not trimmed: a name with white space in it is refused, not quietly changed.
        Some(name) => name.to_lowercase(),
        None => s.users.random_localpart(),
    };
    s.users.check_new_localpart(&localpart)?.map_err(username_error)?;

    // Token then dummy, as Synapse offers it: matrix-nio's `register_with_token` expects a
    // second stage after the token, and every other client follows whatever flow it gets.
    let flows = if s.registration_token_required()? {
        vec![vec![AuthType::RegistrationToken, AuthType::Dummy]]
    } else {
        vec![vec![AuthType::Dummy]]
    };
    let done = s.uiaa.check(Purpose::Register, None, &flows, body.auth.as_ref()).await?;
    if let Some(token) = &done.registration_token {
        s.registration_tokens.consume(token)?;
    }

    let password = body.password.clone();
    let users = s.users.clone();
    let user_id = tokio::task::spawn_blocking(move || {
        users.create_account(NewAccount { localpart: &localpart, password: password.as_deref(), admin: None })
    })
    .await
    .map_err(|e| Error::internal(format!("registration task: {e}")))??;

    let mut res = register::v3::Response::new(user_id.clone());
    if !body.inhibit_login {
        let (device_id, token) =
            s.users.login_device(&user_id, body.device_id, body.initial_device_display_name, None)?;
        res.device_id = Some(device_id);
        res.access_token = Some(token);
    }
    Ok(res)
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
    s.users.check_new_localpart(&localpart)?.map_err(username_error)?;
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
    let mut res = whoami::v3::Response::new(caller.user_id.clone(), false);
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
    let caller = req.caller()?.clone();
    let body = req.body;
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

/// `POST /_matrix/client/v3/account/deactivate`
///
/// Behind a password UIA stage. The account keeps its id forever, loses its password,
/// devices, tokens and profile.
pub async fn deactivate(s: Arc<Services>, req: Ruma<deactivate::v3::Request>) -> Result<deactivate::v3::Response> {
    let caller = req.caller()?.clone();
    let flows = vec![vec![AuthType::Password]];
    s.uiaa.check(Purpose::Deactivate, Some(&caller.user_id), &flows, req.body.auth.as_ref()).await?;
    let devices: Vec<String> = s.users.devices(&caller.user_id)?.into_iter().map(|(d, _)| d.to_string()).collect();
    s.users.deactivate(&caller.user_id)?;
    s.keys.forget_devices(&s.rooms, &caller.user_id, &devices)?;
    Ok(deactivate::v3::Response::new(ThirdPartyIdRemovalStatus::NoSupport))
}

/// `GET /_matrix/client/v3/account/3pid`
///
/// Hearth links no email addresses or phone numbers to accounts, so the list is empty
/// (Element's settings page asks for it). Written out by hand: ruma leaves an empty list
/// out, and Element reads `threepids` without a default.
pub async fn get_3pids(
    axum::extract::State(_s): axum::extract::State<Arc<Services>>,
    req: Ruma<get_3pids::v3::Request>,
) -> Result<axum::Json<serde_json::Value>> {
    req.caller()?;
    Ok(axum::Json(serde_json::json!({"threepids": []})))
}
