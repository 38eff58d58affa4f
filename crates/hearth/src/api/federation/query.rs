//! Server-server API: queries (`/_matrix/federation/v1/query/*`) answered from this
//! server's own data.

use std::sync::Arc;

use ruma::api::federation::query::{get_profile_information, get_room_information};

use crate::{
    api::Ruma,
    error::{Error, Result},
    Services,
};

/// `GET /_matrix/federation/v1/query/profile`
///
/// A local user's public profile (display name, avatar, other fields), or one field of it.
/// 404 for users of other servers and for users that do not exist here.
pub async fn get_profile_information(
    s: Arc<Services>,
    req: Ruma<get_profile_information::v1::Request>,
) -> Result<get_profile_information::v1::Response> {
    let _origin = req.origin()?;
    let user = &req.body.user_id;
    if user.server_name() != s.config.server_name {
        return Err(Error::not_found("No such user on this server"));
    }
    let field = req.body.field.as_ref().map(|f| f.as_str().to_owned());
    let fields =
        crate::federation::query::profile(&s.users, None, &s.config.server_name, user, field.as_deref()).await?;
    let mut res = get_profile_information::v1::Response::new();
    for (field, value) in fields {
        res.set(field, value);
    }
    Ok(res)
}

/// `GET /_matrix/federation/v1/query/directory`
///
/// The room a local alias names, with this server to join through.
pub async fn get_room_information(
    s: Arc<Services>,
    req: Ruma<get_room_information::v1::Request>,
) -> Result<get_room_information::v1::Response> {
    let _origin = req.origin()?;
    let alias = &req.body.room_alias;
    if alias.server_name() != s.config.server_name {
        return Err(Error::not_found("Room alias not found on this server"));
    }
    // Asked of the application services when it is one of theirs and not there yet.
    let (room_id, servers) = crate::api::client::alias::room_alias(&s, alias).await?;
    Ok(get_room_information::v1::Response::new(room_id, servers))
}
