//! The data directory lock: one Hearth process per data directory, ever.
//!
//! RocksDB has its own LOCK file, but SQLite does not, and on NFS two pods writing one
//! RocksDB directory is how data gets lost. So every engine is opened only after this
//! advisory exclusive lock on `hearth.lock` is held; a second process fails at once with a
//! message naming the holder's pid. The lock is released when the process exits, however
//! it exits, because the kernel drops it with the file descriptor.

use std::{
    fs::{File, OpenOptions},
    io::{Read, Seek, SeekFrom, Write},
    path::Path,
};

use super::{Result, StoreError};

pub struct DirLock {
    _file: File,
}

impl DirLock {
    pub fn acquire(dir: &Path) -> Result<Self> {
        let path = dir.join("hearth.lock");
        let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let who = if holder.is_empty() { "another process".to_owned() } else { format!("process {holder}") };
                return Err(StoreError::Locked(format!(
                    "the data directory {} is already in use by {who}; only one Hearth may use a \
                     data directory at a time (two writers would corrupt it, especially on NFS)",
                    dir.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(StoreError::Other(format!("cannot lock {}: {e}", path.display())));
            }
        }
        file.set_len(0)?;
        file.seek(SeekFrom::Start(0))?;
        write!(file, "{}", std::process::id())?;
        file.flush()?;
        Ok(DirLock { _file: file })
    }
}
