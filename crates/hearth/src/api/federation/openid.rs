//! Server-server API: `GET /_matrix/federation/v1/openid/userinfo`, where a third party
//! exchanges a user's OpenID token for the user's id. Unauthenticated by design: the token
//! is the credential.

use std::sync::Arc;

use ruma::api::federation::openid::get_openid_userinfo;

use crate::{
    api::Ruma,
    error::{Error, Result},
    Services,
};

/// `GET /_matrix/federation/v1/openid/userinfo`
pub async fn get_openid_userinfo(
    s: Arc<Services>,
    req: Ruma<get_openid_userinfo::v1::Request>,
) -> Result<get_openid_userinfo::v1::Response> {
    match s.users.openid_user(&req.body.access_token)? {
        Some(user) => Ok(get_openid_userinfo::v1::Response::new(user)),
        None => {
            Err(Error::matrix(http::StatusCode::UNAUTHORIZED, "M_UNKNOWN_TOKEN", "Unknown or expired OpenID token"))
        }
    }
}
