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

fn admin(dir: &std::path::Path, backend: &str, args: &[&str]) -> (bool, String) {
    let out = hearth(dir, backend, 1).arg("admin").args(args).output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn admin_commands(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // No database there (a mistyped path, say): refused, naming the path and its variable,
    // and nothing is created.
    let (ok, said) = admin(&data, backend, &["list-users"]);
    assert!(!ok && said.contains(&data.display().to_string()) && said.contains("CONDUIT_DATABASE_PATH"), "{said}");
    assert!(!data.exists() || std::fs::read_dir(&data).unwrap().next().is_none(), "something was created");
    assert!(admin(&data, backend, &["create-user", "alice", "--password", "pw", "--create"]).0);
    assert!(admin(&data, backend, &["create-user", "bob", "--password", "pw"]).0);
    let (_, list) = admin(&data, backend, &["list-users"]);
    assert!(list.contains("@alice:proc.test\tadmin") && list.contains("@bob:proc.test\t\n"), "{list}");
    assert!(admin(&data, backend, &["make-admin", "bob"]).0);
    assert!(admin(&data, backend, &["revoke-admin", "@alice:proc.test"]).0);
    assert!(admin(&data, backend, &["deactivate", "alice"]).0);
    let (_, list) = admin(&data, backend, &["list-users"]);
    assert!(list.contains("@alice:proc.test\tdeactivated") && list.contains("@bob:proc.test\tadmin"), "{list}");
    assert!(!admin(&data, backend, &["make-admin", "nobody"]).0);

    let (ok, token) = admin(&data, backend, &["create-token", "--uses", "3", "--expires-in-days", "7"]);
    assert!(ok, "{token}");
    let token = token.trim().to_owned();
    let (_, tokens) = admin(&data, backend, &["list-tokens"]);
    assert!(tokens.contains(&format!("{token}\tcompleted=0\tuses_allowed=3")), "{tokens}");
    assert!(admin(&data, backend, &["revoke-token", &token]).0);
    assert!(!admin(&data, backend, &["revoke-token", &token]).0);

    // Offline backup and restore.
    let backup = dir.path().join("backup");
    assert!(admin(&data, backend, &["backup", backup.to_str().unwrap()]).0);
    let restored = dir.path().join("restored");
    assert!(admin(&restored, backend, &["restore", backup.to_str().unwrap()]).0);
    let (_, list) = admin(&restored, backend, &["list-users"]);
    assert!(list.contains("@bob:proc.test\tadmin"), "{list}");
    // Never over existing data.
    assert!(!admin(&data, backend, &["restore", backup.to_str().unwrap()]).0);
}

#[test]
fn admin_commands_rocksdb() {
    admin_commands("rocksdb");
}

#[test]
fn admin_commands_sqlite() {
    admin_commands("sqlite");
}

/// SIGTERM in the middle of a burst of sends: every acknowledged event is there after a
/// restart, and the server exits 0.
fn sigterm_during_burst(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let start = || {
        hearth(&data, backend, port)
            .env("CONDUIT_ALLOW_REGISTRATION", "true")
            .stderr(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap()
    };
    assert!(admin(&data, backend, &["--create", "create-user", "alice", "--password", "pw"]).0);
    let mut child = start();
    wait_until_serving(port);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let acked = rt.block_on(async {
        let http = reqwest::Client::new();
        let login: serde_json::Value = http
            .post(format!("{base}/_matrix/client/v3/login"))
            .json(&serde_json::json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}, "password": "pw"}))
            .send().await.unwrap().json().await.unwrap();
        let token = login["access_token"].as_str().unwrap().to_owned();
        let room: serde_json::Value = http.post(format!("{base}/_matrix/client/v3/createRoom")).bearer_auth(&token).json(&serde_json::json!({}))
            .send().await.unwrap().json().await.unwrap();
        let room = room["room_id"].as_str().unwrap().to_owned();
        let mut acked = Vec::new();
        for i in 0..400 {
            if i == 60 {
                send_signal(child.id(), "TERM");
            }
            let res = http
                .put(format!("{base}/_matrix/client/v3/rooms/{room}/send/m.room.message/t{i}"))
                .bearer_auth(&token)
                .json(&serde_json::json!({"msgtype": "m.text", "body": format!("m{i}")}))
                .send()
                .await;
            match res {
                Ok(r) if r.status().is_success() => {
                    let v: serde_json::Value = r.json().await.unwrap();
                    acked.push(v["event_id"].as_str().unwrap().to_owned());
                }
                _ => break,
            }
        }
        (token, room, acked)
    });
    assert_eq!(child.wait().unwrap().code(), Some(0), "graceful stop exits 0");
    let (token, room, acked) = acked;
    assert!(acked.len() >= 60, "only {} sends were acknowledged", acked.len());
    let mut child = start();
    wait_until_serving(port);
    let present: std::collections::BTreeSet<String> = rt.block_on(async {
        let page: serde_json::Value = reqwest::Client::new()
            .get(format!("{base}/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=1000"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        page["chunk"].as_array().unwrap().iter().filter_map(|e| e["event_id"].as_str().map(str::to_owned)).collect()
    });
    for id in &acked {
        assert!(present.contains(id), "acknowledged event {id} lost across SIGTERM");
    }
    send_signal(child.id(), "TERM");
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

#[test]
fn sigterm_during_burst_rocksdb() {
    sigterm_during_burst("rocksdb");
}

#[test]
fn sigterm_during_burst_sqlite() {
    sigterm_during_burst("sqlite");
}

/// The first lines an operator reads: where the data is, the engine, who may register,
/// and, on an empty server, how the first user comes to be.
#[test]
fn startup_says_where_and_who_may_register() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let log = dir.path().join("stderr.log");
    let mut child = hearth(&data, "sqlite", port)
        .env("CONDUIT_ALLOW_REGISTRATION", "true")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_until_serving(port);
    send_signal(child.id(), "TERM");
    child.wait().unwrap();
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(said.contains("starting Hearth") && said.contains(&data.display().to_string()), "{said}");
    assert!(said.contains("Sqlite") && said.contains("open with a registration token"), "{said}");
    assert!(said.contains("no accounts yet") && said.contains("create-user"), "{said}");
}
