//! Client-server API: login and logout.

use std::sync::Arc;

use ruma::api::client::{
    session::{
        get_login_types::v3::{self as get_login_types, ApplicationServiceLoginType, LoginType, PasswordLoginType},
        login::v3::{self as login, DiscoveryInfo, HomeserverInfo, LoginInfo},
        logout, logout_all,
    },
    uiaa::UserIdentifier,
};

use crate::{
    api::Ruma,
    error::{Error, Result},
    Services,
};

/// `GET /_matrix/client/v3/login`
pub async fn get_login_types(
    s: Arc<Services>,
    _req: Ruma<get_login_types::Request>,
) -> Result<get_login_types::Response> {
    let mut types = vec![LoginType::Password(PasswordLoginType::new())];
    if !s.appservices.is_empty() {
        types.push(LoginType::ApplicationService(ApplicationServiceLoginType::new()));
    }
    Ok(get_login_types::Response::new(types))
}

/// The same refusal for an unknown user and a wrong password, so login does not reveal
/// who has an account.
fn bad_credentials() -> Error {
    Error::forbidden("Invalid username or password")
}

/// `POST /_matrix/client/v3/login`
///
/// `m.login.password` with a localpart or a full user id of this server, given as an
/// `m.id.user` identifier or the legacy `user` field.
pub async fn login(s: Arc<Services>, req: Ruma<login::Request>) -> Result<login::Response> {
    let ip = req.client_ip.map(|ip| ip.to_string());
    let caller = req.caller;
    let body = req.body;
    let user_id = match &body.login_info {
        LoginInfo::Password(password) => password_login(&s, password).await?,
        LoginInfo::ApplicationService(info) => appservice_login(&s, caller.as_ref(), info)?,
        _ => return Err(Error::matrix(http::StatusCode::BAD_REQUEST, "M_UNKNOWN", "Unsupported login type")),
    };
    let (device_id, token) = s.users.login_device(&user_id, body.device_id, body.initial_device_display_name, ip)?;
    s.keys.note_local_device_change(&s.rooms, &user_id, device_id.as_str())?;
    let mut res = login::Response::new(user_id, token, device_id);
    // Deprecated in the spec, but admin tools (synapse-admin) build new users' ids from it.
    #[allow(deprecated)]
    {
        res.home_server = Some(s.config.server_name.clone());
    }
    if s.config.allow_well_known {
        res.well_known = Some(DiscoveryInfo::new(HomeserverInfo::new(s.config.client_base_url(s.listening_port()))));
    }
    Ok(res)
}

/// The user an `m.id.user` identifier (or the legacy `user` field) names.
fn named_user(identifier: Option<&UserIdentifier>, user: Option<&String>) -> Result<String> {
    match (identifier, user) {
        (Some(UserIdentifier::Matrix(id)), _) => Ok(id.user.clone()),
        (None, Some(user)) => Ok(user.clone()),
        (Some(_), _) => Err(Error::forbidden("Only user id login is supported")),
        (None, None) => Err(Error::missing_param("identifier is required")),
    }
}

/// The account an e-mail address (an `m.id.thirdparty` identifier, or the legacy
/// `medium`/`address` fields) belongs to, if the login names one.
fn threepid_user(s: &Services, password: &login::Password) -> Result<Option<Option<ruma::OwnedUserId>>> {
    #[allow(deprecated)]
    let (medium, address) = match (&password.identifier, &password.medium, &password.address) {
        (Some(UserIdentifier::Email(e)), _, _) => ("email", e.address.as_str()),
        (None, Some(medium), Some(address)) => (medium.as_str(), address.as_str()),
        _ => return Ok(None),
    };
    Ok(Some(s.identity.owner(medium, address)?))
}

async fn password_login(s: &Services, password: &login::Password) -> Result<ruma::OwnedUserId> {
    let user_id = match threepid_user(s, password)? {
        Some(owner) => owner.ok_or_else(bad_credentials)?,
        None => {
            #[allow(deprecated)]
            let typed = named_user(password.identifier.as_ref(), password.user.as_ref())?;
            s.users.parse_login_user(&typed).ok_or_else(bad_credentials)?
        }
    };
    let users = s.users.clone();
    let (uid, pw) = (user_id.clone(), password.password.clone());
    let ok = tokio::task::spawn_blocking(move || users.check_password(&uid, &pw))
        .await
        .map_err(|e| Error::internal(format!("password check task: {e}")))??;
    if !ok {
        return Err(bad_credentials());
    }
    Ok(user_id)
}

/// `m.login.application_service`: an application service (its token) logs in a user of
/// its namespaces that exists.
fn appservice_login(
    s: &Services,
    caller: Option<&crate::api::Caller>,
    info: &login::ApplicationService,
) -> Result<ruma::OwnedUserId> {
    let service = caller
        .and_then(|c| c.appservice.as_deref())
        .and_then(|id| s.appservices.by_id(id))
        .ok_or_else(|| Error::forbidden("Only an application service may log in with m.login.application_service"))?;
    #[allow(deprecated)]
    let typed = named_user(info.identifier.as_ref(), info.user.as_ref())?;
    let user_id = s.users.parse_login_user(&typed).ok_or_else(bad_credentials)?;
    if !service.is_user_in_namespace(&user_id) {
        return Err(Error::forbidden("This user is not in the application service's namespaces"));
    }
    if !s.users.is_active(&user_id)? {
        return Err(bad_credentials());
    }
    Ok(user_id)
}

/// `POST /_matrix/client/v3/logout`
///
/// Revokes the token and deletes its device.
pub async fn logout(s: Arc<Services>, req: Ruma<logout::v3::Request>) -> Result<logout::v3::Response> {
    let caller = req.caller()?;
    s.users.delete_devices(&caller.user_id, std::slice::from_ref(&caller.device_id))?;
    s.keys.forget_devices(&s.rooms, &caller.user_id, &[caller.device_id.to_string()])?;
    Ok(logout::v3::Response::new())
}

/// `POST /_matrix/client/v3/logout/all`
pub async fn logout_all(s: Arc<Services>, req: Ruma<logout_all::v3::Request>) -> Result<logout_all::v3::Response> {
    let caller = req.caller()?;
    let devices: Vec<String> = s.users.devices(&caller.user_id)?.into_iter().map(|(d, _)| d.to_string()).collect();
    s.users.delete_all_devices_except(&caller.user_id, None)?;
    s.keys.forget_devices(&s.rooms, &caller.user_id, &devices)?;
    Ok(logout_all::v3::Response::new())
}

/// `POST /_matrix/client/v3/refresh`: Hearth issues no refresh tokens (access tokens do
/// not expire, and logins asking for `refresh_token` get none), so every refresh token is
/// unknown: 401 `M_UNKNOWN_TOKEN`, which tells a client to log in again.
async fn refresh() -> Result<axum::Json<serde_json::Value>> {
    Err(Error::matrix(http::StatusCode::UNAUTHORIZED, "M_UNKNOWN_TOKEN", "Unknown refresh token")
        .with_field("soft_logout", serde_json::Value::Bool(false)))
}

/// The session endpoints written as plain routes.
pub fn routes() -> axum::Router<Arc<Services>> {
    axum::Router::new()
        .route("/_matrix/client/v3/refresh", axum::routing::post(refresh))
        .route("/_matrix/client/v1/refresh", axum::routing::post(refresh))
}
