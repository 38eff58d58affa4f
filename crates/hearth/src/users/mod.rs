//! Local users: accounts and passwords, devices and access tokens, profiles.
//!
//! Passwords are argon2id hashes. Access tokens are 32 random bytes shown to the client
//! once; the database keeps only their SHA-256, so a copy of the database cannot be used
//! to act as anyone. Account and device changes take one mutex so that "check then write"
//! sequences (name taken? first user?) cannot interleave; none of them is on a hot path.

pub mod account_data;
pub mod activity;
pub mod devices;
pub mod filters;
pub mod openid;
pub mod password;
pub mod presence;
pub mod profile;
pub mod pushers;
pub mod registration_tokens;
pub mod uiaa;
pub mod user_directory;
pub mod validation;

use std::sync::Arc;

use parking_lot::Mutex;
use rand::{distributions::Alphanumeric, Rng};
use ruma::{OwnedServerName, OwnedUserId, UserId};
use serde::{Deserialize, Serialize};

use crate::{
    error::{Error, Result},
    store::codec::json_value,
    store::{tables, Batch, Store, Table},
    time::now_millis,
};

/// A local account.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Account {
    /// argon2id PHC string; `None` once deactivated (or for password-less accounts).
    pub password_hash: Option<String>,
    pub admin: bool,
    pub deactivated: bool,
    pub created_ts: u64,
    /// A guest account (`kind=guest`): no password, a limited API, until it upgrades.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub guest: bool,
    /// Made by an application service (its sender, or a user it registered): never counts
    /// as the server's first account.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub appservice: bool,
}

json_value!(Account);

pub const ACCOUNTS: Table<String, Account> = Table::new(tables::ACCOUNTS);

/// Why a username cannot be registered.
#[derive(Debug, PartialEq, Eq)]
pub enum UsernameProblem {
    Invalid(&'static str),
    InUse,
}

impl UsernameProblem {
    /// The Matrix error for it: 400 `M_USER_IN_USE` or `M_INVALID_USERNAME`.
    pub fn into_error(self) -> Error {
        match self {
            UsernameProblem::InUse => {
                Error::matrix(http::StatusCode::BAD_REQUEST, "M_USER_IN_USE", "User ID already taken")
            }
            UsernameProblem::Invalid(why) => Error::matrix(http::StatusCode::BAD_REQUEST, "M_INVALID_USERNAME", why),
        }
    }
}

impl std::fmt::Display for UsernameProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UsernameProblem::Invalid(why) => f.write_str(why),
            UsernameProblem::InUse => f.write_str("that user id is already taken (ids of deactivated users too)"),
        }
    }
}

pub struct Users {
    store: Arc<Store>,
    server_name: OwnedServerName,
    /// Serialises account and device mutations (see the module comment).
    write_lock: Mutex<()>,
    /// Access tokens resolved from the database.
    tokens: devices::TokenCache,
    /// When each device's record was last written for its activity.
    activity: activity::Activity,
}

/// Options for creating an account.
pub struct NewAccount<'a> {
    pub localpart: &'a str,
    pub password: Option<&'a str>,
    pub admin: Option<bool>,
    /// A guest account: never the server's admin, no display name.
    pub guest: bool,
    /// Made by an application service (see [`Account::appservice`]).
    pub appservice: bool,
}

impl Users {
    pub fn new(store: Arc<Store>, server_name: OwnedServerName) -> Self {
        Users {
            store,
            server_name,
            write_lock: Mutex::new(()),
            tokens: Default::default(),
            activity: Default::default(),
        }
    }

    pub fn server_name(&self) -> &OwnedServerName {
        &self.server_name
    }

    /// Builds `@localpart:server_name` for a localpart that passed [`check_new_localpart`].
    pub fn user_id(&self, localpart: &str) -> Result<OwnedUserId> {
        UserId::parse(format!("@{localpart}:{}", self.server_name))
            .map_err(|e| Error::matrix(http::StatusCode::BAD_REQUEST, "M_INVALID_USERNAME", e.to_string()))
    }

    /// Interprets what a user typed at login: a localpart or a full user id of this server.
    pub fn parse_login_user(&self, input: &str) -> Option<OwnedUserId> {
        let input = input.trim();
        if input.starts_with('@') {
            let id = UserId::parse(input.to_lowercase()).ok()?;
            (id.server_name() == self.server_name).then_some(id)
        } else {
            UserId::parse(format!("@{}:{}", input.to_lowercase(), self.server_name)).ok()
        }
    }

    pub fn account(&self, user_id: &UserId) -> Result<Option<Account>> {
        Ok(ACCOUNTS.get(&self.store, user_id.as_str())?)
    }

    /// Whether `user_id` is a local guest account.
    pub fn is_guest(&self, user_id: &UserId) -> Result<bool> {
        Ok(self.account(user_id)?.is_some_and(|a| a.guest))
    }

    /// Whether `user_id` is a local account that is not deactivated.
    pub fn is_active(&self, user_id: &UserId) -> Result<bool> {
        Ok(self.account(user_id)?.is_some_and(|a| !a.deactivated))
    }

    /// Checks a requested localpart against the spec's grammar for new users and against
    /// existing accounts (deactivated ones included: ids are never reused).
    pub fn check_new_localpart(&self, localpart: &str) -> Result<Result<(), UsernameProblem>> {
        if let Err(problem) = check_localpart_grammar(localpart, self.server_name.as_str()) {
            return Ok(Err(problem));
        }
        let user_id = self.user_id(localpart)?;
        if ACCOUNTS.contains(&self.store, user_id.as_str())? {
            return Ok(Err(UsernameProblem::InUse));
        }
        Ok(Ok(()))
    }

    /// A fresh localpart for a guest: digits only, as Synapse names guests (and as clients
    /// show them), random so that guest ids cannot be enumerated.
    pub fn guest_localpart(&self) -> String {
        let mut rng = rand::thread_rng();
        (0..16).map(|_| char::from(b'0' + rng.gen_range(0..10u8))).collect()
    }

    /// Makes a guest account a full one (`/register` with `guest_access_token`): it gets
    /// a password and its display name, and its devices' tokens stop being guest tokens.
    /// 400 `M_USER_IN_USE` when the account is not a guest's.
    pub fn upgrade_guest(&self, user_id: &UserId, password: Option<&str>) -> Result<()> {
        let hash = match password {
            Some(p) => Some(password::hash(p)?),
            None => None,
        };
        let _guard = self.write_lock.lock();
        let mut account = self.account(user_id)?.ok_or_else(|| Error::not_found("No such user"))?;
        if !account.guest || account.deactivated {
            return Err(Error::matrix(http::StatusCode::BAD_REQUEST, "M_USER_IN_USE", "User ID already taken"));
        }
        account.guest = false;
        account.password_hash = hash;
        let mut batch = Batch::new();
        ACCOUNTS.put(&mut batch, user_id.as_str(), &account);
        if self.profile_field(user_id, "displayname")?.is_none() {
            profile::put_field(&mut batch, user_id, "displayname", Some(user_id.localpart().into()));
        }
        for (_, device) in devices::DEVICES.collect_prefix(&self.store, user_id.as_str())? {
            if let Some(mut owner) = devices::ACCESS_TOKENS.get(&self.store, &device.token_hash)? {
                owner.guest = false;
                devices::ACCESS_TOKENS.put(&mut batch, &device.token_hash, &owner);
            }
        }
        // Emptying the token cache makes the rewritten owners take effect at once.
        self.write_revoking(batch)?;
        tracing::info!(%user_id, "guest account upgraded");
        Ok(())
    }

    /// A fresh random localpart for a registration that did not ask for one.
    pub fn random_localpart(&self) -> String {
        let mut rng = rand::thread_rng();
        (0..12).map(|_| rng.sample(Alphanumeric).to_ascii_lowercase() as char).collect()
    }

    /// Creates an account. The first account on a server becomes its admin. The display
    /// name starts as the localpart, as Element and Nheko expect. Guests get neither.
    pub fn create_account(&self, new: NewAccount<'_>) -> Result<OwnedUserId> {
        let hash = match new.password {
            Some(p) => Some(password::hash(p)?),
            None => None,
        };
        let user_id = self.user_id(new.localpart)?;
        let _guard = self.write_lock.lock();
        if ACCOUNTS.contains(&self.store, user_id.as_str())? {
            return Err(Error::matrix(http::StatusCode::BAD_REQUEST, "M_USER_IN_USE", "User ID already taken"));
        }
        let first = !new.guest && !new.appservice && !self.has_own_account()?;
        let account = Account {
            password_hash: hash,
            admin: !new.guest && new.admin.unwrap_or(first),
            deactivated: false,
            created_ts: now_millis(),
            guest: new.guest,
            appservice: new.appservice,
        };
        let mut batch = Batch::new();
        ACCOUNTS.put(&mut batch, user_id.as_str(), &account);
        if !new.guest {
            profile::put_field(&mut batch, &user_id, "displayname", Some(new.localpart.into()));
        }
        self.store.write(batch)?;
        if account.guest {
            tracing::info!(%user_id, "created guest account");
        } else if account.admin {
            tracing::info!(%user_id, "created account (server admin)");
        } else {
            tracing::info!(%user_id, "created account");
        }
        Ok(user_id)
    }

    /// Whether any account not made by an application service exists (the first one
    /// becomes the admin). Bridges' users are read past, a few thousand at most in practice,
    /// and only when an account is created.
    fn has_own_account(&self) -> Result<bool> {
        let mut found = false;
        ACCOUNTS.scan_all(&self.store, |_, account| {
            found = !account.appservice;
            !found
        })?;
        Ok(found)
    }

    /// All accounts, for the admin command.
    pub fn list_accounts(&self) -> Result<Vec<(String, Account)>> {
        let mut out = Vec::new();
        ACCOUNTS.scan_all(&self.store, |id, account| {
            out.push((id, account));
            true
        })?;
        Ok(out)
    }

    /// Checks a password for an active account. Unknown users cost the same time as known
    /// ones, so timing does not reveal who exists.
    pub fn check_password(&self, user_id: &UserId, password: &str) -> Result<bool> {
        let account = self.account(user_id)?;
        let hash = account.as_ref().filter(|a| !a.deactivated).and_then(|a| a.password_hash.as_deref());
        match hash {
            Some(h) => password::verify(password, h),
            None => {
                password::verify_dummy(password);
                Ok(false)
            }
        }
    }

    pub fn set_password(&self, user_id: &UserId, password: &str) -> Result<()> {
        let hash = password::hash(password)?;
        let _guard = self.write_lock.lock();
        let mut account = self.account(user_id)?.ok_or_else(|| Error::not_found("No such user"))?;
        account.password_hash = Some(hash);
        let mut batch = Batch::new();
        ACCOUNTS.put(&mut batch, user_id.as_str(), &account);
        Ok(self.store.write(batch)?)
    }

    pub fn set_admin(&self, user_id: &UserId, admin: bool) -> Result<()> {
        let _guard = self.write_lock.lock();
        let mut account = self.account(user_id)?.ok_or_else(|| Error::not_found("No such user"))?;
        account.admin = admin;
        let mut batch = Batch::new();
        ACCOUNTS.put(&mut batch, user_id.as_str(), &account);
        Ok(self.store.write(batch)?)
    }

    /// Brings a deactivated account back with a new password (the profile starts again
    /// from the localpart, as for a new account).
    pub fn reactivate(&self, user_id: &UserId, password: &str) -> Result<()> {
        let hash = password::hash(password)?;
        let _guard = self.write_lock.lock();
        let mut account = self.account(user_id)?.ok_or_else(|| Error::not_found("No such user"))?;
        if !account.deactivated {
            return Ok(());
        }
        account.deactivated = false;
        account.password_hash = Some(hash);
        let mut batch = Batch::new();
        ACCOUNTS.put(&mut batch, user_id.as_str(), &account);
        if self.profile_field(user_id, "displayname")?.is_none() {
            profile::put_field(&mut batch, user_id, "displayname", Some(user_id.localpart().into()));
        }
        self.store.write(batch)?;
        tracing::info!(%user_id, "reactivated account");
        Ok(())
    }

    /// Deactivates an account: no password, no devices, no tokens, empty profile.
    /// The user id stays taken forever.
    pub fn deactivate(&self, user_id: &UserId) -> Result<()> {
        let _guard = self.write_lock.lock();
        let mut account = self.account(user_id)?.ok_or_else(|| Error::not_found("No such user"))?;
        account.deactivated = true;
        account.password_hash = None;
        let mut batch = Batch::new();
        ACCOUNTS.put(&mut batch, user_id.as_str(), &account);
        for (device_id, _) in devices::DEVICES.collect_prefix(&self.store, user_id.as_str())? {
            self.delete_device_into(&mut batch, user_id, &device_id)?;
        }
        for (field, _) in profile::PROFILE_FIELDS.collect_prefix(&self.store, user_id.as_str())? {
            profile::put_field(&mut batch, user_id, &field, None);
        }
        self.write_revoking(batch)?;
        tracing::info!(%user_id, "deactivated account");
        Ok(())
    }

    pub fn store(&self) -> &Store {
        &self.store
    }
}

/// The spec's grammar for new user ids (historical ids may be looser; new ones may not).
pub fn check_localpart_grammar(localpart: &str, server_name: &str) -> Result<(), UsernameProblem> {
    if localpart.is_empty() {
        return Err(UsernameProblem::Invalid("User ID cannot be empty"));
    }
    if !localpart.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'=' | b'-' | b'/' | b'+')) {
        return Err(UsernameProblem::Invalid("User ID can only contain characters a-z, 0-9, or '._=-/+'"));
    }
    // @ + localpart + : + server name
    if localpart.len() + server_name.len() + 2 > 255 {
        return Err(UsernameProblem::Invalid("User ID is too long"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn localpart_grammar() {
        assert!(check_localpart_grammar("alice", "x").is_ok());
        assert!(check_localpart_grammar("a.b_c=d-e/f+g9", "x").is_ok());
        assert!(check_localpart_grammar("Alice", "x").is_err());
        assert!(check_localpart_grammar("al ice", "x").is_err());
        assert!(check_localpart_grammar("al:ice", "x").is_err());
        assert!(check_localpart_grammar("", "x").is_err());
        assert!(check_localpart_grammar(&"a".repeat(250), "example.org").is_err());
    }
}
