//! Client-server API: OpenID tokens (`/user/{userId}/openid/request_token`), which widgets,
//! integration managers and Element Call use to learn who the user is.

use std::{sync::Arc, time::Duration};

use ruma::api::client::account::request_openid_token;

use crate::{
    api::Ruma,
    error::{Error, Result},
    users::openid::OPENID_TOKEN_LIFETIME_MS,
    Services,
};

/// `POST /_matrix/client/v3/user/{userId}/openid/request_token`
pub async fn request_openid_token(
    s: Arc<Services>,
    req: Ruma<request_openid_token::v3::Request>,
) -> Result<request_openid_token::v3::Response> {
    let caller = req.caller()?;
    if caller.user_id != req.body.user_id {
        return Err(Error::forbidden("You can only request an OpenID token for yourself"));
    }
    let token = s.users.issue_openid_token(&caller.user_id)?;
    Ok(request_openid_token::v3::Response::new(
        token,
        ruma::authentication::TokenType::Bearer,
        s.config.server_name.clone(),
        Duration::from_millis(OPENID_TOKEN_LIFETIME_MS),
    ))
}
