//! Hearth: a Matrix homeserver for self-hosters, in one binary over one embedded database.
//!
//! Layers, top to bottom (nothing points back up):
//! - `api`: the HTTP surface — typed ruma requests in, typed ruma responses out;
//! - services: `users` (accounts, devices, tokens, profiles, UIA), `rooms`, `e2ee`,
//!   `presence` (fan-out of presence changes, above `users` and `rooms`), `server_key`, …,
//!   and `admin` (what operators do, combining the others);
//! - `store`: ordered key/value tables over RocksDB or SQLite;
//! - shared basics: `config`, `error`, `time`.
//!
//! [`Services`] owns one instance of each service and is handed to handlers as axum state;
//! there are no globals, so one process can run several servers (the tests do).

pub mod admin;
pub mod api;
pub mod appservice;
pub mod config;
pub mod e2ee;
pub mod error;
pub mod federation;
pub mod identity;
pub mod json_depth;
pub mod media;
pub mod metrics;
pub mod presence;
pub mod push;
pub mod random;
pub mod rooms;
pub mod search;
pub mod server;
pub mod server_key;
pub mod store;
pub mod stream;
pub mod sync;
pub mod time;
pub mod tls;
pub mod transport;
pub mod users;
pub mod well_known_only;

use std::sync::Arc;

pub use crate::config::Config;
use crate::{
    e2ee::{backup::Backup, to_device::ToDevice, Keys},
    rooms::{typing::Typing, Rooms},
    server_key::ServerKey,
    store::{Store, StoreError},
    stream::Stream,
    sync::notifier::Notifier,
    users::{
        account_data::AccountData,
        presence::Presence,
        registration_tokens::RegistrationTokens,
        uiaa::{TokenCheck, Uiaa},
        Users,
    },
};

/// Everything a request handler may use.
pub struct Services {
    pub config: Config,
    pub store: Arc<Store>,
    pub users: Arc<Users>,
    pub uiaa: Uiaa,
    pub server_key: Arc<ServerKey>,
    pub rooms: Arc<Rooms>,
    pub notifier: Arc<Notifier>,
    pub stream: Arc<Stream>,
    pub typing: Arc<Typing>,
    pub account_data: Arc<AccountData>,
    pub presence: Arc<Presence>,
    pub keys: Arc<Keys>,
    pub to_device: Arc<ToDevice>,
    pub backup: Backup,
    pub push: Arc<push::Push>,
    /// Notifications to push gateways (and the log `GET /notifications` reads).
    pub push_sender: Arc<push::sender::PushSender>,
    /// Initial (and full-state) syncs building at once: each holds its whole response in
    /// memory and keeps a core busy, so more than there are cores only adds memory.
    pub initial_syncs: tokio::sync::Semaphore,
    pub initial_sync_cache: sync::cache::InitialSyncCache,
    /// Places for requests doing work (`max_concurrent_requests`; see `server`).
    pub request_slots: Arc<tokio::sync::Semaphore>,
    pub registration_tokens: Arc<RegistrationTokens>,
    pub metrics: metrics::Metrics,
    /// Other servers: outbound requests, discovery, their signing keys.
    pub transport: transport::Transport,
    /// What Hearth does with other servers: joins, transactions, the sender.
    pub federation: Arc<federation::Federation>,
    /// Uploaded files.
    pub media: Arc<media::Media>,
    /// Member events each device was sent by `/sync` (lazy loading).
    pub lazy_members: sync::lazy::SentMembers,
    /// What each sliding-sync connection was sent (see `sync::sliding`).
    pub sliding_connections: sync::sliding::Connections,
    /// What operators do: accounts, rooms, backups (the CLI, the admin channel and API).
    pub admin: admin::Admin,
    /// The full-text index of the rooms' messages (`/search`).
    pub search: Arc<search::Search>,
    /// Registered application services (bridges).
    pub appservices: Arc<appservice::AppServices>,
    /// Transactions to the application services.
    pub appservice_sender: Arc<appservice::sender::AppserviceSender>,
    /// E-mail addresses of accounts, identity servers, third-party invites.
    pub identity: Arc<identity::Identity>,
    /// The port the client listener is bound to (the configured one, or the one the
    /// system picked for port 0), set when it starts.
    listening_port: std::sync::atomic::AtomicU16,
}

impl Services {
    /// Opens the data directory and builds every service.
    pub fn open(config: Config) -> Result<Arc<Self>, StoreError> {
        let store = Arc::new(Store::open(
            &config.database_path,
            config.database_backend,
            config.durability(),
            config.db_cache_capacity_mb,
        )?);
        let server_key = Arc::new(ServerKey::load_or_create(&store, config.server_name.clone())?);
        let users = Arc::new(Users::new(store.clone(), config.server_name.clone()));
        let registration_tokens = Arc::new(RegistrationTokens::new(store.clone(), config.registration_token.clone()));
        let uiaa = Uiaa::new(users.clone(), registration_tokens.clone());
        let notifier = Arc::new(Notifier::default());
        let stream = Arc::new(
            Stream::open(store.clone(), notifier.clone())
                .map_err(|e| StoreError::Other(format!("cannot load the stream: {e}")))?,
        );
        stream.start_syncer().map_err(|e| StoreError::Other(format!("cannot start the syncer thread: {e}")))?;
        let rooms = Arc::new(
            Rooms::new(store.clone(), config.server_name.clone(), server_key.clone(), stream.clone())
                .map_err(|e| StoreError::Other(format!("cannot load rooms: {e}")))?,
        );
        let typing = Typing::new(notifier.clone());
        let account_data = Arc::new(AccountData::new(store.clone(), stream.clone()));
        let presence = Arc::new(Presence::new(store.clone(), stream.clone()));
        let keys = Arc::new(Keys::new(store.clone(), stream.clone()));
        let to_device = Arc::new(ToDevice::new(store.clone(), stream.clone()));
        let backup = Backup::new(store.clone());
        let transport = transport::Transport::new(&config, store.clone(), server_key.clone())
            .map_err(|e| StoreError::Other(format!("cannot set up outbound requests: {e}")))?;
        let federation = Arc::new(federation::Federation::new(federation::Parts {
            rooms: rooms.clone(),
            servers: transport.servers.clone(),
            server_keys: transport.keys.clone(),
            server_key: server_key.clone(),
            store: store.clone(),
            typing: typing.clone(),
            users: users.clone(),
            e2ee_keys: keys.clone(),
            to_device: to_device.clone(),
            presence: config.federate_presence.then(|| presence.clone()),
            join_max_events: config.join_max_state_events,
        }));
        let media_settings = media::Settings::from_config(&config);
        let mut media =
            media::Media::open(&config.database_path, store.clone(), config.max_request_size as u64, media_settings)
                .map_err(|e| StoreError::Other(format!("cannot open the media folder: {e}")))?;
        if config.url_preview_enabled {
            media = media.with_previews(transport.outbound.clone());
        }
        let media = Arc::new(media);
        let push = Arc::new(push::Push::default());
        let notifications = push::notifications::Notifications::new(
            store.clone(),
            rooms.clone(),
            account_data.clone(),
            push.clone(),
            config.server_name.clone(),
        );
        let push_sender = Arc::new(push::sender::PushSender::new(
            notifications,
            users.clone(),
            rooms.clone(),
            transport.outbound.clone(),
        ));
        let admin = admin::Admin::new(
            store.clone(),
            users.clone(),
            keys.clone(),
            rooms.clone(),
            media.clone(),
            config.allow_federation,
        );
        let search = Arc::new(
            search::Search::open(&config.database_path, rooms.clone())
                .map_err(|e| StoreError::Other(format!("cannot open the search index: {e}")))?,
        );
        let appservices =
            appservice::AppServices::load(&config.app_service_config_files, &config.server_name, store.clone())
                .map_err(StoreError::Other)?;
        let appservices = match appservices.is_empty() {
            true => appservices,
            false => {
                let dns = transport::dns::Dns::new(&config.dns_servers)
                    .map_err(|e| StoreError::Other(format!("cannot set up requests to application services: {e}")))?;
                // The operator names these URLs: no address denylist (see `appservice`).
                let http = transport::client::OutboundClient::new(
                    transport::policy::AddressPolicy::new(Vec::new(), Vec::new()),
                    None,
                    Arc::new(dns),
                )
                .map_err(|e| StoreError::Other(format!("cannot set up requests to application services: {e}")))?;
                appservices.create_senders(&users).map_err(|e| {
                    StoreError::Other(format!("cannot create the application services' sender users: {e}"))
                })?;
                appservices.with_client(http)
            }
        };
        let appservices = Arc::new(appservices);
        let appservice_sender =
            Arc::new(appservice::sender::AppserviceSender::new(appservices.clone(), rooms.clone(), store.clone()));
        let email = identity::email::Email::from_config(&config).map_err(StoreError::Other)?;
        let identity = Arc::new(identity::Identity::new(
            store.clone(),
            identity::IdentityClient::new(transport.outbound.clone(), server_key.clone(), config.allow_federation),
            rooms.clone(),
            federation.clone(),
            users.clone(),
            email,
        ));
        let max_concurrent = config.max_concurrent_requests as usize;
        let port = config.port;
        Ok(Arc::new(Services {
            config,
            store,
            users,
            uiaa,
            server_key,
            rooms,
            notifier,
            stream,
            typing,
            account_data,
            presence,
            keys,
            to_device,
            backup,
            push,
            push_sender,
            initial_sync_cache: Default::default(),
            request_slots: Arc::new(tokio::sync::Semaphore::new(max_concurrent)),
            initial_syncs: tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get),
            ),
            registration_tokens,
            metrics: metrics::Metrics::default(),
            transport,
            federation,
            media,
            lazy_members: Default::default(),
            sliding_connections: Default::default(),
            admin,
            search,
            appservices,
            appservice_sender,
            identity,
            listening_port: std::sync::atomic::AtomicU16::new(port),
        }))
    }

    /// The port clients reach this server on, as bound.
    pub fn listening_port(&self) -> u16 {
        self.listening_port.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Records the port the client listener was bound to.
    pub fn set_listening_port(&self, port: u16) {
        self.listening_port.store(port, std::sync::atomic::Ordering::Relaxed);
    }

    /// Room versions offered (`/capabilities`) and accepted for new rooms and upgrades:
    /// every version Hearth implements when the server is alone, only those whose
    /// federation rules all work when it federates (today the same: 1 to 12), so no room
    /// is made that other servers' users could not join.
    pub fn room_versions(&self) -> Vec<ruma::RoomVersionId> {
        rooms::ROOM_VERSIONS
            .iter()
            .filter(|v| !self.config.allow_federation || rooms::resolve::federates(v))
            .cloned()
            .collect()
    }

    /// What `/sync` and the deprecated endpoints built on it read from.
    pub fn sync_sources(&self) -> sync::SyncSources<'_> {
        sync::SyncSources {
            rooms: &self.rooms,
            typing: &self.typing,
            account_data: &self.account_data,
            presence: &self.presence,
            keys: &self.keys,
            to_device: &self.to_device,
            push: &self.push,
            lazy: &self.lazy_members,
        }
    }

    /// Whether registration needs a token (and so offers `m.login.registration_token`).
    pub fn registration_token_required(&self) -> error::Result<bool> {
        self.registration_tokens.required()
    }

    /// Checks a registration token outside UIA (the validity endpoint).
    pub fn registration_token_valid(&self, token: &str) -> error::Result<bool> {
        self.registration_tokens.is_valid(token)
    }
}
