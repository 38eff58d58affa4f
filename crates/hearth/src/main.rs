//! The `hearth` command: `hearth` (or `hearth serve`) runs the server; `hearth config` prints
//! the effective configuration with secrets masked; `hearth admin …` are operator commands
//! that work on a stopped server's data directory.

use std::{path::PathBuf, process::ExitCode, sync::Arc};

use clap::{Parser, Subcommand};
use hearth::{
    api::admin::{
        channel,
        command::{execute, in_words, Command as AdminCommand},
    },
    server::Running,
    Config, Services,
};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "hearth", version, about = "A light Matrix homeserver")]
struct Cli {
    /// TOML configuration file (else HEARTH_CONFIG, else CONDUIT_CONFIG; empty means none).
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the homeserver (the default).
    Serve,
    /// Print the effective configuration, secrets masked.
    Config,
    /// Serve only /.well-known/matrix/{client,server} from the configuration, without the
    /// database: a replicated Deployment that stays up while Hearth restarts.
    WellKnown,
    /// Operator commands: sent to the running server over its admin channel, or run on
    /// the data directory of a stopped one.
    Admin {
        /// Create the database if the data directory has none. Without it `hearth admin`
        /// refuses such a directory: a mistyped path must not look like a server whose
        /// users are all gone.
        #[arg(long, global = true)]
        create: bool,
        #[command(subcommand)]
        cmd: AdminCommand,
    },
}

/// glibc raises its mmap threshold after the first large free, after which big buffers
/// (argon2's 19 MiB per password check) come from per-thread arenas and are never handed
/// back: a login burst left the process at 800 MiB in the benchmark. A fixed 1 MiB
/// threshold keeps large allocations in mmap, returned to the OS when freed.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        // glibc gives each thread that allocates its own arena (up to 8 per core), and an
        // arena keeps what it once held. Requests waiting for a group commit run on extra
        // threads (`block_in_place`), so bound the arenas: measured, a burst of 2,000
        // concurrent sends raised peak RSS from 73 to 175 MiB without this. Not below 8:
        // threads beyond the bound share arenas, and two that allocate at once then take
        // turns on one lock. With 4, an initial sync's two threads (the unread count and
        // the rest) shared one about a third of the time and took 32-35 ms instead of
        // 20-22 (SQLite, benchmark database); with 8, nearly never, for 5 MiB more peak
        // RSS in the benchmark. `MALLOC_ARENA_MAX` in the environment still wins.
        if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
            libc::mallopt(libc::M_ARENA_MAX, 8);
        }
    }
}

/// Hands back to the OS the heap pages that start-up used and freed (configuration,
/// opening the database, building the router): glibc keeps freed memory below the top of
/// the heap resident until asked. Measured: about 170 KiB of an idle server's 2.6 MiB of
/// anonymous memory.
fn release_startup_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the OS; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    let loaded = match Config::load(cli.config.as_deref()) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("hearth: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&loaded.config.log);
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    match cli.command.unwrap_or(Command::Serve) {
        Command::Config => {
            print!("{}", loaded.config.to_masked_toml());
            ExitCode::SUCCESS
        }
        Command::Serve => run_server(loaded.config),
        Command::WellKnown => run_well_known(loaded.config),
        Command::Admin { create, cmd } => run_admin(loaded.config, cmd, create),
    }
}

fn init_logging(configured: &str) {
    // RUST_LOG, when set, wins over the configuration (as for any Rust program).
    let wanted = std::env::var("RUST_LOG").ok().filter(|v| !v.trim().is_empty());
    let filter = EnvFilter::try_new(quiet_libraries(wanted.as_deref().unwrap_or(configured)))
        .unwrap_or_else(|_| EnvFilter::new(quiet_libraries("info")));
    // Logs go to stderr so that command output (`hearth config`) stays clean, and are
    // coloured only on a terminal (`kubectl logs` would show the escape codes).
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

/// ruma's state resolution logs every auth check at info (eighteen lines for one room
/// creation): below warnings it speaks only when the operator names it in `log`.
fn quiet_libraries(configured: &str) -> String {
    if configured.contains("ruma") {
        configured.to_owned()
    } else {
        format!("{configured},ruma_state_res=warn")
    }
}

fn run_server(config: Config) -> ExitCode {
    // Blocking threads run password hashing and requests waiting on a group commit; a
    // small board gains nothing from hundreds of them (tokio's default is 512).
    let runtime = match tokio::runtime::Builder::new_multi_thread().max_blocking_threads(64).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hearth: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        if config.allow_check_for_updates {
            tracing::info!("allow_check_for_updates is set; Hearth never contacts anyone to check for updates");
        }
        let services = match Services::open(config) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("cannot open the database: {e}");
                eprintln!("hearth: cannot open the database: {e}");
                return ExitCode::FAILURE;
            }
        };
        log_start(&services);
        if services.users.list_accounts().is_ok_and(|a| a.is_empty()) {
            tracing::info!(
                "no accounts yet: the first to register becomes the server's admin \
                 (or, from another shell: hearth admin create-user NAME --admin)"
            );
        }
        serve_until_signal(services).await
    })
}

/// What an operator wants to see first: where the data is, in what, and who may register
/// (a token from the configuration or one made with `hearth admin create-token`).
fn log_start(services: &Services) {
    let config = &services.config;
    let registration = match (config.allow_registration, services.registration_token_required()) {
        (false, _) => "closed",
        (true, Ok(true)) => "open with a registration token",
        (true, Ok(false)) => "open to anyone",
        (true, Err(_)) => "open (token store unreadable)",
    };
    tracing::info!(
        server_name = %config.server_name,
        data = %config.database_path.display(),
        engine = ?config.database_backend,
        registration,
        federation = config.allow_federation,
        "starting Hearth {}",
        env!("CARGO_PKG_VERSION"),
    );
}

fn run_well_known(config: Config) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hearth: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        match hearth::well_known_only::serve(&config, shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("hearth: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

async fn serve_until_signal(services: Arc<Services>) -> ExitCode {
    let server = match Running::start(services.clone()).await {
        Ok(s) => s,
        Err(e) => {
            // The error names what failed: the TLS files, or the address.
            tracing::error!("{e}");
            eprintln!("hearth: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(
        server_name = %services.config.server_name,
        address = %server.addr,
        backend = services.store.backend().as_str(),
        "Hearth is listening"
    );
    release_startup_memory();
    shutdown_signal().await;
    tracing::info!("shutdown requested; finishing in-flight requests");
    match server.stop().await {
        Ok(()) => {
            tracing::info!("stopped cleanly");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("server error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Which setting named the database path (for messages about it).
fn database_path_source() -> &'static str {
    // Later sources win (README, "Configuration"): CONDUIT_* over HEARTH_* over the file.
    ["CONDUIT_DATABASE_PATH", "HEARTH_DATABASE_PATH"]
        .into_iter()
        .find(|var| std::env::var_os(var).is_some())
        .unwrap_or("database_path in the configuration file, or the default")
}

fn run_admin(config: Config, cmd: AdminCommand, create: bool) -> ExitCode {
    // A running server answers on its channel; otherwise the data directory is opened here.
    if let Some(path) = channel::socket_path(&config) {
        match channel::request(&path, &cmd) {
            Ok(Some(reply)) if reply.ok => {
                print!("{}", reply.output);
                return ExitCode::SUCCESS;
            }
            Ok(Some(reply)) => {
                eprintln!("hearth: {}", reply.output.trim_end());
                return ExitCode::FAILURE;
            }
            Ok(None) => {}
            Err(e) => {
                eprintln!("hearth: the running server's admin channel did not answer: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    if let AdminCommand::Restore { from } = &cmd {
        return match hearth::store::restore(from, &config.database_path) {
            Ok(()) => {
                println!("restored {} into {}", from.display(), config.database_path.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("hearth: restore failed: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if !create && !hearth::store::holds_database(&config.database_path, config.database_backend) {
        eprintln!(
            "hearth: there is no Hearth database ({:?}) in {} (set by {}): `hearth admin` does not create one. \
             Check the path; start the server there once, or add --create, to make a new one.",
            config.database_backend,
            config.database_path.display(),
            database_path_source(),
        );
        return ExitCode::FAILURE;
    }
    let channel_path = channel::socket_path(&config);
    let services = match Services::open(config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("hearth: cannot open the database: {e}");
            if !matches!(e, hearth::store::StoreError::Locked(_)) {
                return ExitCode::FAILURE;
            }
            match channel_path {
                Some(path) => eprintln!(
                    "hearth: a running server answers admin commands at {}, but nothing answered there",
                    path.display()
                ),
                None => eprintln!("hearth: the admin channel is off (admin_socket is empty): stop the server first"),
            }
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hearth: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(execute(&services, cmd));
    let flushed = services.store.flush();
    match (result, flushed) {
        (Ok(output), Ok(())) => {
            print!("{output}");
            ExitCode::SUCCESS
        }
        (Err(e), _) => {
            eprintln!("hearth: {}", in_words(&e));
            ExitCode::FAILURE
        }
        (_, Err(e)) => {
            eprintln!("hearth: flushing the database failed: {e}");
            ExitCode::FAILURE
        }
    }
}
