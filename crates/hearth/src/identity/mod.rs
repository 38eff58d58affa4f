//! Third-party identifiers: the e-mail addresses linked to accounts here, and what this
//! server does with identity servers on its users' behalf (the client-server API's "Adding
//! Account Administrative Contact Information" and "Third-party invites").
//!
//! - **Account addresses** (`threepids`, `user_threepids`): an address validated by its
//!   owner (`email`) belongs to one account at most; the user logs in with it and may reset
//!   their password through it. Hearth keeps them itself: nothing is sent to an identity
//!   server unless the user binds.
//! - **Bindings** (`threepid_bindings`): which identity server this server told that an
//!   address is the user's (`/account/3pid/bind`), so that removing the address, `/unbind`
//!   and deactivation undo it there.
//! - **Third-party invites** (`invite.rs`): inviting someone by e-mail address.
//! - **Validation** (`email.rs`): proving an address by a link sent to it.
//!
//! Requests to identity servers (`client.rs`) go through the outbound address policy: the
//! client names the server.

pub mod client;
pub mod email;
pub mod invite;

use std::sync::Arc;

use ruma::{OwnedServerName, OwnedUserId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::{
    error::{Error, Result},
    federation::Federation,
    rooms::Rooms,
    store::{codec::json_value, tables, Batch, Order, Store, Table},
    time::now_millis,
    users::Users,
};
pub use client::IdentityClient;

/// (medium, address) → the user it belongs to.
pub const THREEPIDS: Table<(String, String), String> = Table::new(tables::THREEPIDS);
/// (user, medium, address) → when it was validated and added.
pub const USER_THREEPIDS: Table<(String, String, String), Threepid> = Table::new(tables::USER_THREEPIDS);
/// (user, medium, address, identity server) → (): bindings made through this server.
pub const THREEPID_BINDINGS: Table<(String, String, String, String), ()> = Table::new(tables::THREEPID_BINDINGS);

/// Most addresses one account may have.
pub const MAX_PER_USER: usize = 32;

/// An address on an account.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Threepid {
    pub validated_at: u64,
    pub added_at: u64,
    /// Whether the account's password may be reset through it: the address was given at
    /// registration or added behind the password (`/account/3pid/add`). One added through
    /// the deprecated `POST /account/3pid`, which asks for no password, serves for login
    /// only: else a stolen access token would be enough to take the account for good.
    #[serde(default)]
    pub recovery: bool,
}
json_value!(Threepid);

/// The form in which an address is kept and compared: e-mail addresses in lower case
/// (as Synapse keeps them), others as given, both trimmed.
pub fn canonical(medium: &str, address: &str) -> String {
    match medium {
        "email" => address.trim().to_lowercase(),
        _ => address.trim().to_owned(),
    }
}

pub struct Identity {
    store: Arc<Store>,
    pub client: IdentityClient,
    rooms: Arc<Rooms>,
    federation: Arc<Federation>,
    users: Arc<Users>,
    server_name: OwnedServerName,
    pub email: email::Email,
}

impl Identity {
    pub fn new(
        store: Arc<Store>,
        client: IdentityClient,
        rooms: Arc<Rooms>,
        federation: Arc<Federation>,
        users: Arc<Users>,
        email: email::Email,
    ) -> Self {
        let server_name = rooms.server_name.clone();
        Identity { store, client, rooms, federation, users, server_name, email }
    }

    /// The user an address belongs to here, if any.
    pub fn owner(&self, medium: &str, address: &str) -> Result<Option<OwnedUserId>> {
        let address = canonical(medium, address);
        Ok(THREEPIDS.get(&self.store, (medium, &address))?.and_then(|u| OwnedUserId::try_from(u).ok()))
    }

    /// A user's addresses, as `GET /account/3pid` lists them.
    pub fn list(&self, user: &UserId) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        USER_THREEPIDS.scan_range(
            &self.store,
            &crate::store::KeyRange::prefix(&crate::store::codec::encode_key::<String>(user.as_str())),
            Order::Ascending,
            |(_, medium, address), t| {
                out.push(json!({
                    "medium": medium, "address": address,
                    "validated_at": t.validated_at, "added_at": t.added_at,
                }));
                true
            },
        )?;
        Ok(out)
    }

    /// The account whose password may be reset through an address (see
    /// [`Threepid::recovery`]), if any.
    pub fn recovery_owner(&self, medium: &str, address: &str) -> Result<Option<OwnedUserId>> {
        let address = canonical(medium, address);
        let Some(owner) = self.owner(medium, &address)? else { return Ok(None) };
        let record = USER_THREEPIDS.get(&self.store, (owner.as_str(), medium, &address))?;
        Ok(record.filter(|r| r.recovery).map(|_| owner))
    }

    /// Adds a validated address to a user's account (`recovery`: see
    /// [`Threepid::recovery`]): 400 `M_THREEPID_IN_USE` when another account has it.
    pub fn add(&self, user: &UserId, medium: &str, address: &str, validated_at: u64, recovery: bool) -> Result<()> {
        let address = canonical(medium, address);
        let owner = self.owner(medium, &address)?;
        let mine = owner.as_deref() == Some(user);
        match owner {
            // Already there: only a re-added address may gain `recovery`.
            Some(_) if mine && !recovery => return Ok(()),
            Some(_) if mine => {}
            Some(_) => {
                return Err(Error::matrix(
                    http::StatusCode::BAD_REQUEST,
                    "M_THREEPID_IN_USE",
                    "That address is already in use by another account",
                ))
            }
            None => {}
        }
        if !mine && self.list(user)?.len() >= MAX_PER_USER {
            return Err(Error::matrix(
                http::StatusCode::BAD_REQUEST,
                "M_LIMIT_EXCEEDED",
                format!("An account may have at most {MAX_PER_USER} addresses"),
            ));
        }
        let mut batch = Batch::new();
        THREEPIDS.put(&mut batch, (medium, &address), &user.to_string());
        let record = Threepid { validated_at, added_at: now_millis(), recovery };
        USER_THREEPIDS.put(&mut batch, (user.as_str(), medium, &address), &record);
        Ok(self.store.write(batch)?)
    }

    /// The identity servers this server bound an address of `user` on.
    fn bindings(&self, user: &UserId) -> Result<Vec<(String, String, String)>> {
        let mut out = Vec::new();
        THREEPID_BINDINGS.scan_range(
            &self.store,
            &crate::store::KeyRange::prefix(&crate::store::codec::encode_key::<String>(user.as_str())),
            Order::Ascending,
            |(_, medium, address, id_server), ()| {
                out.push((medium, address, id_server));
                true
            },
        )?;
        Ok(out)
    }

    /// `/account/3pid/bind`: binds the address of the identity server's validation
    /// session to `user` there, and remembers where, for unbinding later.
    pub async fn bind(
        &self,
        user: &UserId,
        id_server: &str,
        token: &str,
        sid: &str,
        client_secret: &str,
    ) -> Result<()> {
        let id_server = client::server_name(id_server)?;
        let (medium, address) = self.client.bind(id_server, token, sid, client_secret, user).await?;
        let address = canonical(&medium, &address);
        let mut batch = Batch::new();
        THREEPID_BINDINGS.put(&mut batch, (user.as_str(), &medium, &address, id_server.as_str()), &());
        Ok(self.store.write(batch)?)
    }

    /// Unbinds an address of `user` from `id_server`, or from every identity server this
    /// server bound it on. Whether every unbind succeeded (`success`) or there was none
    /// to make or one failed (`no-support`), as the spec's `id_server_unbind_result`.
    pub async fn unbind(
        &self,
        user: &UserId,
        medium: &str,
        address: &str,
        id_server: Option<&str>,
    ) -> Result<&'static str> {
        let address = canonical(medium, address);
        let servers: Vec<String> = match id_server {
            Some(s) => vec![client::server_name(s)?.to_string()],
            None => self
                .bindings(user)?
                .into_iter()
                .filter(|(m, a, _)| m == medium && *a == address)
                .map(|(_, _, s)| s)
                .collect(),
        };
        let mut result = if servers.is_empty() { "no-support" } else { "success" };
        for server in servers {
            let Ok(name) = client::server_name(&server) else { continue };
            match self.client.unbind(name, user, medium, &address).await {
                Ok(_) => {
                    let mut batch = Batch::new();
                    THREEPID_BINDINGS.delete(&mut batch, (user.as_str(), medium, &address, &server));
                    self.store.write(batch)?;
                }
                Err(e) => {
                    tracing::warn!(%user, id_server = %server, error = %e, "could not unbind an address");
                    result = "no-support";
                }
            }
        }
        Ok(result)
    }

    /// `/account/3pid/delete`: unbinds the address (as [`Identity::unbind`]) and removes
    /// it from the account.
    pub async fn delete(
        &self,
        user: &UserId,
        medium: &str,
        address: &str,
        id_server: Option<&str>,
    ) -> Result<&'static str> {
        let result = self.unbind(user, medium, address, id_server).await?;
        let address = canonical(medium, address);
        let mut batch = Batch::new();
        if self.owner(medium, &address)?.as_deref() == Some(user) {
            THREEPIDS.delete(&mut batch, (medium, &address));
        }
        USER_THREEPIDS.delete(&mut batch, (user.as_str(), medium, &address));
        self.store.write(batch)?;
        Ok(result)
    }

    /// Deactivation: every address of the account is unbound where this server bound it
    /// and removed from the account.
    pub async fn remove_all(&self, user: &UserId) -> Result<&'static str> {
        let mut result = "success";
        let mut all: Vec<(String, String)> = self.bindings(user)?.into_iter().map(|(m, a, _)| (m, a)).collect();
        for t in self.list(user)? {
            let field = |k: &str| t.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
            all.push((field("medium"), field("address")));
        }
        all.sort();
        all.dedup();
        for (medium, address) in all {
            if self.delete(user, &medium, &address, None).await? != "success" {
                result = "no-support";
            }
        }
        Ok(result)
    }

    /// Whether `user` is a local account.
    fn is_local(&self, user: &UserId) -> bool {
        user.server_name() == self.server_name
    }

    pub(crate) fn users(&self) -> &Users {
        &self.users
    }
}
