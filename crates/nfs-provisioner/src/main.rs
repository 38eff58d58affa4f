//! The `hearth-nfs-provisioner` binary. So far it only reads and validates its configuration
//! (`--config PATH`, `NFS_PROVISIONER_CONFIG`, or nfs-subdir's environment) and exits.

use std::process::ExitCode;

use nfs_provisioner::config::Config;

fn main() -> ExitCode {
    let path = std::env::args()
        .skip_while(|a| a != "--config")
        .nth(1)
        .or_else(|| std::env::var("NFS_PROVISIONER_CONFIG").ok())
        .filter(|p| !p.is_empty());
    let config = match path {
        Some(p) => Config::from_file(std::path::Path::new(&p)),
        None => Config::from_drop_in_env(|k| std::env::var(k).ok()),
    };
    match config {
        Ok(c) => {
            println!("configuration is valid: {} share(s)", c.shares.len());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
