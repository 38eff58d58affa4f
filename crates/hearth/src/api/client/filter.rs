//! Client-server API: filters (`/user/{userId}/filter`), which Element uploads before syncing.

use std::sync::Arc;

use ruma::api::client::filter::{create_filter, get_filter, FilterDefinition};

use crate::{
    api::Ruma,
    error::{Error, Result},
    store::{tables, Batch, Table},
    Services,
};

pub const FILTERS: Table<(String, String), Vec<u8>> = Table::new(tables::FILTERS);

/// Largest filter accepted, in bytes of JSON.
pub const MAX_FILTER_BYTES: usize = 16 * 1024;

/// `POST /_matrix/client/v3/user/{userId}/filter`
pub async fn create_filter(
    s: Arc<Services>,
    req: Ruma<create_filter::v3::Request>,
) -> Result<create_filter::v3::Response> {
    let caller = req.caller()?;
    if caller.user_id != req.body.user_id {
        return Err(Error::forbidden("You can only create filters for yourself"));
    }
    let json = serde_json::to_vec(&req.body.filter).map_err(|e| Error::internal(e.to_string()))?;
    if json.len() > MAX_FILTER_BYTES {
        return Err(Error::too_large("Filter too large"));
    }
    // Content-addressed: the same filter uploaded twice gets the same id.
    let id = {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(&json);
        digest[..8].iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    let mut batch = Batch::new();
    FILTERS.put(&mut batch, (caller.user_id.as_str(), &id), &json);
    s.store.write(batch)?;
    Ok(create_filter::v3::Response::new(id))
}

/// `GET /_matrix/client/v3/user/{userId}/filter/{filterId}`
pub async fn get_filter(s: Arc<Services>, req: Ruma<get_filter::v3::Request>) -> Result<get_filter::v3::Response> {
    let caller = req.caller()?;
    if caller.user_id != req.body.user_id {
        return Err(Error::forbidden("You can only read your own filters"));
    }
    let filter = load(&s, &caller.user_id, &req.body.filter_id)?.ok_or_else(|| Error::not_found("No such filter"))?;
    Ok(get_filter::v3::Response::new(filter))
}

pub fn load(s: &Services, user: &ruma::UserId, id: &str) -> Result<Option<FilterDefinition>> {
    match FILTERS.get(&s.store, (user.as_str(), id))? {
        Some(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
        None => Ok(None),
    }
}
