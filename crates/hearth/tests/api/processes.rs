//! The `hearth` binary as an operator runs it: configuration errors, the data directory
//! lock between processes, `hearth config`, SIGTERM, and the admin command.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

const BIN: &str = env!("CARGO_BIN_EXE_hearth");

fn hearth(dir: &std::path::Path, backend: &str, port: u16) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CONDUIT_CONFIG", "")
        .env("CONDUIT_SERVER_NAME", "proc.test")
        .env("CONDUIT_DATABASE_PATH", dir)
        .env("CONDUIT_DATABASE_BACKEND", backend)
        .env("CONDUIT_PORT", port.to_string())
        .env("CONDUIT_REGISTRATION_TOKEN", "sekrit-token");
    cmd
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_until_serving(port: u16) {
    for _ in 0..300 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("hearth did not start listening on {port}");
}

#[test]
fn bad_value_stops_startup_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = hearth(dir.path(), "rocksdb", 1).env("CONDUIT_MAX_REQUEST_SIZE", "lots").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_request_size") && err.contains("CONDUIT_MAX_REQUEST_SIZE"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line, please: {err}");
}

#[test]
fn config_command_masks_secrets_and_warns_on_unknown_keys() {
    let dir = tempfile::tempdir().unwrap();
    let out = hearth(dir.path(), "sqlite", 1).env("CONDUIT_ALOW_FEDERATION", "true").arg("config").output().unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("server_name = \"proc.test\""), "{stdout}");
    assert!(stdout.contains("database_backend = \"sqlite\""), "{stdout}");
    assert!(!stdout.contains("sekrit-token"), "{stdout}");
    assert!(stderr.contains("alow_federation"), "{stderr}");
}

/// Also: `signal` (TERM or INT) stops the server gracefully with exit code 0.
fn second_process_is_refused(backend: &str, signal: &str) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut first = hearth(dir.path(), backend, port).stderr(Stdio::null()).stdout(Stdio::null()).spawn().unwrap();
    wait_until_serving(port);
    let out = hearth(dir.path(), backend, free_port()).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already in use") && err.contains(&first.id().to_string()), "{err}");

    // SIGTERM / SIGINT: graceful exit 0.
    send_signal(first.id(), signal);
    let status = first.wait().unwrap();
    assert_eq!(status.code(), Some(0));

    // Now the directory is free again; the admin command can use it.
    let out =
        hearth(dir.path(), backend, 1).args(["admin", "create-user", "root", "--password", "pw"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = hearth(dir.path(), backend, 1).args(["admin", "list-users"]).output().unwrap();
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(list.contains("@root:proc.test\tadmin"), "{list}");
}

fn send_signal(pid: u32, signal: &str) {
    let ok = Command::new("kill").args([&format!("-{signal}"), &pid.to_string()]).status().unwrap();
    assert!(ok.success());
}

#[test]
fn second_process_is_refused_rocksdb() {
    second_process_is_refused("rocksdb", "TERM");
}

#[test]
fn second_process_is_refused_sqlite() {
    second_process_is_refused("sqlite", "INT");
}
