//! Starting Hearth the way tests/clients/conftest.py does: a clean environment holding
//! exactly the ConfigMap `conduit-config` and the Secret's `CONDUIT_REGISTRATION_TOKEN`
//! (base64-decoded) from tests/clients/seed-deployment.yaml, adapted only where a test must:
//! a private database directory, 127.0.0.1, a free port.

use std::{
    collections::BTreeMap,
    net::TcpListener,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use base64::Engine;
use tokio::process::{Child, Command};

/// The user's deployment: the ConfigMap's data and the decoded registration token.
pub struct Seed {
    pub configmap: BTreeMap<String, String>,
    pub registration_token: String,
}

impl Seed {
    pub fn server_name(&self) -> &str {
        &self.configmap["CONDUIT_SERVER_NAME"]
    }
}

/// Reads the two documents of seed-deployment.yaml. The file's shape is fixed (values are
/// quoted, one per line, as published), so a line reader is enough; anything unexpected
/// is an error rather than a guess.
pub fn load_seed(path: &Path) -> Result<Seed> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut configmap = BTreeMap::new();
    let mut token_b64 = None;
    let mut kind = String::new();
    let mut in_data = false;
    for line in text.lines() {
        let code = strip_comment(line);
        if code.trim().is_empty() {
            continue;
        }
        if code.trim() == "---" {
            kind.clear();
            in_data = false;
            continue;
        }
        if let Some(k) = code.strip_prefix("kind:") {
            kind = k.trim().to_owned();
            continue;
        }
        if !code.starts_with(' ') {
            in_data = code.trim_end() == "data:";
            continue;
        }
        if !in_data {
            continue;
        }
        let (key, value) = code
            .trim()
            .split_once(':')
            .with_context(|| format!("{}: unexpected data line {line:?}", path.display()))?;
        let value = value.trim();
        match kind.as_str() {
            "ConfigMap" => {
                let unquoted = value
                    .strip_prefix('\'')
                    .and_then(|v| v.strip_suffix('\''))
                    .with_context(|| format!("{}: ConfigMap value not single-quoted: {line:?}", path.display()))?;
                configmap.insert(key.to_owned(), unquoted.to_owned());
            }
            "Secret" if key == "CONDUIT_REGISTRATION_TOKEN" => token_b64 = Some(value.to_owned()),
            _ => {}
        }
    }
    let token_b64 =
        token_b64.with_context(|| format!("{}: no CONDUIT_REGISTRATION_TOKEN in the Secret", path.display()))?;
    let token = base64::engine::general_purpose::STANDARD
        .decode(token_b64.as_bytes())
        .context("the Secret's CONDUIT_REGISTRATION_TOKEN is not base64")?;
    let seed = Seed { configmap, registration_token: String::from_utf8(token)? };
    for key in ["CONDUIT_SERVER_NAME", "CONDUIT_DATABASE_BACKEND", "CONDUIT_ALLOW_REGISTRATION"] {
        if !seed.configmap.contains_key(key) {
            bail!("{}: the ConfigMap has no {key}", path.display());
        }
    }
    Ok(seed)
}

/// `KEY: 'value' # comment` -> `KEY: 'value'` (a `#` inside quotes stays).
fn strip_comment(line: &str) -> &str {
    let mut quoted = false;
    for (i, c) in line.char_indices() {
        match c {
            '\'' => quoted = !quoted,
            '#' if !quoted => return line[..i].trim_end(),
            _ => {}
        }
    }
    line.trim_end()
}

pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

pub struct Hearth {
    child: Option<Child>,
    pub url: String,
    pub stdout_path: PathBuf,
    pub stderr_path: PathBuf,
}

impl Hearth {
    /// Copies the binary into `workdir` first: the lead rebuilds it from time to time, and
    /// a rebuild must not pull it from under a running test.
    pub async fn start(binary: &Path, seed: &Seed, workdir: &Path, rust_log: &str) -> Result<Self> {
        if !binary.is_file() {
            bail!(
                "Hearth binary not found at {}: build it first (cargo build -p hearth) or point HEARTH_BIN at it",
                binary.display()
            );
        }
        let copy = workdir.join("hearth");
        std::fs::copy(binary, &copy).with_context(|| format!("copying {} to {}", binary.display(), copy.display()))?;
        let database = workdir.join("matrix-conduit");
        std::fs::create_dir_all(&database)?;
        let port = free_port()?;

        let mut env: BTreeMap<String, String> = BTreeMap::new();
        env.insert("PATH".into(), std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()));
        env.insert("HOME".into(), std::env::var("HOME").unwrap_or_else(|_| "/root".into()));
        env.extend(seed.configmap.clone()); // envFrom: configMapRef conduit-config
        env.insert("CONDUIT_REGISTRATION_TOKEN".into(), seed.registration_token.clone());
        env.insert("CONDUIT_DATABASE_PATH".into(), database.display().to_string());
        env.insert("CONDUIT_ADDRESS".into(), "127.0.0.1".into());
        env.insert("CONDUIT_PORT".into(), port.to_string());
        env.insert("RUST_LOG".into(), rust_log.into());

        let stdout_path = workdir.join("hearth.stdout.log");
        let stderr_path = workdir.join("hearth.stderr.log");
        let child = Command::new(&copy)
            .env_clear()
            .envs(&env)
            .current_dir(workdir)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout_path)?)
            .stderr(std::fs::File::create(&stderr_path)?)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", copy.display()))?;
        let mut hearth =
            Hearth { child: Some(child), url: format!("http://127.0.0.1:{port}"), stdout_path, stderr_path };
        hearth.wait_ready().await?;
        Ok(hearth)
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = String::from("no attempt yet");
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().unwrap().try_wait()? {
                bail!(
                    "hearth exited with {status} before answering /_matrix/client/versions\n{}",
                    self.logs_tail(4000)
                );
            }
            match http.get(format!("{}/_matrix/client/versions", self.url)).send().await {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) => last = format!("HTTP {}", r.status()),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!(
            "hearth did not answer 200 on /_matrix/client/versions within 60 s (last: {last})\n{}",
            self.logs_tail(4000)
        )
    }

    pub fn logs_tail(&self, max: usize) -> String {
        let mut out = String::new();
        for (name, path) in [("stdout", &self.stdout_path), ("stderr", &self.stderr_path)] {
            let text = std::fs::read_to_string(path).unwrap_or_else(|_| "<not created>".into());
            let tail = if text.len() > max { &text[floor_char(&text, text.len() - max)..] } else { &text[..] };
            out.push_str(&format!("----- hearth {name} ({}) -----\n{tail}\n", path.display()));
        }
        out
    }

    /// SIGTERM, then a clean exit is required within 30 s.
    pub async fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else { return Ok(()) };
        if let Some(status) = child.try_wait()? {
            bail!("hearth died during the tests ({status})\n{}", self.logs_tail(4000));
        }
        let pid = child.id().context("no pid")?;
        let _ = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
        match tokio::time::timeout(Duration::from_secs(30), child.wait()).await {
            Ok(status) => {
                let status = status?;
                if !status.success() {
                    bail!("hearth exited with {status} after SIGTERM (expected 0)");
                }
                Ok(())
            }
            Err(_) => {
                child.kill().await?;
                bail!("hearth did not exit within 30 s of SIGTERM; killed it")
            }
        }
    }
}

pub fn floor_char(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}
