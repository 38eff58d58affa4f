//! Configuration: one [`Config`], loaded from built-in defaults, then a TOML file, then
//! `HEARTH_*` environment variables, then `CONDUIT_*` ones (later sources win).
//!
//! Conduit compatibility is the point: every key of a Conduit ConfigMap means the same
//! here. Conduit's TOML files keep their keys under `[global]`; that table is read as the
//! top level. Conduit's flat environment names for nested keys (`CONDUIT_WELL_KNOWN_CLIENT`)
//! map onto the nested key (`well_known.client`), as do `__`-separated ones.
//!
//! A value of the wrong type stops start-up with one line naming the key and its source;
//! an unknown key is a warning naming it, because a typo must not pass silently.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
};

use figment::{
    providers::{Env, Serialized},
    Figment, Provider,
};
use ruma::{OwnedServerName, RoomVersionId};
use serde::{Deserialize, Serialize};

use crate::store::{Backend, Durability};

/// Where `/.well-known/matrix/*` points clients and servers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct WellKnown {
    /// Base URL for clients (`m.homeserver.base_url`). Default: `https://<server_name>`.
    pub client: Option<String>,
    /// `host:port` other servers federate with (`m.server`). Default: `<server_name>:443`.
    pub server: Option<String>,
    /// `/.well-known/matrix/support`: a page about the server's support, and one contact
    /// (role `m.role.admin` unless given) by e-mail and/or Matrix id. Served when any is set.
    pub support_page: Option<String>,
    pub support_role: Option<String>,
    pub support_email: Option<String>,
    pub support_mxid: Option<String>,
}

/// The certificate and key the client and federation listener serves TLS with (Conduit's
/// `[global.tls]`). Both or neither; the files are re-read when they change.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Tls {
    /// PEM certificate chain, leaf first.
    pub certs: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of the leaf.
    pub key: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    pub server_name: OwnedServerName,
    pub database_path: PathBuf,
    pub database_backend: Backend,
    /// fsync every acknowledged write (survives power loss). With `false`, writes survive a
    /// crash of Hearth but not of the machine.
    pub database_fsync: bool,
    /// RocksDB block cache, in MiB.
    pub db_cache_capacity_mb: u64,
    pub address: IpAddr,
    pub port: u16,
    pub max_concurrent_requests: u16,
    pub max_request_size: u32,
    pub allow_registration: bool,
    /// Guest accounts (`/register?kind=guest`) and guests' access to rooms that allow it.
    pub allow_guest_access: bool,
    #[serde(deserialize_with = "text_from_scalar")]
    pub registration_token: Option<String>,
    pub registration_token_file: Option<PathBuf>,
    pub allow_federation: bool,
    /// Accepted for Conduit compatibility; Hearth never contacts anyone to check for updates.
    pub allow_check_for_updates: bool,
    pub trusted_servers: Vec<OwnedServerName>,
    /// Address ranges outbound requests (federation, `.well-known`, notaries) may not
    /// connect to; see [`crate::transport::policy`]. Default: the ranges Synapse blocks.
    pub ip_range_denylist: Vec<ipnet::IpNet>,
    /// Ranges admitted even when denied: LAN peers, loopback in tests.
    pub ip_range_allowlist: Vec<ipnet::IpNet>,
    /// Reverse proxies (Traefik in the seed) whose `X-Forwarded-For` names the client:
    /// requests from these addresses are recorded as coming from the forwarded one.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The Unix socket `hearth admin` reaches a running server through. Default:
    /// `admin.sock` in the data directory; empty turns the channel off.
    pub admin_socket: Option<String>,
    /// Extra CA certificates (PEM) outbound TLS trusts besides the system's roots: a
    /// private CA, or the tests' throw-away one.
    pub federation_ca_file: Option<PathBuf>,
    /// DNS servers (`ip:port`) outbound requests and server discovery ask instead of the
    /// system's (`/etc/resolv.conf`).
    pub dns_servers: Vec<std::net::SocketAddr>,
    pub allow_well_known: bool,
    pub well_known: WellKnown,
    pub allow_encryption: bool,
    /// A number is read as the version it names: a ConfigMap's `CONDUIT_DEFAULT_ROOM_VERSION:
    /// 10` arrives as one, and is meant as `"10"`.
    #[serde(deserialize_with = "room_version_from_text_or_number")]
    pub default_room_version: RoomVersionId,
    /// `tracing` filter, e.g. `info` or `hearth=debug,info`. `RUST_LOG` overrides it.
    pub log: String,
    /// Port of the separate Prometheus listener (`/metrics`) on `address`; 0 turns it off.
    pub metrics_port: u16,
    /// Seconds after a user's last sync ends (with none still open) before their presence
    /// turns offline: their clients have gone away. Synapse waits 30 s too. 0: presence
    /// stays as last set.
    pub presence_offline_timeout_s: u64,
    /// Whether local users' presence goes to the other servers in their rooms (and
    /// theirs is taken in). Off: presence stays among this server's users.
    pub federate_presence: bool,
    /// Serve TLS on `address:port` with these files; without them, plain HTTP (a reverse
    /// proxy in front terminates TLS).
    pub tls: Tls,
    /// Seconds between checks of the TLS files for a renewed certificate; 0: never re-read.
    pub tls_reload_interval_s: u64,
    /// TURN servers for calls (`/voip/turnServer`), as Conduit names them: the URIs, and
    /// either a shared secret (time-limited HMAC credentials, coturn's
    /// `use-auth-secret`) or a fixed username and password; credentials last `turn_ttl`
    /// seconds.
    pub turn_uris: Vec<String>,
    #[serde(deserialize_with = "text_from_scalar")]
    pub turn_secret: Option<String>,
    #[serde(deserialize_with = "text_from_scalar")]
    pub turn_username: Option<String>,
    #[serde(deserialize_with = "text_from_scalar")]
    pub turn_password: Option<String>,
    pub turn_ttl: u64,
    /// Freeze the unauthenticated media reads (`/_matrix/media/v3/download` and
    /// `thumbnail`): media stored from now on is served only through the authenticated
    /// endpoints; what was stored before stays readable both ways (as Synapse's freeze).
    /// Off by default: Debian's Nheko 0.11 reads only the legacy endpoints.
    pub media_freeze_legacy: bool,
    /// Most bytes of media one local user may upload, in MiB; 0: no limit.
    pub media_quota_mb: u64,
    /// Days another server's media and any thumbnail may go unread before they are
    /// removed (fetched or made again when next asked for); 0: kept forever. Local
    /// uploads, avatars included, are never removed by age.
    pub media_retention_days: u64,
    /// Serve URL previews (`/media/v1/preview_url`): Hearth then fetches pages users
    /// link to, under the outbound address policy. Off by default.
    pub url_preview_enabled: bool,
    /// Most events (state and auth chain) the answer to joining a room on another server
    /// may bring; a larger room is refused with 413 `M_TOO_LARGE`. The answer is held in
    /// memory while it is checked, about 1.4 KiB per event, so on a board with a 1 GiB
    /// limit raise it with care. Matrix HQ's state was 206,479 events in 2022.
    pub join_max_state_events: usize,
    /// Application service registration files (YAML, as bridges write them; Synapse's key).
    pub app_service_config_files: Vec<PathBuf>,
    /// PEM certificates trusted as they are for outbound requests: a server of your own
    /// (an identity server, a push gateway) with a self-signed certificate. A server that
    /// presents exactly one of them is trusted whatever its name; all others are verified
    /// as usual.
    pub pinned_certificates: Vec<PathBuf>,
    /// The mail server Hearth sends address validation mails through (registration with
    /// an e-mail address, adding one to an account, password resets). Unset: no mail,
    /// and those operations answer `M_THREEPID_DENIED`.
    #[serde(deserialize_with = "text_from_scalar")]
    pub smtp_host: Option<String>,
    pub smtp_port: u16,
    #[serde(deserialize_with = "text_from_scalar")]
    pub smtp_username: Option<String>,
    #[serde(deserialize_with = "text_from_scalar")]
    pub smtp_password: Option<String>,
    /// `starttls` (the default: port 587), `tls` (port 465) or `none` (a relay on
    /// loopback or in the cluster only).
    pub smtp_tls: String,
    /// The sender of those mails; default `Hearth <noreply@HOST>` (the server name's host).
    #[serde(deserialize_with = "text_from_scalar")]
    pub email_from: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server_name: "localhost".try_into().expect("static server name"),
            database_path: PathBuf::from("./hearth-data"),
            database_backend: Backend::Rocksdb,
            database_fsync: true,
            db_cache_capacity_mb: 64,
            address: IpAddr::from([127, 0, 0, 1]),
            port: 6167,
            max_concurrent_requests: 100,
            max_request_size: 20_000_000,
            allow_registration: false,
            allow_guest_access: false,
            registration_token: None,
            registration_token_file: None,
            allow_federation: true,
            allow_check_for_updates: false,
            trusted_servers: vec!["matrix.org".try_into().expect("static server name")],
            ip_range_denylist: crate::transport::policy::default_denylist(),
            ip_range_allowlist: Vec::new(),
            trusted_proxies: Vec::new(),
            admin_socket: None,
            federation_ca_file: None,
            dns_servers: Vec::new(),
            allow_well_known: true,
            well_known: WellKnown::default(),
            allow_encryption: true,
            default_room_version: RoomVersionId::V12,
            log: "info".to_owned(),
            metrics_port: 0,
            presence_offline_timeout_s: 30,
            federate_presence: true,
            tls: Tls::default(),
            tls_reload_interval_s: 60,
            turn_uris: Vec::new(),
            turn_secret: None,
            turn_username: None,
            turn_password: None,
            turn_ttl: 86_400,
            media_freeze_legacy: false,
            media_quota_mb: 0,
            media_retention_days: 0,
            url_preview_enabled: false,
            join_max_state_events: 50_000,
            app_service_config_files: Vec::new(),
            pinned_certificates: Vec::new(),
            smtp_host: None,
            smtp_port: 587,
            smtp_username: None,
            smtp_password: None,
            smtp_tls: "starttls".to_owned(),
            email_from: None,
        }
    }
}

/// A configuration problem, worded for the operator.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Conduit's flat environment names for nested keys.
const FLAT_ALIASES: &[(&str, &str)] = &[
    ("well_known_client", "well_known.client"),
    ("well_known_server", "well_known.server"),
    ("well_known_support_page", "well_known.support_page"),
    ("well_known_support_role", "well_known.support_role"),
    ("well_known_support_email", "well_known.support_email"),
    ("well_known_support_mxid", "well_known.support_mxid"),
    ("tls_certs", "tls.certs"),
    ("tls_key", "tls.key"),
];

/// Certificates are renewed days before they expire; a longer interval is a typo (and a
/// timer that far out would overflow).
const MAX_TLS_RELOAD_INTERVAL_S: u64 = 86_400;

/// Keys read from the environment that are not configuration keys.
const NOT_KEYS: &[&str] = &["config"];

fn env_provider(prefix: &str) -> Env {
    Env::prefixed(prefix)
        .filter(|k| !NOT_KEYS.iter().any(|n| k.as_str().eq_ignore_ascii_case(n)))
        .map(|k| {
            let lower = k.as_str().to_ascii_lowercase();
            match FLAT_ALIASES.iter().find(|(flat, _)| *flat == lower) {
                Some((_, nested)) => (*nested).to_owned().into(),
                None => lower.replace("__", ".").into(),
            }
        })
        .lowercase(false)
}

/// The TOML file to read: `--config`, else `HEARTH_CONFIG`, else `CONDUIT_CONFIG`; an
/// empty value means "no file" (Conduit's ConfigMaps set `CONDUIT_CONFIG: ''`).
pub fn config_file_path(cli: Option<&Path>, env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    if let Some(p) = cli {
        return Some(p.to_path_buf());
    }
    for var in ["HEARTH_CONFIG", "CONDUIT_CONFIG"] {
        if let Some(v) = env(var) {
            return if v.trim().is_empty() { None } else { Some(PathBuf::from(v)) };
        }
    }
    None
}

/// Reads a TOML file, lifting Conduit's `[global]` table to the top level.
fn read_toml(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("cannot read config file {}: {e}", path.display())))?;
    let mut table: toml::Table =
        text.parse().map_err(|e| ConfigError(format!("config file {} is not valid TOML: {e}", path.display())))?;
    if let Some(toml::Value::Table(global)) = table.remove("global") {
        for (k, v) in global {
            table.insert(k, v);
        }
    }
    Ok(table)
}

/// A TOML file's keys (after lifting `[global]`), named after the file in error messages.
struct FileSource {
    name: String,
    table: toml::Table,
}

impl Provider for FileSource {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named(format!("configuration file {}", self.name))
    }

    fn data(&self) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        Serialized::defaults(&self.table).data()
    }
}

/// The loaded configuration plus the warnings found while loading it.
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<String>,
}

impl Config {
    /// Loads from the process environment and an optional file.
    pub fn load(cli_file: Option<&Path>) -> Result<Loaded, ConfigError> {
        let file = config_file_path(cli_file, &|k| std::env::var(k).ok());
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = &file {
            figment = figment.merge(FileSource { name: format!("{}", path.display()), table: read_toml(path)? });
        }
        figment = figment.merge(env_provider("HEARTH_")).merge(env_provider("CONDUIT_"));
        Self::from_figment(figment)
    }

    fn from_figment(figment: Figment) -> Result<Loaded, ConfigError> {
        // Lossy: a number or a boolean given as a string (`port = "8008"` in a file, a
        // quoted value in a ConfigMap) is read as one, where the type is unambiguous.
        let mut config: Config = figment.extract_lossy().map_err(describe_figment_error)?;
        let mut warnings = unknown_keys(&figment);
        config.resolve_secrets()?;
        config.validate(&mut warnings)?;
        Ok(Loaded { config, warnings })
    }

    /// Reads `registration_token_file` (a Kubernetes Secret mounted as a file).
    fn resolve_secrets(&mut self) -> Result<(), ConfigError> {
        let Some(path) = &self.registration_token_file else { return Ok(()) };
        if self.registration_token.is_some() {
            return Err(ConfigError(
                "registration_token and registration_token_file are both set; set only one".into(),
            ));
        }
        let token = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("registration_token_file: cannot read {}: {e}", path.display())))?;
        let token = token.trim_end_matches(['\n', '\r']).to_owned();
        if token.is_empty() {
            return Err(ConfigError(format!("registration_token_file: {} is empty", path.display())));
        }
        self.registration_token = Some(token);
        Ok(())
    }

    fn validate(&mut self, warnings: &mut Vec<String>) -> Result<(), ConfigError> {
        if self.default_room_version.rules().is_none() {
            return Err(ConfigError(format!(
                "default_room_version: expected one of the room versions Hearth implements (1 to 12), got {:?}",
                self.default_room_version.as_str()
            )));
        }
        if self.max_request_size < 1024 {
            return Err(ConfigError("max_request_size: expected at least 1024 bytes".into()));
        }
        if self.max_concurrent_requests == 0 {
            return Err(ConfigError("max_concurrent_requests: expected at least 1".into()));
        }
        if let Some(url) = &self.well_known.client {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(ConfigError(format!(
                    "well_known.client: expected an http(s) URL such as https://matrix.example.org, got {url:?}"
                )));
            }
        }
        self.validate_tls()?;
        if let Some(t) = &self.registration_token {
            if t.is_empty() {
                self.registration_token = None;
            }
        }
        if self.allow_registration && self.registration_token.is_none() {
            warnings.push(
                "allow_registration is true and no registration_token is set: anyone who can reach \
                 this server can create an account"
                    .into(),
            );
        }
        Ok(())
    }

    /// `tls.certs` and `tls.key` come as a pair; an empty value counts as unset (a
    /// ConfigMap that blanks a variable means "no TLS").
    fn validate_tls(&mut self) -> Result<(), ConfigError> {
        for path in [&mut self.tls.certs, &mut self.tls.key] {
            if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                *path = None;
            }
        }
        if self.tls_reload_interval_s > MAX_TLS_RELOAD_INTERVAL_S {
            return Err(ConfigError(format!(
                "tls_reload_interval_s: expected at most {MAX_TLS_RELOAD_INTERVAL_S} seconds (a day; 0 turns re-reading off), got {}",
                self.tls_reload_interval_s
            )));
        }
        match (&self.tls.certs, &self.tls.key) {
            (Some(certs), None) => Err(ConfigError(format!(
                "tls.key: missing; tls.certs is set ({}), and TLS needs both the certificate chain and its private key",
                certs.display()
            ))),
            (None, Some(key)) => Err(ConfigError(format!(
                "tls.certs: missing; tls.key is set ({}), and TLS needs both the certificate chain and its private key",
                key.display()
            ))),
            _ => Ok(()),
        }
    }

    /// The certificate chain and key files when TLS is on (validated as a pair).
    pub fn tls_files(&self) -> Option<(&Path, &Path)> {
        Some((self.tls.certs.as_deref()?, self.tls.key.as_deref()?))
    }

    pub fn durability(&self) -> Durability {
        if self.database_fsync {
            Durability::Fsync
        } else {
            Durability::Process
        }
    }

    /// `m.homeserver.base_url` for `/.well-known/matrix/client` and login responses, for a
    /// server listening on `port`. Unless configured, `https://<server_name>` — the usual
    /// shape behind a reverse proxy — except for a server name no certificate or proxy can
    /// be for (`localhost`, `*.localhost`, an IP address): then the address Hearth itself
    /// serves, so that a local try works in clients that follow the document.
    pub fn client_base_url(&self, port: u16) -> String {
        if let Some(url) = &self.well_known.client {
            return url.trim_end_matches('/').to_owned();
        }
        let host = self.server_name.host();
        let local = host == "localhost"
            || host.ends_with(".localhost")
            || host.parse::<IpAddr>().is_ok()
            || host.starts_with('[');
        if !local {
            return format!("https://{}", self.server_name);
        }
        let scheme = if self.tls_files().is_some() { "https" } else { "http" };
        format!("{scheme}://{host}:{port}")
    }

    /// `m.server` for `/.well-known/matrix/server`.
    pub fn federation_server(&self) -> String {
        match &self.well_known.server {
            Some(s) => s.clone(),
            None if self.server_name.port().is_some() => self.server_name.to_string(),
            None => format!("{}:443", self.server_name),
        }
    }

    /// The effective configuration as TOML, secrets masked.
    pub fn to_masked_toml(&self) -> String {
        let mut shown = self.clone();
        for secret in [&mut shown.registration_token, &mut shown.turn_secret, &mut shown.turn_password] {
            if secret.is_some() {
                *secret = Some("********".into());
            }
        }
        toml::to_string(&shown).unwrap_or_else(|e| format!("# cannot render configuration: {e}"))
    }
}

/// One line naming the key, what it expected, and where the bad value came from.
fn describe_figment_error(err: figment::Error) -> ConfigError {
    let err = err.into_iter().next().unwrap_or_else(|| figment::Error::from("unknown error".to_owned()));
    let key = err.path.join(".");
    let source = err.metadata.as_ref().map(|m| describe_source(&m.name, &err.path)).unwrap_or_default();
    if key.is_empty() {
        ConfigError(format!("invalid configuration: {}{source}", err.kind))
    } else {
        ConfigError(format!("invalid configuration value for `{key}`: {}{source}", err.kind))
    }
}

/// " (from CONDUIT_PORT)" for environment values, " (from <what>)" otherwise.
fn describe_source(metadata_name: &str, path: &[String]) -> String {
    if metadata_name.contains("environment") {
        if let Some(prefix) = metadata_name.split('`').nth(1) {
            let var = path.iter().map(|p| p.to_ascii_uppercase()).collect::<Vec<_>>().join("__");
            return format!(" (from {prefix}{var})");
        }
    }
    format!(" (from {metadata_name})")
}

/// Keys present in the sources that [`Config`] does not have.
fn unknown_keys(figment: &Figment) -> Vec<String> {
    let known = serde_json::to_value(Config::default()).unwrap_or_default();
    let Ok(data) = figment.data() else { return Vec::new() };
    let mut warnings = Vec::new();
    for dict in data.values() {
        collect_unknown(dict, &known, "", figment, &mut warnings);
    }
    warnings.sort();
    warnings.dedup();
    warnings
}

fn collect_unknown(
    dict: &BTreeMap<String, figment::value::Value>,
    known: &serde_json::Value,
    prefix: &str,
    figment: &Figment,
    out: &mut Vec<String>,
) {
    for (key, value) in dict {
        let full = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
        match known.get(key) {
            None => {
                let source = figment.find_metadata(&full).map(|m| format!(" (from {})", m.name)).unwrap_or_default();
                out.push(format!("unknown configuration key `{full}` ignored{source}"));
            }
            Some(serde_json::Value::Object(_)) => {
                if let figment::value::Value::Dict(_, inner) = value {
                    collect_unknown(inner, &known[key], &full, figment, out);
                }
            }
            Some(_) => {}
        }
    }
}

/// Text that may arrive as a number or boolean: the environment reads `12345678` as a
/// number, and a token of digits is still a token.
fn text_from_scalar<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Given {
        Text(String),
        Unsigned(u64),
        Signed(i64),
        Float(f64),
        Flag(bool),
    }
    Ok(Option::<Given>::deserialize(d)?.map(|g| match g {
        Given::Text(t) => t,
        Given::Unsigned(n) => n.to_string(),
        Given::Signed(n) => n.to_string(),
        Given::Float(n) => n.to_string(),
        Given::Flag(b) => b.to_string(),
    }))
}

/// A room version given as text (`"10"`) or as a number (`10`).
fn room_version_from_text_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<RoomVersionId, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Given {
        Number(u64),
        Text(String),
    }
    let text = match Given::deserialize(d)? {
        Given::Number(n) => n.to_string(),
        Given::Text(t) => t,
    };
    RoomVersionId::try_from(text.as_str())
        .map_err(|e| serde::de::Error::custom(format!("{text:?} is no room version: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ConfigMap's `10` (a number once read from the environment) and `"10"` both mean
    /// version 10; `v10` and `99` stop start-up naming what is supported.
    #[test]
    fn default_room_version_forgives_the_configmap() {
        for given in ["10", "\"10\""] {
            with_env(&[("CONDUIT_DEFAULT_ROOM_VERSION", given)], |loaded| {
                assert_eq!(loaded.unwrap().config.default_room_version, RoomVersionId::V10, "{given}");
            });
        }
        for given in ["v10", "99"] {
            with_env(&[("CONDUIT_DEFAULT_ROOM_VERSION", given)], |loaded| {
                let message = loaded.err().map(|e| e.to_string()).unwrap_or_default();
                assert!(message.contains("default_room_version") && message.contains("1 to 12"), "{given}: {message}");
            });
        }
    }

    /// A ConfigMap or file that quotes a number or a boolean means the number or the
    /// boolean; a token of digits stays text; a string that is no number is still refused.
    #[test]
    fn strings_that_parse_as_the_type_are_accepted() {
        with_env(
            &[
                ("CONDUIT_PORT", "\"8080\""),
                ("CONDUIT_ALLOW_REGISTRATION", "\"true\""),
                ("CONDUIT_MAX_REQUEST_SIZE", "\"20000000\""),
                ("CONDUIT_ALLOW_FEDERATION", "false"),
                ("CONDUIT_REGISTRATION_TOKEN", "12345678"),
            ],
            |loaded| {
                let c = loaded.unwrap().config;
                assert_eq!((c.port, c.allow_registration, c.max_request_size), (8080, true, 20_000_000));
                assert!(!c.allow_federation);
                assert_eq!(c.registration_token.as_deref(), Some("12345678"));
            },
        );
        with_env(&[("CONDUIT_PORT", "\"lots\"")], |loaded| {
            let message = loaded.err().map(|e| e.to_string()).unwrap_or_default();
            assert!(message.contains("port"), "{message}");
        });
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hearth.toml");
        std::fs::write(&path, "port = \"8008\"\nallow_guest_access = \"true\"\ndb_cache_capacity_mb = \"64\"\n")
            .unwrap();
        let figment = Figment::from(Serialized::defaults(Config::default()))
            .merge(FileSource { name: "hearth.toml".into(), table: read_toml(&path).unwrap() });
        let c = Config::from_figment(figment).unwrap().config;
        assert_eq!((c.port, c.allow_guest_access, c.db_cache_capacity_mb), (8008, true, 64));
    }

    /// With no `well_known.client`, a real domain is assumed to be behind a proxy with TLS;
    /// `localhost` or an address gets the address Hearth serves itself (the README's try).
    #[test]
    fn default_client_well_known_fits_the_server_name() {
        let mut c = Config::default();
        assert_eq!(c.server_name.as_str(), "localhost");
        assert_eq!(c.client_base_url(6167), "http://localhost:6167");
        c.server_name = "127.0.0.1:8448".try_into().unwrap();
        assert_eq!(c.client_base_url(6167), "http://127.0.0.1:6167");
        c.server_name = "chat.example.org".try_into().unwrap();
        assert_eq!(c.client_base_url(6167), "https://chat.example.org");
        c.well_known.client = Some("https://talk.example.org/".into());
        assert_eq!(c.client_base_url(6167), "https://talk.example.org");
    }

    /// Loads a configuration from exactly these environment variables (no file).
    #[allow(clippy::result_large_err)]
    fn with_env(vars: &[(&str, &str)], check: impl FnOnce(Result<Loaded, ConfigError>)) {
        figment::Jail::expect_with(|jail| {
            jail.clear_env();
            for (k, v) in vars {
                jail.set_env(k, v);
            }
            let figment = Figment::from(Serialized::defaults(Config::default()))
                .merge(env_provider("HEARTH_"))
                .merge(env_provider("CONDUIT_"));
            check(Config::from_figment(figment));
            Ok(())
        });
    }

    #[test]
    fn seed_configmap_is_understood() {
        with_env(
            &[
                ("CONDUIT_CONFIG", ""),
                ("CONDUIT_SERVER_NAME", "choppa.xyz"),
                ("CONDUIT_DATABASE_PATH", "/var/lib/matrix-conduit/"),
                ("CONDUIT_DATABASE_BACKEND", "rocksdb"),
                ("CONDUIT_ADDRESS", "0.0.0.0"),
                ("CONDUIT_PORT", "6167"),
                ("CONDUIT_MAX_CONCURRENT_REQUESTS", "200"),
                ("CONDUIT_MAX_REQUEST_SIZE", "20000000"),
                ("CONDUIT_ALLOW_REGISTRATION", "true"),
                ("CONDUIT_ALLOW_FEDERATION", "true"),
                ("CONDUIT_ALLOW_CHECK_FOR_UPDATES", "true"),
                ("CONDUIT_TRUSTED_SERVERS", "[\"matrix.org\"]"),
                ("CONDUIT_ALLOW_WELL_KNOWN", "true"),
                ("CONDUIT_WELL_KNOWN_CLIENT", "https://talk.choppa.xyz"),
                ("CONDUIT_WELL_KNOWN_SERVER", "talk.choppa.xyz:443"),
                ("CONDUIT_REGISTRATION_TOKEN", "mypasswordoraccesstoken"),
            ],
            |loaded| {
                let loaded = loaded.unwrap();
                let c = loaded.config;
                assert_eq!(c.server_name.as_str(), "choppa.xyz");
                assert_eq!(c.database_path, PathBuf::from("/var/lib/matrix-conduit/"));
                assert_eq!(c.database_backend, Backend::Rocksdb);
                assert_eq!(c.address.to_string(), "0.0.0.0");
                assert_eq!(c.port, 6167);
                assert_eq!(c.max_concurrent_requests, 200);
                assert_eq!(c.max_request_size, 20_000_000);
                assert!(c.allow_registration && c.allow_federation && c.allow_well_known);
                assert_eq!(c.trusted_servers.len(), 1);
                assert_eq!(c.client_base_url(c.port), "https://talk.choppa.xyz");
                assert_eq!(c.federation_server(), "talk.choppa.xyz:443");
                assert_eq!(c.registration_token.as_deref(), Some("mypasswordoraccesstoken"));
                assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
            },
        );
    }

    #[test]
    fn hearth_env_loses_to_conduit_env_and_nested_names_work() {
        with_env(
            &[
                ("HEARTH_PORT", "7000"),
                ("CONDUIT_PORT", "7001"),
                ("HEARTH_WELL_KNOWN__CLIENT", "https://a.example"),
                ("HEARTH_DATABASE_BACKEND", "sqlite"),
            ],
            |loaded| {
                let c = loaded.unwrap().config;
                assert_eq!(c.port, 7001);
                assert_eq!(c.client_base_url(c.port), "https://a.example");
                assert_eq!(c.database_backend, Backend::Sqlite);
            },
        );
    }

    #[test]
    fn bad_value_names_key_and_source() {
        let expect_err = |vars: &[(&str, &str)], needles: &[&str]| {
            with_env(vars, |r| {
                let err = r.err().expect("bad value must be refused").0;
                for n in needles {
                    assert!(err.contains(n), "{err} lacks {n}");
                }
            })
        };
        expect_err(&[("CONDUIT_PORT", "sixty")], &["`port`", "CONDUIT_PORT"]);
        expect_err(&[("CONDUIT_DATABASE_BACKEND", "postgres")], &["database_backend"]);
        expect_err(&[("CONDUIT_SERVER_NAME", "not a name")], &["server_name"]);
    }

    #[test]
    fn outbound_address_ranges_from_the_environment() {
        with_env(&[("HEARTH_IP_RANGE_ALLOWLIST", "[\"127.0.0.1/32\", \"192.168.3.0/24\"]")], |loaded| {
            let c = loaded.unwrap().config;
            let allow: Vec<String> = c.ip_range_allowlist.iter().map(ToString::to_string).collect();
            assert_eq!(allow, ["127.0.0.1/32", "192.168.3.0/24"]);
            assert_eq!(c.ip_range_denylist, crate::transport::policy::default_denylist(), "the default stays");
        });
        with_env(&[("CONDUIT_IP_RANGE_ALLOWLIST", "[\"192.168.3.0/33\"]")], |loaded| {
            let err = loaded.err().expect("an impossible range is refused").0;
            assert!(err.contains("ip_range_allowlist"), "{err}");
        });
    }

    #[test]
    fn tls_files_from_hearth_and_conduit_names() {
        with_env(&[("HEARTH_TLS__CERTS", "/tls/chain.pem"), ("HEARTH_TLS__KEY", "/tls/key.pem")], |loaded| {
            let loaded = loaded.unwrap();
            let (certs, key) = loaded.config.tls_files().expect("TLS is on");
            assert_eq!((certs, key), (Path::new("/tls/chain.pem"), Path::new("/tls/key.pem")));
            assert_eq!(loaded.config.tls_reload_interval_s, 60, "the default interval");
            assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        });
        with_env(
            &[
                ("CONDUIT_TLS_CERTS", "/etc/tls/tls.crt"),
                ("CONDUIT_TLS_KEY", "/etc/tls/tls.key"),
                ("HEARTH_TLS_RELOAD_INTERVAL_S", "5"),
            ],
            |loaded| {
                let loaded = loaded.unwrap();
                let (certs, key) = loaded.config.tls_files().expect("TLS is on");
                assert_eq!((certs, key), (Path::new("/etc/tls/tls.crt"), Path::new("/etc/tls/tls.key")));
                assert_eq!(loaded.config.tls_reload_interval_s, 5);
                assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
            },
        );
        with_env(&[], |loaded| assert!(loaded.unwrap().config.tls_files().is_none(), "TLS is off by default"));
        with_env(&[("CONDUIT_TLS_CERTS", ""), ("CONDUIT_TLS_KEY", "")], |loaded| {
            assert!(loaded.unwrap().config.tls_files().is_none(), "empty values mean no TLS")
        });
    }

    #[test]
    fn one_tls_file_alone_is_refused_naming_the_missing_key() {
        with_env(&[("CONDUIT_TLS_CERTS", "/etc/tls/tls.crt")], |loaded| {
            let err = loaded.err().expect("a chain without a key is refused").0;
            assert!(err.starts_with("tls.key: missing"), "{err}");
        });
        with_env(&[("HEARTH_TLS__KEY", "/etc/tls/tls.key")], |loaded| {
            let err = loaded.err().expect("a key without a chain is refused").0;
            assert!(err.starts_with("tls.certs: missing"), "{err}");
        });
    }

    #[test]
    fn a_year_between_tls_checks_is_refused() {
        with_env(&[("HEARTH_TLS_RELOAD_INTERVAL_S", "31536000")], |loaded| {
            let err = loaded.err().expect("a year between checks is refused").0;
            assert!(err.starts_with("tls_reload_interval_s:"), "{err}");
        });
    }

    #[test]
    fn unknown_key_is_a_warning() {
        with_env(&[("CONDUIT_ALOW_REGISTRATION", "true")], |loaded| {
            let loaded = loaded.unwrap();
            assert!(loaded.warnings.iter().any(|w| w.contains("alow_registration")), "{:?}", loaded.warnings);
        });
    }

    #[test]
    fn conduit_toml_global_section() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("conduit.toml");
        std::fs::write(&path, "[global]\nserver_name = \"example.org\"\nport = 8008\n").unwrap();
        let table = read_toml(&path).unwrap();
        let c: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Serialized::defaults(table))
            .extract()
            .unwrap();
        assert_eq!(c.server_name.as_str(), "example.org");
        assert_eq!(c.port, 8008);
    }

    #[test]
    fn masked_output_hides_token() {
        let c = Config { registration_token: Some("sekrit".into()), ..Config::default() };
        let shown = c.to_masked_toml();
        assert!(!shown.contains("sekrit"));
        assert!(shown.contains("********"));
    }

    #[test]
    fn token_file_is_read_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "abc\n").unwrap();
        let mut c = Config { registration_token_file: Some(path), ..Config::default() };
        c.resolve_secrets().unwrap();
        assert_eq!(c.registration_token.as_deref(), Some("abc"));
    }
}
