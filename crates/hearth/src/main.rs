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
    /// Operator commands on the data directory (stop the server first).
    #[command(subcommand)]
    Admin(Admin),
}

#[derive(Subcommand)]
enum Admin {
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
}

fn main() -> ExitCode {
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
        Command::Admin(cmd) => run_admin(loaded.config, cmd),
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
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
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
        serve_until_signal(services).await
    })
}

async fn serve_until_signal(services: Arc<Services>) -> ExitCode {
    let server = match Running::start(services.clone()).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("hearth: cannot listen on {}:{}: {e}", services.config.address, services.config.port);
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(
        server_name = %services.config.server_name,
        address = %server.addr,
        backend = services.store.backend().as_str(),
        "Hearth is listening"
    );
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

fn run_admin(config: Config, cmd: Admin) -> ExitCode {
    let services = match Services::open(config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("hearth: cannot open the database: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cmd {
        Admin::CreateUser { localpart, password, admin } => create_user(&services, &localpart, password, admin),
        Admin::ResetPassword { user, password } => match services.users.parse_login_user(&user) {
            Some(id) => services.users.set_password(&id, &password).map(|_| println!("password of {id} changed")),
            None => Err(hearth::error::Error::not_found(format!("{user} is not a user of this server"))),
        },
        Admin::ListUsers => services.users.list_accounts().map(|accounts| {
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
    })?;
    println!("created {id}");
    if generated {
        println!("password: {password}");
    }
    Ok(())
}
