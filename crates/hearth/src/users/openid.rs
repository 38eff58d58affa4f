//! OpenID tokens: short-lived tokens a user's client hands to a third party (a widget, an
//! integration manager, Element Call) so that it can learn the user's id from this server
//! (`/_matrix/federation/v1/openid/userinfo`) without ever holding an access token.
//!
//! Stored, like access tokens, only as their SHA-256, with their expiry; an expired token is
//! removed when it is next presented.

use ruma::{OwnedUserId, UserId};
use serde::{Deserialize, Serialize};

use super::{
    devices::{new_token, token_hash},
    Users,
};
use crate::{
    error::Result,
    store::{codec::json_value, tables, Batch, Table},
    time::now_millis,
};

/// How long an OpenID token is valid, as on Synapse.
pub const OPENID_TOKEN_LIFETIME_MS: u64 = 60 * 60 * 1000;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpenIdToken {
    pub user_id: OwnedUserId,
    pub expires_ts: u64,
}

json_value!(OpenIdToken);

/// SHA-256 of the token → its user and expiry.
pub const OPENID_TOKENS: Table<Vec<u8>, OpenIdToken> = Table::new(tables::OPENID_TOKENS);

impl Users {
    /// A new OpenID token for `user`, valid for [`OPENID_TOKEN_LIFETIME_MS`].
    pub fn issue_openid_token(&self, user: &UserId) -> Result<String> {
        let token = new_token();
        let mut batch = Batch::new();
        let record = OpenIdToken { user_id: user.to_owned(), expires_ts: now_millis() + OPENID_TOKEN_LIFETIME_MS };
        OPENID_TOKENS.put(&mut batch, &token_hash(&token), &record);
        self.store().write(batch)?;
        Ok(token)
    }

    /// The user an OpenID token was issued to, if it is known and not expired.
    pub fn openid_user(&self, token: &str) -> Result<Option<OwnedUserId>> {
        let hash = token_hash(token);
        let Some(record) = OPENID_TOKENS.get(self.store(), &hash)? else { return Ok(None) };
        if record.expires_ts <= now_millis() {
            let mut batch = Batch::new();
            OPENID_TOKENS.delete(&mut batch, &hash);
            self.store().write(batch)?;
            return Ok(None);
        }
        Ok(Some(record.user_id))
    }
}

#[cfg(test)]
mod tests {
    use ruma::owned_user_id;

    use super::*;
    use crate::store::{Backend, Durability, Store};

    #[test]
    fn expired_tokens_are_refused_and_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store =
            std::sync::Arc::new(Store::open(dir.path(), Backend::Rocksdb, Durability::Process, 8).expect("store"));
        let users = Users::new(store.clone(), "openid.test".try_into().expect("name"));
        let alice = owned_user_id!("@alice:openid.test");
        let token = users.issue_openid_token(&alice).expect("issue");
        assert_eq!(users.openid_user(&token).expect("read"), Some(alice.clone()));

        let mut batch = Batch::new();
        OPENID_TOKENS.put(
            &mut batch,
            &token_hash(&token),
            &OpenIdToken { user_id: alice, expires_ts: now_millis() - 1 },
        );
        store.write(batch).expect("write");
        assert_eq!(users.openid_user(&token).expect("read"), None, "expired");
        assert!(OPENID_TOKENS.get(&store, &token_hash(&token)).expect("get").is_none(), "removed");
    }
}
