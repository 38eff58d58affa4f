//! Application services (bridges): the registrations the operator lists in
//! `app_service_config_files` (Synapse's key; the YAML files mautrix and friends write),
//! and what Hearth does for them.
//!
//! - **Who calls.** An application service's `as_token` authenticates it as its sender user
//!   (`sender_localpart`, created at start) or, with `?user_id=`, as a user of its
//!   namespaces that it registered ([`AppServices::caller`]).
//! - **Namespaces.** An exclusive user or alias namespace is the service's alone: nobody
//!   else registers such a user or creates such an alias (400 `M_EXCLUSIVE`).
//! - **Questions to the service** (`query.rs`): a user or alias of its namespaces that does
//!   not exist yet is asked of it before Hearth answers "not found"; third-party protocols
//!   are its to describe.
//! - **Transactions** (`sender.rs`): every event a service is interested in is pushed to it,
//!   in order, from a persisted position: nothing acknowledged by the stream is skipped
//!   across a restart.
//! - **Room lists**: a service publishes rooms in its own directory lists
//!   (`third_party_instance_id` = `<service id>|<network id>`).
//!
//! The URLs come from the operator's files, not from other parties: the outbound address
//! denylist does not apply to them (bridges run on loopback or in the cluster), the
//! time-outs and size caps of every outbound request do.

pub mod query;
pub mod sender;

use std::{collections::HashMap, path::Path, sync::Arc};

use ruma::{api::appservice::Registration, OwnedRoomId, OwnedUserId, RoomAliasId, RoomId, ServerName, UserId};
use sha2::{Digest, Sha256};

use crate::{
    error::{Error, Result},
    store::{tables, Batch, Order, Store, Table},
    transport::client::OutboundClient,
    users::{NewAccount, Users},
};

/// (instance id `<service id>|<network id>`, room id) → (): rooms a service published in
/// one of its directory lists.
pub const APPSERVICE_ROOMS: Table<(String, String), ()> = Table::new(tables::APPSERVICE_ROOMS);

/// One compiled namespace entry.
struct Pattern {
    regex: regex::Regex,
    exclusive: bool,
}

fn compile(list: &[ruma::api::appservice::Namespace], what: &str) -> std::result::Result<Vec<Pattern>, String> {
    list.iter()
        .map(|ns| {
            // Anchored at the start, as Synapse matches them: `@irc_.*` is not found inside
            // another id.
            regex::Regex::new(&format!("^(?:{})", ns.regex))
                .map(|regex| Pattern { regex, exclusive: ns.exclusive })
                .map_err(|e| format!("{what} namespace {:?} is not a valid regular expression: {e}", ns.regex))
        })
        .collect()
}

/// One registered application service.
pub struct AppService {
    pub registration: Registration,
    /// `@<sender_localpart>:<server>`.
    pub sender: OwnedUserId,
    users: Vec<Pattern>,
    aliases: Vec<Pattern>,
    rooms: Vec<Pattern>,
}

impl AppService {
    pub fn id(&self) -> &str {
        &self.registration.id
    }

    /// Whether `user` is in one of its user namespaces (or is its sender).
    pub fn is_user_in_namespace(&self, user: &UserId) -> bool {
        user == self.sender || self.users.iter().any(|p| p.regex.is_match(user.as_str()))
    }

    fn is_user_exclusive(&self, user: &UserId) -> bool {
        self.users.iter().any(|p| p.exclusive && p.regex.is_match(user.as_str()))
    }

    pub fn is_alias_in_namespace(&self, alias: &str) -> bool {
        self.aliases.iter().any(|p| p.regex.is_match(alias))
    }

    fn is_alias_exclusive(&self, alias: &str) -> bool {
        self.aliases.iter().any(|p| p.exclusive && p.regex.is_match(alias))
    }

    pub fn is_room_in_namespace(&self, room: &RoomId) -> bool {
        self.rooms.iter().any(|p| p.regex.is_match(room.as_str()))
    }

    /// The base URL requests to the service go to; `None`: the service receives nothing.
    pub fn url(&self) -> Option<&str> {
        self.registration.url.as_deref().filter(|u| !u.is_empty()).map(|u| u.trim_end_matches('/'))
    }
}

/// Every registered application service.
pub struct AppServices {
    list: Vec<Arc<AppService>>,
    /// SHA-256 of an `as_token` → index in `list`.
    by_token: HashMap<[u8; 32], usize>,
    store: Arc<Store>,
    http: Option<OutboundClient>,
    /// (service id, protocol) → when asked, and the service's description of it.
    protocol_cache: query::ProtocolCache,
}

fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Most registration files read (a typo'd glob must not read a whole folder).
const MAX_REGISTRATIONS: usize = 100;

impl AppServices {
    /// Reads and checks the registration files. Any problem stops start-up, naming the file.
    pub fn load(paths: &[impl AsRef<Path>], server_name: &ServerName, store: Arc<Store>) -> Result<Self, String> {
        if paths.len() > MAX_REGISTRATIONS {
            return Err(format!("app_service_config_files lists more than {MAX_REGISTRATIONS} files"));
        }
        let mut registrations = Vec::new();
        for path in paths {
            let path = path.as_ref();
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("app_service_config_files: cannot read {}: {e}", path.display()))?;
            let registration: Registration = serde_yaml_ng::from_str(&text)
                .map_err(|e| format!("app_service_config_files: {} is not a registration: {e}", path.display()))?;
            registrations.push((path.display().to_string(), registration));
        }
        Self::from_registrations(registrations, server_name, store)
    }

    /// As [`AppServices::load`], from registrations already read (`origin` names each one
    /// in errors).
    pub fn from_registrations(
        registrations: Vec<(String, Registration)>,
        server_name: &ServerName,
        store: Arc<Store>,
    ) -> Result<Self, String> {
        let mut list = Vec::new();
        let mut by_token = HashMap::new();
        for (origin, registration) in registrations {
            let problem = |what: String| format!("application service {origin}: {what}");
            let sender = UserId::parse(format!("@{}:{server_name}", registration.sender_localpart))
                .map_err(|e| problem(format!("sender_localpart is not a valid localpart: {e}")))?;
            let users = compile(&registration.namespaces.users, "user").map_err(problem)?;
            let aliases = compile(&registration.namespaces.aliases, "alias").map_err(problem)?;
            let rooms = compile(&registration.namespaces.rooms, "room").map_err(problem)?;
            if registration.as_token.is_empty() || registration.hs_token.is_empty() {
                return Err(problem("as_token and hs_token must not be empty".into()));
            }
            if list.iter().any(|a: &Arc<AppService>| a.registration.id == registration.id) {
                return Err(problem(format!("the id {:?} is registered twice", registration.id)));
            }
            if by_token.insert(token_hash(&registration.as_token), list.len()).is_some() {
                return Err(problem("its as_token is another service's too".into()));
            }
            list.push(Arc::new(AppService { registration, sender, users, aliases, rooms }));
        }
        Ok(AppServices { list, by_token, store, http: None, protocol_cache: Default::default() })
    }

    /// The client requests to the services go through.
    pub fn with_client(mut self, http: OutboundClient) -> Self {
        self.http = Some(http);
        self
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn all(&self) -> &[Arc<AppService>] {
        &self.list
    }

    pub fn by_id(&self, id: &str) -> Option<&Arc<AppService>> {
        self.list.iter().find(|a| a.id() == id)
    }

    /// The service whose `as_token` this is.
    pub fn by_token(&self, token: &str) -> Option<&Arc<AppService>> {
        if self.list.is_empty() {
            return None;
        }
        self.by_token.get(&token_hash(token)).map(|&i| &self.list[i])
    }

    /// Creates each service's sender user if it is not there (never a server admin).
    pub fn create_senders(&self, users: &Users) -> Result<()> {
        for service in &self.list {
            if users.account(&service.sender)?.is_none() {
                users.create_account(NewAccount {
                    localpart: service.sender.localpart(),
                    password: None,
                    admin: Some(false),
                    guest: false,
                    appservice: true,
                })?;
            }
        }
        Ok(())
    }

    /// Whom a request with `service`'s token acts as: `user_id` (a user of its namespaces
    /// that exists here) or, without one, its sender. 403 otherwise.
    pub fn masquerade(&self, service: &AppService, user_id: Option<&str>, users: &Users) -> Result<OwnedUserId> {
        let Some(user_id) = user_id else { return Ok(service.sender.clone()) };
        let user = UserId::parse(user_id).map_err(|e| Error::invalid_param(format!("Invalid user_id: {e}")))?;
        if user == service.sender {
            return Ok(user);
        }
        if user.server_name() != users.server_name() || !service.is_user_in_namespace(&user) {
            return Err(Error::forbidden("Application service cannot masquerade as this user"));
        }
        if !users.is_active(&user)? {
            return Err(Error::forbidden("Application service has not registered this user"));
        }
        Ok(user)
    }

    /// 400 `M_EXCLUSIVE` when `user` is in a service's exclusive namespace and `caller` is
    /// not that service.
    pub fn check_user_free(&self, user: &UserId, caller: Option<&str>) -> Result<()> {
        match self.list.iter().find(|a| a.is_user_exclusive(user)) {
            Some(a) if Some(a.id()) != caller => Err(exclusive("This user id is reserved by an application service")),
            _ => Ok(()),
        }
    }

    /// 400 `M_EXCLUSIVE` when `alias` is in a service's exclusive namespace and `caller` is
    /// not that service, or when `caller` is a service and the alias is not in its own.
    pub fn check_alias_free(&self, alias: &RoomAliasId, caller: Option<&str>) -> Result<()> {
        if let Some(own) = caller.and_then(|c| self.by_id(c)) {
            if !own.is_alias_in_namespace(alias.as_str()) {
                return Err(exclusive("This application service has not reserved this kind of alias"));
            }
            return Ok(());
        }
        match self.list.iter().any(|a| a.is_alias_exclusive(alias.as_str())) {
            true => Err(exclusive("This alias is reserved by an application service")),
            false => Ok(()),
        }
    }

    /// Publishes `room` in `service`'s list for `network`, or takes it out.
    pub fn set_listed(&self, service: &AppService, network: &str, room: &RoomId, public: bool) -> Result<()> {
        let instance = format!("{}|{network}", service.id());
        let key = (instance.as_str(), room.as_str());
        let mut batch = Batch::new();
        match public {
            true => APPSERVICE_ROOMS.put(&mut batch, key, &()),
            false => APPSERVICE_ROOMS.delete(&mut batch, key),
        }
        Ok(self.store.write(batch)?)
    }

    /// The rooms of one list (`instance`), or of every service's lists (`None`).
    pub fn listed_rooms(&self, instance: Option<&str>) -> Result<Vec<OwnedRoomId>> {
        let mut rooms = Vec::new();
        let visit = |(_, room): (String, String), ()| {
            if let Ok(room) = OwnedRoomId::try_from(room) {
                rooms.push(room);
            }
            true
        };
        match instance {
            Some(instance) => APPSERVICE_ROOMS.scan_prefix(&self.store, instance, Order::Ascending, visit)?,
            None => APPSERVICE_ROOMS.scan_all(&self.store, visit)?,
        }
        rooms.sort();
        rooms.dedup();
        Ok(rooms)
    }
}

fn exclusive(message: &str) -> Error {
    Error::matrix(http::StatusCode::BAD_REQUEST, "M_EXCLUSIVE", message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registration(yaml: &str) -> Registration {
        serde_yaml_ng::from_str(yaml).expect("yaml")
    }

    const BRIDGE: &str = r#"
id: bridge
url: http://localhost:9000
as_token: a
hs_token: h
sender_localpart: bridgebot
namespaces:
  users:
    - { regex: '@tg_.*:example\.org', exclusive: true }
    - { regex: '@_.*', exclusive: false }
  aliases:
    - { regex: '#tg_.*', exclusive: true }
"#;

    fn services() -> AppServices {
        let dir = tempfile::tempdir().expect("dir");
        let store = Arc::new(
            Store::open(dir.path(), crate::store::Backend::Sqlite, crate::store::Durability::Process, 8)
                .expect("store"),
        );
        let server: &ServerName = "example.org".try_into().expect("name");
        AppServices::from_registrations(vec![("test".into(), registration(BRIDGE))], server, store).expect("load")
    }

    #[test]
    fn namespaces_are_anchored_and_exclusive_ones_reserved() {
        let s = services();
        let a = &s.all()[0];
        let user = |u: &str| UserId::parse(u).expect("user");
        assert!(a.is_user_in_namespace(&user("@tg_1:example.org")));
        assert!(a.is_user_in_namespace(&user("@_x:example.org")));
        assert!(a.is_user_in_namespace(&user("@bridgebot:example.org")));
        assert!(!a.is_user_in_namespace(&user("@x_tg_1:example.org")), "anchored at the start");
        assert!(s.check_user_free(&user("@tg_1:example.org"), None).is_err());
        assert!(s.check_user_free(&user("@tg_1:example.org"), Some("bridge")).is_ok());
        assert!(s.check_user_free(&user("@_x:example.org"), None).is_ok(), "not exclusive");
        let alias = <&RoomAliasId>::try_from("#tg_room:example.org").expect("alias");
        assert!(s.check_alias_free(alias, None).is_err());
        assert!(s.check_alias_free(alias, Some("bridge")).is_ok());
        let other = <&RoomAliasId>::try_from("#other:example.org").expect("alias");
        assert!(s.check_alias_free(other, None).is_ok());
        assert!(s.check_alias_free(other, Some("bridge")).is_err(), "a service keeps to its namespace");
        assert!(s.by_token("a").is_some() && s.by_token("h").is_none());
    }

    #[test]
    fn a_bad_registration_is_refused_with_its_name() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Arc::new(
            Store::open(dir.path(), crate::store::Backend::Sqlite, crate::store::Durability::Process, 8)
                .expect("store"),
        );
        let server: &ServerName = "example.org".try_into().expect("name");
        let bad = BRIDGE.replace("'@_.*'", "'@_(('");
        let err = AppServices::from_registrations(vec![("bad.yaml".into(), registration(&bad))], server, store)
            .err()
            .expect("refused");
        assert!(err.contains("bad.yaml") && err.contains("regular expression"), "{err}");
    }
}
