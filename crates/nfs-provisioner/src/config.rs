//! The provisioner's configuration: which NFS shares it carves volumes out of, which provisioner names it answers to,
//! which earlier provisioners' volumes it may delete, and how it elects a leader.
//!
//! Two sources, never mixed:
//! - a TOML file (`--config PATH` or `NFS_PROVISIONER_CONFIG`), naming any number of shares;
//! - drop-in mode, when no file is named: nfs-subdir-external-provisioner's environment (`NFS_SERVER`, `NFS_PATH`,
//!   `PROVISIONER_NAME`, the share mounted at `/persistentvolumes`) describes exactly one share, so its Deployment keeps
//!   working by changing the image.
//!
//! Everything is checked once, here, by [`Config::validate`]; the rest of the crate trusts a `Config` it is handed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

/// Where nfs-subdir-external-provisioner expects its share to be mounted; drop-in mode keeps it.
pub const DROP_IN_MOUNT: &str = "/persistentvolumes";

/// The provisioner name nfs-subdir-external-provisioner answers to when `PROVISIONER_NAME` is unset.
pub const DROP_IN_DEFAULT_PROVISIONER: &str = "k8s-sigs.io/nfs-subdir-external-provisioner";

/// The whole configuration, after validation.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Config {
    /// Names a StorageClass's `provisioner` field may carry for this provisioner to act on its claims. Each share's own
    /// `provisioner-names` are answered to as well.
    #[serde(default)]
    pub provisioner_names: Vec<String>,
    /// `pv.kubernetes.io/provisioned-by` values of earlier provisioners (e.g. nfs-subdir's names) whose released
    /// volumes this provisioner may delete. Its own names are always included.
    #[serde(default)]
    pub provisioned_by: Vec<String>,
    /// The shares, at least one.
    #[serde(default, rename = "share")]
    pub shares: Vec<Share>,
    #[serde(default)]
    pub leader_election: LeaderElection,
    /// Address of the `/healthz`, `/readyz` and `/metrics` server.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Set in drop-in mode only. The seed runs two nfs-subdir containers in one pod, which would both want the health
    /// port; there a port already taken is a warning, not a reason to stop (`NFS_PROVISIONER_LISTEN` picks another).
    #[serde(skip)]
    pub health_server_optional: bool,
}

/// One NFS export, and where the provisioner's pod has it mounted.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Share {
    /// The name a StorageClass's `share` parameter picks it by.
    pub name: String,
    /// The NFS server, as an IP address or a host name; written into each PV as is.
    pub server: String,
    /// The exported path on the server, absolute.
    pub path: String,
    /// Where the export is mounted inside the provisioner's pod, absolute.
    pub mount: PathBuf,
    /// Provisioner names whose StorageClasses land on this share when they carry no `share` parameter (what the
    /// seed's `nfs-big` / `nfs-small` classes need).
    #[serde(default)]
    pub provisioner_names: Vec<String>,
}

/// Leader election through a `coordination.k8s.io/v1` Lease.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct LeaderElection {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The Lease's name.
    #[serde(default = "default_lease_name")]
    pub lease_name: String,
    /// The Lease's namespace; unset means the pod's own namespace (the client's default namespace).
    #[serde(default)]
    pub namespace: Option<String>,
    /// How long a holder's claim lasts without renewal before another replica may take over.
    #[serde(default = "default_lease_duration")]
    pub lease_duration_seconds: u32,
    /// How often the holder renews, and how often a standby retries.
    #[serde(default = "default_renew_every")]
    pub renew_every_seconds: u32,
}

impl Default for LeaderElection {
    fn default() -> Self {
        LeaderElection {
            enabled: true,
            lease_name: default_lease_name(),
            namespace: None,
            lease_duration_seconds: default_lease_duration(),
            renew_every_seconds: default_renew_every(),
        }
    }
}

fn yes() -> bool {
    true
}
fn default_lease_name() -> String {
    "hearth-nfs-provisioner".to_owned()
}
fn default_lease_duration() -> u32 {
    15
}
fn default_renew_every() -> u32 {
    5
}
fn default_listen() -> String {
    "0.0.0.0:8080".to_owned()
}

/// What is wrong with a configuration; each says which key and what was expected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("cannot read the configuration file {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("the configuration file {path} is not valid: {reason}")]
    Parse { path: String, reason: String },
    #[error("no configuration file was named and NFS_SERVER is not set: name a file with --config or NFS_PROVISIONER_CONFIG, or set NFS_SERVER and NFS_PATH as for nfs-subdir-external-provisioner")]
    NoSource,
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    /// Parses and validates a TOML document; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let config: Config =
            toml::from_str(text).map_err(|e| ConfigError::Parse { path: origin.to_owned(), reason: e.to_string() })?;
        config.validate()?;
        Ok(config)
    }

    /// Reads and validates the file at `path`.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::Read { path: origin.clone(), reason: e.to_string() })?;
        Config::from_toml(&text, &origin)
    }

    /// Drop-in mode: one share from nfs-subdir-external-provisioner's environment, read through `env`.
    pub fn from_drop_in_env(env: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let server = env("NFS_SERVER").filter(|s| !s.is_empty()).ok_or(ConfigError::NoSource)?;
        let path = env("NFS_PATH").filter(|s| !s.is_empty()).ok_or_else(|| {
            ConfigError::Invalid("NFS_SERVER is set but NFS_PATH is not: set the exported path".into())
        })?;
        let provisioner =
            env("PROVISIONER_NAME").filter(|s| !s.is_empty()).unwrap_or_else(|| DROP_IN_DEFAULT_PROVISIONER.to_owned());
        let enabled = match env("ENABLE_LEADER_ELECTION").as_deref() {
            None | Some("") => true,
            Some(v) => parse_bool(v).ok_or_else(|| {
                ConfigError::Invalid(format!("ENABLE_LEADER_ELECTION is {v:?}; expected true or false"))
            })?,
        };
        let config = Config {
            provisioner_names: vec![provisioner.clone()],
            provisioned_by: Vec::new(),
            shares: vec![Share {
                name: "default".to_owned(),
                server,
                path,
                mount: PathBuf::from(DROP_IN_MOUNT),
                provisioner_names: vec![provisioner.clone()],
            }],
            leader_election: LeaderElection {
                enabled,
                lease_name: lease_name_for(&provisioner),
                ..LeaderElection::default()
            },
            listen: env("NFS_PROVISIONER_LISTEN").filter(|l| !l.is_empty()).unwrap_or_else(default_listen),
            health_server_optional: true,
        };
        config.validate()?;
        Ok(config)
    }

    /// Every name this provisioner answers to: the top-level ones and each share's.
    pub fn answered_names(&self) -> BTreeSet<&str> {
        self.provisioner_names
            .iter()
            .chain(self.shares.iter().flat_map(|s| s.provisioner_names.iter()))
            .map(String::as_str)
            .collect()
    }

    /// Whether a PV whose `pv.kubernetes.io/provisioned-by` is `name` is this provisioner's to delete.
    pub fn may_delete_provisioned_by(&self, name: &str) -> bool {
        self.answered_names().contains(name) || self.provisioned_by.iter().any(|n| n == name)
    }

    pub fn share(&self, name: &str) -> Option<&Share> {
        self.shares.iter().find(|s| s.name == name)
    }

    /// The share a class with no `share` parameter lands on: the one listing its provisioner name, else the only one.
    pub fn default_share_for(&self, provisioner: &str) -> Option<&Share> {
        self.shares
            .iter()
            .find(|s| s.provisioner_names.iter().any(|n| n == provisioner))
            .or(if self.shares.len() == 1 { self.shares.first() } else { None })
    }

    /// Checks every rule a running provisioner relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |msg: String| Err(ConfigError::Invalid(msg));
        if self.shares.is_empty() {
            return bad("no share is configured: add at least one [[share]] with name, server, path and mount".into());
        }
        if self.answered_names().is_empty() {
            return bad(
                "no provisioner name is configured: set provisioner-names, or provisioner-names on a share".into()
            );
        }
        for name in self.answered_names().into_iter().chain(self.provisioned_by.iter().map(String::as_str)) {
            check_provisioner_name(name)?;
        }
        let mut names = BTreeSet::new();
        let mut owner_of: BTreeMap<&str, &str> = BTreeMap::new();
        for share in &self.shares {
            check_share(share)?;
            if !names.insert(share.name.as_str()) {
                return bad(format!("share name {:?} is used twice; share names must be unique", share.name));
            }
            for p in &share.provisioner_names {
                if let Some(other) = owner_of.insert(p.as_str(), share.name.as_str()) {
                    return bad(format!(
                        "provisioner name {p:?} is listed by shares {other:?} and {:?}; a class without a share \
                         parameter could not tell which to use",
                        share.name
                    ));
                }
            }
        }
        let le = &self.leader_election;
        if le.enabled {
            if !is_dns_subdomain(&le.lease_name) {
                return bad(format!(
                    "leader-election.lease-name {:?} is not a valid object name (lowercase letters, digits, '-' and '.')",
                    le.lease_name
                ));
            }
            if le.renew_every_seconds == 0 || le.renew_every_seconds >= le.lease_duration_seconds {
                return bad(format!(
                    "leader-election.renew-every-seconds ({}) must be at least 1 and less than lease-duration-seconds ({})",
                    le.renew_every_seconds, le.lease_duration_seconds
                ));
            }
        }
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return bad(format!("listen {:?} is not an address and port such as 0.0.0.0:8080", self.listen));
        }
        Ok(())
    }
}

/// The Lease name drop-in mode uses: one per provisioner name, as nfs-subdir had one Endpoints lock per name.
fn lease_name_for(provisioner: &str) -> String {
    let mut name: String = provisioner
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
        .collect::<String>()
        .trim_matches('-')
        .to_owned();
    name.truncate(200);
    let name = name.trim_end_matches('-');
    if name.is_empty() {
        default_lease_name()
    } else {
        format!("{name}-leader")
    }
}

fn check_share(share: &Share) -> Result<(), ConfigError> {
    let n = &share.name;
    if n.is_empty() || !n.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') {
        return Err(ConfigError::Invalid(format!(
            "share name {n:?} must be non-empty lowercase letters, digits and '-'"
        )));
    }
    if !is_server(&share.server) {
        return Err(ConfigError::Invalid(format!(
            "share {n:?}: server {:?} is neither an IP address nor a host name",
            share.server
        )));
    }
    let export = Path::new(&share.path);
    if !export.is_absolute() || share.path.contains('\0') || export.components().any(|c| c == Component::ParentDir) {
        return Err(ConfigError::Invalid(format!(
            "share {n:?}: path {:?} must be an absolute exported path without '..'",
            share.path
        )));
    }
    if !share.mount.is_absolute() || share.mount.components().any(|c| c == Component::ParentDir) {
        return Err(ConfigError::Invalid(format!(
            "share {n:?}: mount {:?} must be an absolute path inside the pod without '..'",
            share.mount.display()
        )));
    }
    Ok(())
}

fn check_provisioner_name(name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/'));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Invalid(format!(
            "provisioner name {name:?} must be non-empty, at most 253 characters of letters, digits, '.', '-', '_' and '/'"
        )))
    }
}

/// An IP address (v4 or v6, brackets allowed) or an RFC 1123 host name.
pub fn is_server(server: &str) -> bool {
    let unbracketed = server.strip_prefix('[').and_then(|s| s.strip_suffix(']')).unwrap_or(server);
    unbracketed.parse::<IpAddr>().is_ok() || is_dns_subdomain(&server.to_ascii_lowercase())
}

/// RFC 1123 subdomain: dot-separated labels of lowercase letters, digits and '-', not starting or ending with '-'.
fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        })
}

/// Go's `strconv.ParseBool`, which nfs-subdir uses for its boolean settings.
pub fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_SHARES: &str = r#"
        provisioner-names = ["hearth.nfs"]
        provisioned-by = ["nfs-provisioner-old"]

        [leader-election]
        namespace = "nfs-storage"
        lease-duration-seconds = 20
        renew-every-seconds = 4

        [[share]]
        name = "big"
        server = "nas-big.home.arpa"
        path = "/storage"
        mount = "/shares/big"
        provisioner-names = ["nfs-provisioner-big"]

        [[share]]
        name = "small"
        server = "192.168.3.11"
        path = "/storage"
        mount = "/shares/small"
        provisioner-names = ["nfs-provisioner-small"]
    "#;

    fn invalid(text: &str) -> String {
        match Config::from_toml(text, "test.toml") {
            Err(e) => e.to_string(),
            Ok(c) => panic!("expected an error, got {c:?}"),
        }
    }

    #[test]
    fn file_with_two_shares_and_a_host_name_is_accepted() {
        let config = Config::from_toml(TWO_SHARES, "test.toml").unwrap();
        assert_eq!(config.shares.len(), 2);
        assert_eq!(config.shares[0].server, "nas-big.home.arpa");
        assert_eq!(config.shares[1].mount, PathBuf::from("/shares/small"));
        assert_eq!(
            config.answered_names().into_iter().collect::<Vec<_>>(),
            ["hearth.nfs", "nfs-provisioner-big", "nfs-provisioner-small"]
        );
        assert_eq!(config.leader_election.namespace.as_deref(), Some("nfs-storage"));
        assert_eq!(config.leader_election.lease_duration_seconds, 20);
        assert_eq!(config.listen, "0.0.0.0:8080");
        assert!(!config.health_server_optional);
    }

    #[test]
    fn class_without_share_parameter_lands_on_the_share_listing_its_provisioner() {
        let config = Config::from_toml(TWO_SHARES, "test.toml").unwrap();
        assert_eq!(config.default_share_for("nfs-provisioner-small").map(|s| s.name.as_str()), Some("small"));
        assert_eq!(config.default_share_for("hearth.nfs"), None, "two shares and no mapping: ambiguous");
    }

    #[test]
    fn earlier_provisioners_volumes_may_be_deleted_and_strangers_may_not() {
        let config = Config::from_toml(TWO_SHARES, "test.toml").unwrap();
        assert!(config.may_delete_provisioned_by("nfs-provisioner-old"));
        assert!(config.may_delete_provisioned_by("nfs-provisioner-big"));
        assert!(!config.may_delete_provisioned_by("rancher.io/local-path"));
    }

    #[test]
    fn drop_in_env_gives_one_share_at_persistentvolumes() {
        let env = |k: &str| match k {
            "NFS_SERVER" => Some("192.168.3.10".to_owned()),
            "NFS_PATH" => Some("/storage".to_owned()),
            "PROVISIONER_NAME" => Some("nfs-provisioner-big".to_owned()),
            _ => None,
        };
        let config = Config::from_drop_in_env(env).unwrap();
        assert_eq!(
            config.shares,
            vec![Share {
                name: "default".into(),
                server: "192.168.3.10".into(),
                path: "/storage".into(),
                mount: PathBuf::from("/persistentvolumes"),
                provisioner_names: vec!["nfs-provisioner-big".into()],
            }]
        );
        assert!(config.leader_election.enabled);
        assert_eq!(config.leader_election.lease_name, "nfs-provisioner-big-leader");
        assert_eq!(config.listen, "0.0.0.0:8080");
        assert!(config.health_server_optional, "two drop-in containers in one pod must not fight over the port");
        assert_eq!(config.default_share_for("nfs-provisioner-big").map(|s| s.name.as_str()), Some("default"));
    }

    #[test]
    fn drop_in_defaults_to_nfs_subdirs_provisioner_name_and_accepts_host_names() {
        let env = |k: &str| match k {
            "NFS_SERVER" => Some("nas.local".to_owned()),
            "NFS_PATH" => Some("/export".to_owned()),
            "ENABLE_LEADER_ELECTION" => Some("false".to_owned()),
            "NFS_PROVISIONER_LISTEN" => Some("0.0.0.0:8081".to_owned()),
            _ => None,
        };
        let config = Config::from_drop_in_env(env).unwrap();
        assert_eq!(config.listen, "0.0.0.0:8081");
        assert_eq!(config.provisioner_names, vec![DROP_IN_DEFAULT_PROVISIONER.to_owned()]);
        assert_eq!(config.shares[0].server, "nas.local");
        assert!(!config.leader_election.enabled);
        assert_eq!(config.leader_election.lease_name, "k8s-sigs-io-nfs-subdir-external-provisioner-leader");
    }

    #[test]
    fn drop_in_errors_name_the_missing_variable() {
        assert_eq!(Config::from_drop_in_env(|_| None), Err(ConfigError::NoSource));
        let only_server = |k: &str| (k == "NFS_SERVER").then(|| "10.0.0.1".to_owned());
        assert!(Config::from_drop_in_env(only_server).unwrap_err().to_string().contains("NFS_PATH"));
        let bad_bool = |k: &str| match k {
            "NFS_SERVER" => Some("10.0.0.1".to_owned()),
            "NFS_PATH" => Some("/x".to_owned()),
            "ENABLE_LEADER_ELECTION" => Some("maybe".to_owned()),
            _ => None,
        };
        assert!(Config::from_drop_in_env(bad_bool).unwrap_err().to_string().contains("ENABLE_LEADER_ELECTION"));
    }

    #[test]
    fn unknown_key_is_named() {
        let text = TWO_SHARES.replace("provisioned-by", "provisioned-bye");
        assert!(invalid(&text).contains("provisioned-bye"), "{}", invalid(&text));
    }

    #[test]
    fn no_share_is_refused() {
        assert!(invalid("provisioner-names = [\"a\"]").contains("no share"));
    }

    #[test]
    fn no_provisioner_name_is_refused() {
        let text = "[[share]]\nname = \"a\"\nserver = \"10.0.0.1\"\npath = \"/s\"\nmount = \"/m\"\n";
        assert!(invalid(text).contains("no provisioner name"));
    }

    #[test]
    fn duplicate_share_names_are_refused() {
        let text = TWO_SHARES.replace("name = \"small\"", "name = \"big\"");
        assert!(invalid(&text).contains("used twice"));
    }

    #[test]
    fn one_provisioner_name_on_two_shares_is_refused() {
        let text = TWO_SHARES.replace("nfs-provisioner-small", "nfs-provisioner-big");
        assert!(invalid(&text).contains("listed by shares"));
    }

    #[test]
    fn bad_server_path_and_mount_are_named() {
        assert!(invalid(&TWO_SHARES.replace("192.168.3.11", "bad host!")).contains("bad host!"));
        assert!(invalid(&TWO_SHARES.replace("path = \"/storage\"", "path = \"storage\"")).contains("path \"storage\""));
        assert!(invalid(&TWO_SHARES.replace("path = \"/storage\"", "path = \"/a/../b\"")).contains("'..'"));
        assert!(invalid(&TWO_SHARES.replace("/shares/big", "shares/big")).contains("mount"));
    }

    #[test]
    fn ip_v6_and_host_names_are_servers() {
        assert!(is_server("fd00::10"));
        assert!(is_server("[fd00::10]"));
        assert!(is_server("NAS.Home.Arpa"));
        assert!(!is_server(""));
        assert!(!is_server("-nas"));
        assert!(!is_server("nas..home"));
    }

    #[test]
    fn renewal_must_come_before_expiry() {
        let text = TWO_SHARES.replace("renew-every-seconds = 4", "renew-every-seconds = 20");
        assert!(invalid(&text).contains("renew-every-seconds"));
    }

    #[test]
    fn bad_listen_address_is_named() {
        let text = format!("listen = \"localhost\"\n{TWO_SHARES}");
        assert!(invalid(&text).contains("listen"));
    }

    #[test]
    fn file_that_cannot_be_read_is_named() {
        let err = Config::from_file(Path::new("/nonexistent/provisioner.toml")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/provisioner.toml"));
    }
}
