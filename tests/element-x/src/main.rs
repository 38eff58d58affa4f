//! Hearth's real-client test of simplified sliding sync (MSC4186), on matrix-sdk and
//! matrix-sdk-ui 0.18, the engine of Element X (issue 23, "Tests (CI)", first bullet).
//!
//! Starts Hearth (`$HEARTH_BIN`) as tests/clients/conftest.py does, puts a logging proxy in
//! front of it, and runs seven scenarios with Element X-like clients (password login,
//! `SyncService`, `RoomListService`), each printing PASS or FAIL; a failure shows what the
//! SDK saw and the sliding-sync exchanges behind it. Ends with
//! `element-x: N passed, M failed` and exits non-zero if anything failed.
//!
//! Usage: hearth-element-x-test [SCENARIO...]   (names: see SCENARIOS; default: all)
//! Environment:
//!   HEARTH_BIN        the Hearth binary (default: ~/.cache/hearth-target/debug/hearth)
//!   HEARTH_SEED       the deployment seed (default: tests/clients/seed-deployment.yaml)
//!   HEARTH_RUST_LOG   Hearth's RUST_LOG (default: info)
//!   EX_LOG            the SDK's log filter, written to sdk.log (default: warn,matrix_sdk=info)
//!   EX_KEEP=1         keep the work directory (logs, exchanges) even when all passed
//!   EX_SERVER_URL     run against this already-running homeserver instead of starting Hearth
//!                     (a reference run, e.g. against Synapse), registering with the token
//!                     EX_REGISTRATION_TOKEN (default: the seed's)

mod cs;
mod proxy;
mod scenarios;
mod sdk;
mod server;

use std::{
    io::Write,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Result;

use crate::{
    cs::Cs,
    proxy::{cut, Proxy},
    scenarios::{Ctx, Diag, SCENARIOS},
    server::Hearth,
};

/// A scenario as a whole never runs longer than this (each wait inside has its own watchdog).
const SCENARIO_WATCHDOG: Duration = Duration::from_secs(600);

fn default_binary() -> PathBuf {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    PathBuf::from(home).join(".cache/hearth-target/debug/hearth")
}

fn main() -> std::process::ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match runtime.block_on(run()) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("element-x: setup failed: {e:#}");
            println!("element-x: 0 passed, {} failed (setup failed)", SCENARIOS.len());
            std::process::ExitCode::FAILURE
        }
    }
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// Lines appended to `p` since byte `from` that match `keep`, at most `max` (the last ones).
fn new_lines(p: &Path, from: u64, keep: impl Fn(&str) -> bool, max: usize) -> Vec<String> {
    let data = std::fs::read(p).unwrap_or_default();
    let start = (from as usize).min(data.len());
    let text = String::from_utf8_lossy(&data[start..]);
    let lines: Vec<String> = text.lines().filter(|l| keep(l)).map(|l| cut(l, 1500)).collect();
    lines[lines.len().saturating_sub(max)..].to_vec()
}

async fn run() -> Result<bool> {
    let selected: Vec<String> = std::env::args().skip(1).collect();
    for s in &selected {
        if !SCENARIOS.iter().any(|(name, _, _)| name == s) {
            let names: Vec<_> = SCENARIOS.iter().map(|(n, _, _)| *n).collect();
            anyhow::bail!("unknown scenario {s:?}; known: {names:?}");
        }
    }
    let binary = std::env::var_os("HEARTH_BIN").map(PathBuf::from).unwrap_or_else(default_binary);
    let seed_path = std::env::var_os("HEARTH_SEED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients/seed-deployment.yaml"));
    let seed = server::load_seed(&seed_path)?;

    let stamp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis();
    let workdir = std::env::temp_dir().join(format!("hearth-element-x-{}-{stamp}", std::process::id()));
    std::fs::create_dir_all(&workdir)?;
    let sdk_log = workdir.join("sdk.log");
    let filter = std::env::var("EX_LOG").unwrap_or_else(|_| "warn,matrix_sdk=info,matrix_sdk_ui=info".into());
    let log_file = std::fs::File::create(&sdk_log)?;
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::sync::Mutex::new(log_file))
        .with_ansi(false)
        .init();

    println!("element-x: work directory {}", workdir.display());
    let external = std::env::var("EX_SERVER_URL").ok().filter(|u| !u.is_empty());
    let mut hearth = match &external {
        Some(_) => None,
        None => {
            println!("element-x: Hearth binary {}", binary.display());
            let rust_log = std::env::var("HEARTH_RUST_LOG").unwrap_or_else(|_| "info".into());
            Some(Hearth::start(&binary, &seed, &workdir, &rust_log).await?)
        }
    };
    let server_url = external.clone().unwrap_or_else(|| hearth.as_ref().unwrap().url.clone());
    let registration_token = std::env::var("EX_REGISTRATION_TOKEN").unwrap_or_else(|_| seed.registration_token.clone());
    let proxy = Proxy::start(&server_url, &workdir.join("exchanges.log")).await?;
    println!(
        "element-x: {} at {server_url}, clients through the logging proxy at {}",
        if external.is_some() {
            "external homeserver (EX_SERVER_URL)".to_owned()
        } else {
            format!("Hearth (server name {})", seed.server_name())
        },
        proxy.url
    );
    let mut cs = Cs::new(&server_url, &registration_token)?;
    if external.is_some() {
        cs.suffix = format!("-{}", stamp % 1_000_000);
    }
    let ctx = Ctx { cs, proxy };

    let (mut passed, mut failed) = (0usize, 0usize);
    let mut failures = Vec::new();
    for (name, title, scenario) in SCENARIOS {
        if !selected.is_empty() && !selected.iter().any(|s| s == name) {
            continue;
        }
        let sdk_from = file_len(&sdk_log);
        let server_logs: Vec<(PathBuf, u64)> = hearth
            .iter()
            .flat_map(|h| [h.stderr_path.clone(), h.stdout_path.clone()])
            .map(|p| {
                let from = file_len(&p);
                (p, from)
            })
            .collect();
        let mut diag = Diag::default();
        let started = Instant::now();
        let outcome = match tokio::time::timeout(SCENARIO_WATCHDOG, scenario(&ctx, &mut diag)).await {
            Ok(r) => r,
            Err(_) => Err(anyhow::anyhow!("scenario watchdog: still running after {} s", SCENARIO_WATCHDOG.as_secs())),
        };
        // Checks that failed while the scenario went on come first; then what stopped it.
        let mut errors: Vec<String> = diag.failures.clone();
        if let Err(e) = outcome {
            errors.push(format!("{e:#}"));
        }
        let outcome = if errors.is_empty() { Ok(()) } else { Err(errors) };
        let secs = started.elapsed().as_secs_f32();
        match outcome {
            Ok(()) => {
                passed += 1;
                println!("PASS {name}: {title} ({secs:.1} s)");
                for n in &diag.notes {
                    println!("     note: {n}");
                }
            }
            Err(e) => {
                failed += 1;
                failures.push(*name);
                println!("FAIL {name}: {title} ({secs:.1} s)");
                for e in e {
                    println!("     error: {e}");
                }
                for n in &diag.notes {
                    println!("     note: {n}");
                }
                for (user, errs) in &diag.sync_errors {
                    let errs = errs.lock().unwrap();
                    if !errs.is_empty() {
                        println!("     {user}'s SyncService errors: {:?}", *errs);
                    }
                }
                for user in &diag.users {
                    let recent = ctx.proxy.recent_for(user, 3);
                    println!("     --- last {} sliding-sync exchanges of {user} (all in exchanges.log):", recent.len());
                    for ex in recent {
                        for line in ex.render(3000).lines() {
                            println!("     {line}");
                        }
                    }
                }
                let sdk_lines = new_lines(&sdk_log, sdk_from, |l| l.contains("WARN") || l.contains("ERROR"), 25);
                if !sdk_lines.is_empty() {
                    println!("     --- SDK warnings and errors during the scenario (sdk.log):");
                    for l in sdk_lines {
                        println!("     {l}");
                    }
                }
                let server_lines: Vec<String> = server_logs
                    .iter()
                    .flat_map(|(p, from)| new_lines(p, *from, |l| l.contains("WARN") || l.contains("ERROR"), 15))
                    .collect();
                if !server_lines.is_empty() {
                    println!("     --- Hearth warnings and errors during the scenario:");
                    for l in server_lines {
                        println!("     {l}");
                    }
                }
            }
        }
        std::io::stdout().flush().ok();
    }

    let stopped = match hearth.as_mut() {
        Some(h) => h.stop().await,
        None => Ok(()),
    };
    if let Err(e) = &stopped {
        println!("element-x: Hearth did not stop cleanly: {e:#}");
    }
    // The copy of the binary (half a gigabyte in debug) is never worth keeping.
    let _ = std::fs::remove_file(workdir.join("hearth"));
    let ok = failed == 0 && stopped.is_ok();
    let keep = std::env::var("EX_KEEP").is_ok_and(|v| !v.is_empty() && v != "0");
    if ok && !keep {
        let _ = std::fs::remove_dir_all(&workdir);
    } else {
        println!(
            "element-x: logs kept in {} (exchanges.log: every request through the proxy; sdk.log; hearth.*.log)",
            workdir.display()
        );
    }
    if failed > 0 {
        println!("element-x: failed: {}", failures.join(", "));
    }
    println!("element-x: {passed} passed, {failed} failed");
    Ok(ok)
}
