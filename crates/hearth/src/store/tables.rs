//! The names of every table, in one place: the database schema at a glance.
//!
//! Each service declares its typed tables (`Table<K, V>`) next to its own value types using
//! these names; the store only needs the names to create column families / SQL tables.
//! Adding a table is adding a name here. Renaming or removing one needs a migration.

use super::Table;

/// Server-wide facts: schema version, signing key, counters. Key: a fixed name.
pub const META_NAME: &str = "meta";
/// Accounts by full user id.
pub const ACCOUNTS: &str = "accounts";
/// Profile fields: (user id, field name) → JSON value.
pub const PROFILE_FIELDS: &str = "profile_fields";
/// Devices: (user id, device id) → device record.
pub const DEVICES: &str = "devices";
/// Access tokens by SHA-256 of the token → owning (user, device).
pub const ACCESS_TOKENS: &str = "access_tokens";

pub const ALL: &[&str] = &[META_NAME, ACCOUNTS, PROFILE_FIELDS, DEVICES, ACCESS_TOKENS];

/// The meta table is the store's own (schema version lives there).
pub const META: Table<String, Vec<u8>> = Table::new(META_NAME);
