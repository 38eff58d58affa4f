//! Profile fields (`displayname`, `avatar_url`, and any other field a client sets).
//!
//! Stored per (user, field) so that extended profile fields need no schema change.

use std::collections::BTreeMap;

use ruma::UserId;
use serde_json::{Map, Value};

use super::Users;
use crate::{
    error::{Error, Result},
    store::{tables, Batch, Table},
};

pub const PROFILE_FIELDS: Table<(String, String), Value> = Table::new(tables::PROFILE_FIELDS);

/// Longest display name or avatar URL accepted.
pub const MAX_FIELD_BYTES: usize = 1024;

/// Adds setting (or with `None`, removing) a field to `batch`.
pub fn put_field(batch: &mut Batch, user_id: &UserId, field: &str, value: Option<Value>) {
    match value {
        Some(v) => PROFILE_FIELDS.put(batch, (user_id.as_str(), field), &v),
        None => PROFILE_FIELDS.delete(batch, (user_id.as_str(), field)),
    }
}

impl Users {
    pub fn profile(&self, user_id: &UserId) -> Result<BTreeMap<String, Value>> {
        Ok(PROFILE_FIELDS.collect_prefix(self.store(), user_id.as_str())?.into_iter().collect())
    }

    pub fn profile_field(&self, user_id: &UserId, field: &str) -> Result<Option<Value>> {
        Ok(PROFILE_FIELDS.get(self.store(), (user_id.as_str(), field))?)
    }

    /// The member event content a local user joins with: their display name and avatar.
    pub fn member_profile(&self, user_id: &UserId) -> Result<Map<String, Value>> {
        let mut content = Map::new();
        for field in ["displayname", "avatar_url"] {
            if let Some(v) = self.profile_field(user_id, field)? {
                content.insert(field.into(), v);
            }
        }
        Ok(content)
    }

    /// Sets a string field; an empty or absent value removes it.
    pub fn set_profile_string(&self, user_id: &UserId, field: &str, value: Option<String>) -> Result<()> {
        if let Some(v) = &value {
            if v.len() > MAX_FIELD_BYTES {
                return Err(Error::too_large(format!("{field} is longer than {MAX_FIELD_BYTES} bytes")));
            }
        }
        let value = value.filter(|v| !v.is_empty()).map(Value::String);
        let mut batch = Batch::new();
        put_field(&mut batch, user_id, field, value);
        Ok(self.store().write(batch)?)
    }
}
