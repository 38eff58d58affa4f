//! The `hearth-nfs-provisioner` binary: configuration, JSON logs, the health server, the signal handlers, leader
//! election, then the controllers.
//!
//! Usage: `hearth-nfs-provisioner [--config PATH]` (or `NFS_PROVISIONER_CONFIG=PATH`); with neither, drop-in mode reads
//! nfs-subdir-external-provisioner's environment. `--check-config` validates and exits.
//!
//! Exit status: 0 after SIGTERM/SIGINT (the Lease released), 1 on a configuration or start-up error or when the Lease
//! was lost to another replica.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use nfs_provisioner::config::{Config, ConfigError};
use nfs_provisioner::controller::{self, Stopped};
use nfs_provisioner::health::{self, Health};
use nfs_provisioner::leader::LeaderElector;
use nfs_provisioner::metrics::Metrics;
use nfs_provisioner::reconcile::Provisioner;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

struct Args {
    config: Option<PathBuf>,
    check_only: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args { config: None, check_only: false };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--config" => args.config = Some(it.next().ok_or("--config needs a path")?.into()),
            "--check-config" => args.check_only = true,
            other => {
                return Err(format!(
                    "unknown argument {other:?}; usage: hearth-nfs-provisioner [--config PATH] [--check-config]"
                ))
            }
        }
    }
    if args.config.is_none() {
        args.config = std::env::var_os("NFS_PROVISIONER_CONFIG").filter(|v| !v.is_empty()).map(PathBuf::from);
    }
    Ok(args)
}

fn load(args: &Args) -> Result<Config, ConfigError> {
    match &args.config {
        Some(path) => Config::from_file(path),
        None => Config::from_drop_in_env(|k| std::env::var(k).ok()),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .json()
        .with_current_span(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let config = match load(&args) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "invalid configuration");
            return ExitCode::FAILURE;
        }
    };
    if args.check_only {
        tracing::info!(shares = config.shares.len(), "configuration is valid");
        return ExitCode::SUCCESS;
    }
    match run(config).await {
        Ok(Stopped::Shutdown) => ExitCode::SUCCESS,
        Ok(Stopped::LostLease) => ExitCode::FAILURE,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> Result<Stopped, String> {
    let client = Client::try_default().await.map_err(|e| format!("no Kubernetes API configuration: {e}"))?;
    let identity = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| format!("hearth-nfs-provisioner-{}", std::process::id()));
    let (metrics, health) = (Arc::new(Metrics::default()), Arc::new(Health::default()));
    let (shutdown_tx, shutdown) = watch::channel(false);

    match tokio::net::TcpListener::bind(&config.listen).await {
        Ok(listener) => {
            tokio::spawn(health::serve(listener, health.clone(), metrics.clone(), shutdown.clone()));
        }
        Err(e) if config.health_server_optional => {
            tracing::warn!(listen = %config.listen, error = %e,
                "no health server (set NFS_PROVISIONER_LISTEN to give each drop-in container its own port)");
        }
        Err(e) => return Err(format!("cannot listen on {}: {e}", config.listen)),
    }
    tracing::info!(listen = %config.listen, identity, shares = config.shares.len(), "starting");
    let mut term = signal(SignalKind::terminate()).map_err(|e| format!("cannot handle SIGTERM: {e}"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| format!("cannot handle SIGINT: {e}"))?;
    let signals_tx = shutdown_tx.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        let _ = signals_tx.send(true);
    });

    let le = config.leader_election.clone();
    let mut elector = le.enabled.then(|| {
        let namespace = le.namespace.clone().unwrap_or_else(|| client.default_namespace().to_owned());
        let duration = Duration::from_secs(u64::from(le.lease_duration_seconds));
        LeaderElector::new(client.clone(), &namespace, &le.lease_name, &identity, duration)
    });
    let every = Duration::from_secs(u64::from(le.renew_every_seconds));
    if let Some(elector) = elector.as_mut() {
        if !controller::acquire(elector, every, &health, shutdown.clone()).await {
            return Ok(Stopped::Shutdown);
        }
    }
    metrics.is_leader.store(true, Ordering::Relaxed);
    health.ready.store(false, Ordering::Relaxed);

    let provisioner = Arc::new(Provisioner::new(client.clone(), Arc::new(config), &identity, metrics.clone()));
    let (stop_tx, stop) = watch::channel(false);
    let controllers = tokio::spawn(controller::run_controllers(client, provisioner, health, stop));
    let stopped = match elector.as_mut() {
        Some(elector) => {
            let deadline = Duration::from_secs(u64::from(le.lease_duration_seconds)).saturating_sub(every);
            controller::keep(elector, every, deadline, shutdown.clone()).await
        }
        None => {
            controller::wait_true(shutdown.clone()).await;
            Stopped::Shutdown
        }
    };
    metrics.is_leader.store(false, Ordering::Relaxed);
    let _ = stop_tx.send(true);
    if let Err(e) = controllers.await {
        tracing::error!(error = %e, "controllers ended abnormally");
    }
    if let (Some(elector), Stopped::Shutdown) = (elector.as_mut(), &stopped) {
        match elector.release().await {
            Ok(()) => tracing::info!("released the lease"),
            Err(e) => tracing::warn!(error = %e, "could not release the lease; it will expire"),
        }
    }
    let _ = shutdown_tx.send(true);
    Ok(stopped)
}
