//! The `hearth` command: `hearth` (or `hearth serve`) runs the server; `hearth config` prints
//! the effective configuration with secrets masked; `hearth admin …` are operator commands
//! that work on a stopped server's data directory.

use std::{path::PathBuf, process::ExitCode, sync::Arc};

use clap::{Parser, Subcommand};
use hearth::{server::Running, users::NewAccount, Config, Services};
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
    /// Operator commands on the data directory (stop the server first).
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

#[derive(Subcommand)]
enum AdminCommand {
    /// Create a local user. Without --password a random one is generated and printed.
    CreateUser {
        localpart: String,
        #[arg(long)]
        password: Option<String>,
        /// Make the user a server admin.
        #[arg(long)]
        admin: bool,
    },
    /// Set a user's password.
    ResetPassword {
        user: String,
        #[arg(long)]
        password: String,
    },
    /// List local users.
    ListUsers,
    /// Make a user a server admin.
    MakeAdmin { user: String },
    /// Take server admin away from a user.
    RevokeAdmin { user: String },
    /// Deactivate a user: no password, no devices, the id stays taken.
    Deactivate { user: String },
    /// Create a registration token (random unless --token is given).
    CreateToken {
        #[arg(long)]
        token: Option<String>,
        /// How many registrations it allows (default: unlimited).
        #[arg(long)]
        uses: Option<u64>,
        /// Days until it expires (default: never).
        #[arg(long)]
        expires_in_days: Option<u64>,
    },
    /// List registration tokens with their uses and expiry.
    ListTokens,
    /// Delete a registration token.
    RevokeToken { token: String },
    /// Copy the whole database into an empty directory (stopped server; for a running one
    /// use `POST /_hearth/admin/v1/backup` as an admin).
    Backup { to: PathBuf },
    /// Copy a backup into the (empty) configured database path.
    Restore { from: PathBuf },
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
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(configured))
        .unwrap_or_else(|_| EnvFilter::new("info"));
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
                 (or, with the server stopped: hearth admin create-user NAME --admin)"
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
    let services = match Services::open(config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("hearth: cannot open the database: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cmd {
        AdminCommand::CreateUser { localpart, password, admin } => create_user(&services, &localpart, password, admin),
        AdminCommand::ResetPassword { user, password } => match services.users.parse_login_user(&user) {
            Some(id) => services.users.set_password(&id, &password).map(|_| println!("password of {id} changed")),
            None => Err(hearth::error::Error::not_found(format!("{user} is not a user of this server"))),
        },
        AdminCommand::MakeAdmin { user } => with_user(&services, &user, |id| services.users.set_admin(id, true)),
        AdminCommand::RevokeAdmin { user } => with_user(&services, &user, |id| services.users.set_admin(id, false)),
        AdminCommand::Deactivate { user } => with_user(&services, &user, |id| {
            let devices: Vec<String> = services.users.devices(id)?.into_iter().map(|(d, _)| d.to_string()).collect();
            services.users.deactivate(id)?;
            for d in devices {
                services.keys.remove_device(id, &d)?;
            }
            Ok(())
        }),
        AdminCommand::CreateToken { token, uses, expires_in_days } => {
            let expiry = expires_in_days.map(|d| hearth::time::now_millis() + d * 24 * 60 * 60 * 1000);
            services.registration_tokens.create(token, uses, expiry).map(|t| println!("{t}"))
        }
        AdminCommand::ListTokens => services.registration_tokens.list().map(|tokens| {
            for (t, r) in tokens {
                let uses = r.uses_allowed.map_or("unlimited".to_owned(), |u| u.to_string());
                let expiry = r.expiry_time.map_or("never".to_owned(), |e| e.to_string());
                println!("{t}\tcompleted={}\tuses_allowed={uses}\texpiry_ms={expiry}", r.completed);
            }
        }),
        AdminCommand::RevokeToken { token } => services.registration_tokens.revoke(&token).and_then(|found| {
            if found {
                println!("revoked {token}");
                Ok(())
            } else {
                Err(hearth::error::Error::not_found(format!("no token {token}")))
            }
        }),
        AdminCommand::Backup { to } => services
            .store
            .backup(&to)
            .map_err(Into::into)
            .and_then(|()| services.media.backup_to(&to))
            .map(|()| println!("backup written to {}", to.display())),
        AdminCommand::Restore { .. } => Ok(()),
        AdminCommand::ListUsers => services.users.list_accounts().map(|accounts| {
            for (id, a) in accounts {
                let mut flags = Vec::new();
                if a.admin {
                    flags.push("admin");
                }
                if a.deactivated {
                    flags.push("deactivated");
                }
                println!("{id}\t{}", flags.join(","));
            }
        }),
    };
    let flushed = services.store.flush();
    match (result, flushed) {
        (Ok(()), Ok(())) => ExitCode::SUCCESS,
        (Err(e), _) => {
            eprintln!("hearth: {e}");
            ExitCode::FAILURE
        }
        (_, Err(e)) => {
            eprintln!("hearth: flushing the database failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `f` on a local user given as a localpart or full id.
fn with_user(
    services: &Services,
    user: &str,
    f: impl FnOnce(&ruma::UserId) -> hearth::error::Result<()>,
) -> hearth::error::Result<()> {
    let id = services
        .users
        .parse_login_user(user)
        .filter(|id| services.users.account(id).ok().flatten().is_some())
        .ok_or_else(|| hearth::error::Error::not_found(format!("{user} is not a user of this server")))?;
    f(&id)?;
    println!("done: {id}");
    Ok(())
}

fn create_user(
    services: &Services,
    localpart: &str,
    password: Option<String>,
    admin: bool,
) -> hearth::error::Result<()> {
    let localpart = localpart.trim_start_matches('@').split(':').next().unwrap_or_default().to_lowercase();
    if let Err(problem) = services.users.check_new_localpart(&localpart)? {
        return Err(hearth::error::Error::invalid_param(format!("cannot create {localpart}: {problem:?}")));
    }
    let generated = password.is_none();
    let password = password.unwrap_or_else(|| services.users.random_localpart() + &services.users.random_localpart());
    let id = services.users.create_account(NewAccount {
        localpart: &localpart,
        password: Some(&password),
        admin: admin.then_some(true),
        guest: false,
    })?;
    println!("created {id}");
    if generated {
        println!("password: {password}");
    }
    Ok(())
}
