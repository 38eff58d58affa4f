//! Password hashing with argon2id (the `argon2` crate's defaults, OWASP's minimum).
//!
//! Each hash or verification holds 19 MiB for its duration. Running more of them at once
//! than there are cores gains nothing and a burst of logins (even for unknown users) could
//! otherwise grow the process by gigabytes, so at most [`MAX_CONCURRENT_HASHES`] run at a
//! time, process-wide; the rest wait their turn on the blocking pool.

use argon2::{
    password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString},
    Argon2,
};

use crate::error::{Error, Result};

/// Hashes computed at the same time, at most.
pub const MAX_CONCURRENT_HASHES: usize = 2;

static RUNNING: std::sync::Mutex<usize> = std::sync::Mutex::new(0);
static FREED: std::sync::Condvar = std::sync::Condvar::new();

/// Runs `f` once fewer than [`MAX_CONCURRENT_HASHES`] others are running.
fn with_permit<T>(f: impl FnOnce() -> T) -> T {
    {
        let mut running = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
        while *running >= MAX_CONCURRENT_HASHES {
            running = FREED.wait(running).unwrap_or_else(|e| e.into_inner());
        }
        *running += 1;
    }
    struct Release;
    impl Drop for Release {
        fn drop(&mut self) {
            let mut running = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
            *running -= 1;
            FREED.notify_one();
        }
    }
    let _release = Release;
    f()
}

/// Longest password accepted: hashing cost must not be a lever for abuse.
pub const MAX_PASSWORD_BYTES: usize = 1024;

pub fn hash(password: &str) -> Result<String> {
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(Error::invalid_param(format!("Password longer than {MAX_PASSWORD_BYTES} bytes")));
    }
    let salt = SaltString::generate(&mut OsRng);
    with_permit(|| Argon2::default().hash_password(password.as_bytes(), &salt).map(|h| h.to_string()))
        .map_err(|e| Error::internal(format!("argon2: {e}")))
}

pub fn verify(password: &str, phc: &str) -> Result<bool> {
    if password.len() > MAX_PASSWORD_BYTES {
        return Ok(false);
    }
    let parsed = PasswordHash::new(phc).map_err(|e| Error::internal(format!("stored hash: {e}")))?;
    Ok(with_permit(|| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok()))
}

/// Spends the time of one verification, for unknown users.
pub fn verify_dummy(password: &str) {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let phc = DUMMY.get_or_init(|| hash("dummy password for timing").unwrap_or_default());
    let _ = verify(password, phc);
}

#[cfg(test)]
mod tests {
    #[test]
    fn concurrent_hashes_are_bounded() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static PEAK: AtomicUsize = AtomicUsize::new(0);
        static NOW: AtomicUsize = AtomicUsize::new(0);
        let threads: Vec<_> = (0..8)
            .map(|_| {
                std::thread::spawn(|| {
                    super::with_permit(|| {
                        let n = NOW.fetch_add(1, Ordering::SeqCst) + 1;
                        PEAK.fetch_max(n, Ordering::SeqCst);
                        std::thread::sleep(std::time::Duration::from_millis(20));
                        NOW.fetch_sub(1, Ordering::SeqCst);
                    })
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(PEAK.load(Ordering::SeqCst) <= super::MAX_CONCURRENT_HASHES);
        assert!(PEAK.load(Ordering::SeqCst) >= 1);
    }

    #[test]
    fn round_trip() {
        let h = super::hash("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(super::verify("correct horse", &h).unwrap());
        assert!(!super::verify("wrong", &h).unwrap());
    }
}
