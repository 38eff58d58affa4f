//! Client-server API: filters (`/user/{userId}/filter`), which Element uploads before syncing.

use std::sync::Arc;

use ruma::api::client::filter::{create_filter, get_filter};

use crate::{
    api::Ruma,
    error::{Error, Result},
    Services,
};

/// `POST /_matrix/client/v3/user/{userId}/filter`
pub async fn create_filter(
    s: Arc<Services>,
    req: Ruma<create_filter::v3::Request>,
) -> Result<create_filter::v3::Response> {
    let caller = req.caller()?;
    if caller.user_id != req.body.user_id {
        return Err(Error::forbidden("You can only create filters for yourself"));
    }
    let id = s.users.create_filter(&caller.user_id, &req.body.filter)?;
    Ok(create_filter::v3::Response::new(id))
}

/// `GET /_matrix/client/v3/user/{userId}/filter/{filterId}`
pub async fn get_filter(s: Arc<Services>, req: Ruma<get_filter::v3::Request>) -> Result<get_filter::v3::Response> {
    let caller = req.caller()?;
    if caller.user_id != req.body.user_id {
        return Err(Error::forbidden("You can only read your own filters"));
    }
    let filter =
        s.users.filter(&caller.user_id, &req.body.filter_id)?.ok_or_else(|| Error::not_found("No such filter"))?;
    Ok(get_filter::v3::Response::new(filter))
}
