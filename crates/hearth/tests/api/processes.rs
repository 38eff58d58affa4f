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
    assert!(list.contains("@root:proc.test\tcreated=") && list.ends_with("\tadmin\n"), "{list}");
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

/// Whether `text` holds an ISO 8601 UTC time to the second (`2026-12-06T10:52:02Z`).
fn has_iso_time(text: &str) -> bool {
    text.as_bytes().windows(20).any(|w| {
        w.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
    })
}

/// What every admin command does and says, the same whether the server runs (the commands
/// then go over its admin channel) or not (they open the data directory). Expects a
/// database that has no users yet.
fn every_command(data: &std::path::Path, backend: &str) {
    let run = |args: &[&str]| admin(data, backend, args);
    let (ok, said) = run(&["create-user", "alice", "--password", "pw-alice", "--admin"]);
    assert!(ok && said.contains("created @alice:proc.test"), "{said}");
    let (ok, said) = run(&["create-user", "Bob"]);
    assert!(ok && said.contains("created @bob:proc.test") && said.contains("password: "), "{said}");
    let (ok, said) = run(&["create-user", "alice", "--password", "x"]);
    assert!(!ok && said.contains("cannot create alice: that user id is already taken"), "{said}");
    assert!(!said.contains("InUse") && !said.contains("M_"), "words, not internal names: {said}");
    let (_, list) = run(&["list-users"]);
    assert!(list.contains("@alice:proc.test\tcreated=") && list.contains("\tadmin\n"), "{list}");
    assert!(has_iso_time(&list), "{list}");
    assert!(run(&["make-admin", "bob"]).0);
    assert!(run(&["revoke-admin", "@alice:proc.test"]).0);
    let (ok, said) = run(&["make-admin", "nobody"]);
    assert!(!ok && said.contains("nobody is not a user of this server"), "{said}");
    assert!(run(&["reset-password", "bob", "--password", "pw-bob-2", "--logout-devices"]).0);

    let (ok, token) = run(&["create-token", "--uses", "3", "--expires-in-days", "7"]);
    assert!(ok, "{token}");
    let token = token.trim().to_owned();
    let (_, tokens) = run(&["list-tokens"]);
    assert!(tokens.contains(&format!("{token}\tcompleted=0\tuses_allowed=3\texpires=")), "{tokens}");
    assert!(has_iso_time(&tokens) && tokens.contains("valid"), "{tokens}");
    assert!(run(&["revoke-token", &token]).0);
    let (ok, said) = run(&["revoke-token", &token]);
    assert!(!ok && said.contains("there is no registration token"), "{said}");

    let (ok, said) = run(&["delete-room", "!nowhere:proc.test"]);
    assert!(!ok && said.contains("not a room this server knows"), "{said}");
    let (ok, said) = run(&["delete-room", "no-room"]);
    assert!(!ok && said.contains("neither a room id"), "{said}");
    assert!(run(&["block-room", "!elsewhere:other.test"]).0);
    assert!(run(&["unblock-room", "!elsewhere:other.test"]).0);
    let (ok, said) = run(&["delete-media", "mxc://proc.test/nothing"]);
    assert!(!ok && said.contains("there is no media"), "{said}");
    let (ok, said) = run(&["quarantine-media", "not-an-mxc"]);
    assert!(!ok && said.contains("not a media address"), "{said}");
    let (ok, said) = run(&["purge-remote-media", "--older-than-days", "30"]);
    assert!(ok && said.contains("removed 0"), "{said}");
    assert!(run(&["list-discovery-cache"]).0);
    assert!(run(&["flush-discovery-cache"]).0);

    // A backup into a place that cannot hold one says why.
    let (ok, said) = run(&["backup", "/proc/version/backup"]);
    assert!(!ok && said.contains("cannot write to /proc/version/backup"), "{said}");
    assert!(run(&["deactivate", "alice", "--erase"]).0);
    let (_, list) = run(&["list-users"]);
    assert!(list.contains("\tdeactivated\n") && list.contains("@bob:proc.test\tcreated="), "{list}");
}

#[test]
fn admin_on_a_stopped_server_rocksdb() {
    admin_on_a_stopped_server("rocksdb");
}

#[test]
fn admin_on_a_stopped_server_sqlite() {
    admin_on_a_stopped_server("sqlite");
}

fn admin_on_a_stopped_server(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // No database there (a mistyped path, say): refused, naming the path and its variable,
    // and nothing is created.
    let (ok, said) = admin(&data, backend, &["list-users"]);
    assert!(!ok && said.contains(&data.display().to_string()) && said.contains("CONDUIT_DATABASE_PATH"), "{said}");
    assert!(!data.exists() || std::fs::read_dir(&data).unwrap().next().is_none(), "something was created");
    assert!(admin(&data, backend, &["--create", "list-users"]).0);
    every_command(&data, backend);

    // Offline backup and restore.
    let backup = dir.path().join("backup");
    assert!(admin(&data, backend, &["backup", backup.to_str().unwrap()]).0);
    let restored = dir.path().join("restored");
    assert!(admin(&restored, backend, &["restore", backup.to_str().unwrap()]).0);
    let (_, list) = admin(&restored, backend, &["list-users"]);
    assert!(list.contains("@bob:proc.test"), "{list}");
    // Never over existing data.
    assert!(!admin(&data, backend, &["restore", backup.to_str().unwrap()]).0);
}

#[test]
fn admin_on_a_running_server_rocksdb() {
    admin_on_a_running_server("rocksdb");
}

#[test]
fn admin_on_a_running_server_sqlite() {
    admin_on_a_running_server("sqlite");
}

/// Every command while the server runs, over its channel: the server sees each change at
/// once (no restart), its log says the command came over the channel, and the channel is
/// the server user's alone. After `kill -9` the socket left behind does not stop the
/// commands from opening the data directory themselves.
fn admin_on_a_running_server(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let log = dir.path().join("stderr.log");
    let mut child = hearth(&data, backend, port)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_until_serving(port);
    let socket = data.join("admin.sock");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&socket).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "only the server's user may open the channel");
    every_command(&data, backend);
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(said.contains("over the admin channel") && said.contains("create-user"), "{said}");

    let rt = tokio::runtime::Runtime::new().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    rt.block_on(async {
        let call = Http { base: base.clone(), http: reqwest::Client::new() };
        let login = |user: &str, password: &str| {
            let body = serde_json::json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user}, "password": password});
            call.send(reqwest::Method::POST, "/_matrix/client/v3/login", None, Some(body))
        };
        // The password set over the channel works at once; the deactivated admin is gone.
        let (status, res) = login("bob", "pw-bob-2").await;
        assert_eq!(status, reqwest::StatusCode::OK, "{res}");
        let bob = res["access_token"].as_str().unwrap().to_owned();
        assert_eq!(login("alice", "pw-alice").await.0, reqwest::StatusCode::FORBIDDEN);

        // A room deleted and blocked over the channel: its member is out and cannot return.
        let made = serde_json::json!({"name": "Doomed", "room_alias_name": "doomed"});
        let (_, room) = call.send(reqwest::Method::POST, "/_matrix/client/v3/createRoom", Some(&bob), Some(made)).await;
        let room = room["room_id"].as_str().unwrap().to_owned();
        let (ok, rooms) = admin(&data, backend, &["list-rooms"]);
        assert!(ok && rooms.contains(&room) && rooms.contains("name=Doomed"), "{rooms}");
        let (ok, shown) = admin(&data, backend, &["show-room", "#doomed:proc.test"]);
        assert!(ok && shown.contains("\"joined_members\": 1") && has_iso_time(&shown), "{shown}");
        let (ok, said) = admin(&data, backend, &["delete-room", &room, "--block"]);
        assert!(ok && said.contains("1 local member(s) left") && said.contains("1 alias(es)"), "{said}");
        let (_, joined) = call.send(reqwest::Method::GET, "/_matrix/client/v3/joined_rooms", Some(&bob), None).await;
        assert_eq!(joined["joined_rooms"], serde_json::json!([]));
        let join = format!("/_matrix/client/v3/join/{room}");
        let (status, _) = call.send(reqwest::Method::POST, &join, Some(&bob), Some(serde_json::json!({}))).await;
        assert_eq!(status, reqwest::StatusCode::FORBIDDEN);

        // Media deleted over the channel is gone.
        let up: serde_json::Value = call
            .http
            .post(format!("{base}/_matrix/media/v3/upload"))
            .bearer_auth(&bob)
            .header("Content-Type", "text/plain")
            .body("family photo")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let mxc = up["content_uri"].as_str().unwrap().to_owned();
        assert!(admin(&data, backend, &["quarantine-media", &mxc]).0);
        assert!(admin(&data, backend, &["unquarantine-media", &mxc]).0);
        let (ok, said) = admin(&data, backend, &["delete-media", &mxc]);
        assert!(ok, "{said}");
        let download = format!("/_matrix/client/v1/media/download/{}", mxc.trim_start_matches("mxc://"));
        assert_eq!(call.send(reqwest::Method::GET, &download, Some(&bob), None).await.0, reqwest::StatusCode::NOT_FOUND);
    });

    // An online backup over the channel, and no restore over a running server.
    let backup = dir.path().join("backup");
    let (ok, said) = admin(&data, backend, &["backup", backup.to_str().unwrap()]);
    assert!(ok, "{said}");
    let (ok, said) = admin(&data, backend, &["restore", backup.to_str().unwrap()]);
    assert!(!ok && said.contains("stop the server"), "{said}");

    // Another user of the machine is refused by the server itself, even where the file
    // would let them in (checked when the tests run as root, which can become another user).
    if euid() == 0 {
        use std::os::unix::fs::PermissionsExt;
        for open in [dir.path(), data.as_path()] {
            std::fs::set_permissions(open, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
        let script = "import os, socket, sys\n\
            os.setgid(65534); os.setuid(65534)\n\
            s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n\
            s.sendall(b'{\"command\": \"list-users\"}\\n')\n\
            print(s.makefile().readline())";
        let out = Command::new("python3").args(["-c", script, socket.to_str().unwrap()]).output().unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            said.contains("only the server's own user") && !said.contains("bob"),
            "{said}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // kill -9 leaves the socket behind; the commands then open the directory themselves.
    send_signal(child.id(), "KILL");
    child.wait().unwrap();
    assert!(socket.exists());
    let (ok, list) = admin(&data, backend, &["list-users"]);
    assert!(ok && list.contains("@bob:proc.test"), "{list}");
    // And the next start binds the channel again.
    let mut child = hearth(&data, backend, port).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    wait_until_serving(port);
    assert!(admin(&data, backend, &["list-users"]).1.contains("@bob:proc.test"));
    send_signal(child.id(), "TERM");
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert!(!socket.exists(), "a clean stop removes the socket");
}

/// Requests to a server run as a process.
struct Http {
    base: String,
    http: reqwest::Client,
}

impl Http {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> (reqwest::StatusCode, serde_json::Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.unwrap();
        let status = res.status();
        (status, res.json().await.unwrap_or(serde_json::Value::Null))
    }
}

fn euid() -> u32 {
    // The tests' own user id, from /proc (no libc in the test's dependencies).
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).and_then(|l| l.split_whitespace().nth(2)?.parse().ok()))
        .unwrap_or(u32::MAX)
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

/// At the default level a room's creation adds no lines to the log: the auth checks of
/// state resolution speak at warn and above only, and requests are logged at debug.
#[test]
fn creating_a_room_is_quiet_at_info() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let log = dir.path().join("stderr.log");
    assert!(admin(&data, "rocksdb", &["--create", "create-user", "quiet", "--password", "pw-quiet-1"]).0);
    // RUST_LOG=info, as an operator might set it: still quiet.
    let mut child = hearth(&data, "rocksdb", port)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_until_serving(port);
    let before = std::fs::read_to_string(&log).unwrap().lines().count();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let call = Http { base: format!("http://127.0.0.1:{port}"), http: reqwest::Client::new() };
        let body = serde_json::json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "quiet"}, "password": "pw-quiet-1"});
        let (_, login) = call.send(reqwest::Method::POST, "/_matrix/client/v3/login", None, Some(body)).await;
        let token = login["access_token"].as_str().unwrap().to_owned();
        let room = serde_json::json!({"name": "Quiet", "preset": "private_chat"});
        let (status, _) = call.send(reqwest::Method::POST, "/_matrix/client/v3/createRoom", Some(&token), Some(room)).await;
        assert_eq!(status, reqwest::StatusCode::OK);
    });
    let said = std::fs::read_to_string(&log).unwrap();
    let added: Vec<&str> = said.lines().skip(before).collect();
    assert!(added.is_empty(), "a room creation logged at info: {added:#?}");
    send_signal(child.id(), "TERM");
    assert_eq!(child.wait().unwrap().code(), Some(0));
}
