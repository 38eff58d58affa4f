//! The admin channel: how `hearth admin …` reaches a running server (from `kubectl exec`
//! into its pod) instead of its locked data directory.
//!
//! A Unix socket, by default `admin.sock` in the data directory (`admin_socket` moves it;
//! an empty value turns it off). Only the server's own user may use it: the file is made
//! readable and writable by its owner alone, and the server checks the connecting
//! process's user id (`SO_PEERCRED`) as well, so a socket in a directory others can reach
//! still answers nobody else. Root is the same user as root only.
//!
//! One command per connection: the client writes a JSON [`Command`] and a newline, the
//! server answers with one JSON [`Reply`] and a newline, then closes. Commands run through
//! [`super::command::execute`], exactly as on a stopped data directory.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt},
    net::{UnixListener, UnixStream},
    sync::oneshot,
};

use super::command::{execute, in_words, Command};
use crate::Services;

/// Longest command line accepted (a command is a few hundred bytes).
const MAX_REQUEST: usize = 64 * 1024;
/// How long a client may take to send its command.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest socket path the kernel takes (`sun_path` is 108 bytes with its NUL).
const MAX_PATH: usize = 107;

/// A command's outcome, as the channel carries it.
#[derive(Debug, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    /// What the command printed (success) or what went wrong, in words (failure).
    pub output: String,
}

/// Binds the channel at `path`, replacing a socket a previous run left behind. The caller
/// holds the data directory's lock, so no other server can be answering there.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if path.as_os_str().len() > MAX_PATH {
        return Err(std::io::Error::other(format!(
            "the admin socket path {} is longer than the {MAX_PATH} bytes a Unix socket allows; \
             set admin_socket to a shorter one",
            path.display()
        )));
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(std::io::Error::other(format!(
                "{} exists and is not a socket; move it away or set admin_socket",
                path.display()
            )))
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves the channel until `stop`, then removes the socket file.
pub async fn serve(services: Arc<Services>, listener: UnixListener, path: PathBuf, mut stop: oneshot::Receiver<()>) {
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let services = services.clone();
                    tokio::spawn(async move { answer(services, stream).await });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "admin channel: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    let _ = std::fs::remove_file(&path);
}

/// The effective user id of this process.
fn own_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

async fn answer(services: Arc<Services>, mut stream: UnixStream) {
    // The command is read before anything is decided, so that a refused client reads the
    // answer instead of finding the connection closed under its write.
    let line = read_command(&mut stream).await;
    let reply = match stream.peer_cred() {
        Ok(cred) if cred.uid() == own_uid() => match line {
            Ok(line) => run(&services, &line).await,
            Err(reply) => reply,
        },
        Ok(cred) => {
            tracing::warn!(uid = cred.uid(), "admin channel: refused a process of another user");
            Reply { ok: false, output: "only the server's own user may use its admin channel".into() }
        }
        Err(e) => Reply { ok: false, output: format!("cannot tell who is asking: {e}") },
    };
    let mut line = serde_json::to_vec(&reply).unwrap_or_else(|_| b"{\"ok\":false,\"output\":\"\"}".to_vec());
    line.push(b'\n');
    let _ = stream.write_all(&line).await;
    let _ = stream.shutdown().await;
}

/// The client's one line, or the reply that says why there is none.
async fn read_command(stream: &mut UnixStream) -> Result<Vec<u8>, Reply> {
    let (read, _) = stream.split();
    let mut reader = tokio::io::BufReader::new(tokio::io::AsyncReadExt::take(read, MAX_REQUEST as u64 + 1));
    let mut line = Vec::new();
    match tokio::time::timeout(READ_TIMEOUT, reader.read_until(b'\n', &mut line)).await {
        Ok(Ok(_)) if line.len() <= MAX_REQUEST => Ok(line),
        Ok(Ok(_)) => Err(Reply { ok: false, output: "the command is too long".into() }),
        Ok(Err(e)) => Err(Reply { ok: false, output: format!("cannot read the command: {e}") }),
        Err(_) => Err(Reply { ok: false, output: "no command arrived in time".into() }),
    }
}

async fn run(services: &Arc<Services>, line: &[u8]) -> Reply {
    let cmd: Command = match serde_json::from_slice(line) {
        Ok(c) => c,
        Err(e) => return Reply { ok: false, output: format!("not a command this server knows: {e}") },
    };
    let name = cmd.name();
    match execute(services, cmd).await {
        Ok(output) => {
            tracing::info!(command = name, "admin command done over the admin channel");
            Reply { ok: true, output }
        }
        Err(e) => {
            tracing::info!(command = name, error = %e, "admin command failed over the admin channel");
            Reply { ok: false, output: in_words(&e) }
        }
    }
}

/// Asks the server listening at `path` to run `cmd`. `Ok(None)` when no server answers
/// there (no socket, or one left by a server that is gone).
pub fn request(path: &Path, cmd: &Command) -> std::io::Result<Option<Reply>> {
    use std::io::ErrorKind;
    let mut stream = match std::os::unix::net::UnixStream::connect(path) {
        Ok(s) => s,
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) => return Ok(None),
        Err(e) => return Err(std::io::Error::new(e.kind(), format!("cannot reach {}: {e}", path.display()))),
    };
    let mut line = serde_json::to_vec(cmd).map_err(std::io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer)?;
    let reply = serde_json::from_str(&answer)
        .map_err(|e| std::io::Error::other(format!("the server's answer was not understood: {e}")))?;
    Ok(Some(reply))
}

/// Where a server with `config` listens for admin commands; `None` when turned off.
pub fn socket_path(config: &crate::Config) -> Option<PathBuf> {
    match config.admin_socket.as_deref() {
        None => Some(config.database_path.join("admin.sock")),
        Some("") => None,
        Some(p) => Some(PathBuf::from(p)),
    }
}
