//! Filters (`/user/{userId}/filter`): a user's uploaded filter definitions, which clients
//! (Element among them) create once and then name by id in every `/sync`.
//!
//! A filter's id is derived from its content, so uploading the same filter twice gives
//! the same id and stores nothing new. A stored filter that no longer parses reads as
//! missing rather than as an error.

use ruma::{api::client::filter::FilterDefinition, UserId};

use super::Users;
use crate::{
    error::{Error, Result},
    store::{tables, Batch, Table},
};

pub const FILTERS: Table<(String, String), Vec<u8>> = Table::new(tables::FILTERS);

/// Largest filter accepted, in bytes of JSON.
pub const MAX_FILTER_BYTES: usize = 16 * 1024;

impl Users {
    /// Stores a filter for `user`; returns its id.
    pub fn create_filter(&self, user: &UserId, filter: &FilterDefinition) -> Result<String> {
        let json = serde_json::to_vec(filter).map_err(|e| Error::internal(e.to_string()))?;
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
        FILTERS.put(&mut batch, (user.as_str(), &id), &json);
        self.store().write(batch)?;
        Ok(id)
    }

    /// One of `user`'s filters, by id.
    pub fn filter(&self, user: &UserId, id: &str) -> Result<Option<FilterDefinition>> {
        match FILTERS.get(self.store(), (user.as_str(), id))? {
            Some(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
            None => Ok(None),
        }
    }
}
