//! Client-server API: room aliases (`/directory/room/{roomAlias}`).

use std::sync::Arc;

use ruma::api::client::alias::{create_alias, delete_alias, get_alias};

use crate::{
    api::Ruma,
    error::{Error, Result},
    rooms::ALIASES,
    store::Batch,
    Services,
};

/// `GET /_matrix/client/v3/directory/room/{roomAlias}`
pub async fn get_alias(s: Arc<Services>, req: Ruma<get_alias::v3::Request>) -> Result<get_alias::v3::Response> {
    let room_id =
        s.rooms.resolve_alias(req.body.room_alias.as_str())?.ok_or_else(|| Error::not_found("Room alias not found"))?;
    Ok(get_alias::v3::Response::new(room_id, vec![s.config.server_name.clone()]))
}

/// `PUT /_matrix/client/v3/directory/room/{roomAlias}`
pub async fn create_alias(
    s: Arc<Services>,
    req: Ruma<create_alias::v3::Request>,
) -> Result<create_alias::v3::Response> {
    let caller = req.caller()?;
    let alias = &req.body.room_alias;
    if alias.server_name() != s.config.server_name {
        return Err(Error::invalid_param("Aliases can only be created on this server"));
    }
    s.rooms.require_joined(&req.body.room_id, &caller.user_id)?;
    if s.rooms.resolve_alias(alias.as_str())?.is_some() {
        return Err(Error::matrix(http::StatusCode::CONFLICT, "M_UNKNOWN", "Room alias already exists"));
    }
    let mut batch = Batch::new();
    ALIASES.put(&mut batch, alias.as_str(), &req.body.room_id.to_string());
    s.store.write(batch)?;
    Ok(create_alias::v3::Response::new())
}

/// `DELETE /_matrix/client/v3/directory/room/{roomAlias}`
///
/// Allowed to server admins and to members of the room with power to change its
/// canonical alias.
pub async fn delete_alias(
    s: Arc<Services>,
    req: Ruma<delete_alias::v3::Request>,
) -> Result<delete_alias::v3::Response> {
    let caller = req.caller()?;
    let alias = req.body.room_alias.as_str();
    let room_id = s.rooms.resolve_alias(alias)?.ok_or_else(|| Error::not_found("Room alias not found"))?;
    let admin = s.users.account(&caller.user_id)?.is_some_and(|a| a.admin);
    if !admin && !s.rooms.is_joined(&room_id, &caller.user_id)? {
        return Err(Error::forbidden("You may not remove this alias"));
    }
    let mut batch = Batch::new();
    ALIASES.delete(&mut batch, alias);
    s.store.write(batch)?;
    Ok(delete_alias::v3::Response::new())
}
