//! The SQLite engine: one `WITHOUT ROWID` table per table, in `<database_path>/sqlite/hearth.db`.
//!
//! WAL mode: one writer connection behind a mutex, a few reader connections that never
//! block it. A batch is one transaction, committed with `synchronous=NORMAL` (the WAL is
//! written, not synced). With [`Durability::Fsync`], Hearth then syncs the WAL file itself:
//! at once for a plain [`Engine::write`] (what `synchronous=FULL` would do), or once for
//! many deferred writes ([`Engine::sync`], the stream's group commit). A committed
//! transaction is a commit frame in the WAL, so once the file is synced the transaction
//! survives a power cut; SQLite syncs the WAL before each checkpoint and the database
//! after it, also under `NORMAL`. With [`Durability::Process`] nothing is synced: a
//! process crash loses nothing, a power cut may lose the last transactions.

use std::{
    path::Path,
    sync::atomic::{AtomicUsize, Ordering as AtomicOrdering},
};

use parking_lot::Mutex;
use rusqlite::{params_from_iter, Connection, OpenFlags, OptionalExtension};

use super::{dir_size, tables, Batch, Durability, Engine, KeyRange, Op, Order, Result, StoreError, Visit};

const SUBDIR: &str = "sqlite";
const FILE: &str = "hearth.db";
const READERS: usize = 4;

pub struct SqliteEngine {
    writer: Mutex<Connection>,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
    /// A reader for batches of point reads, its file mapped (see [`BULK_MMAP`]).
    bulk: Mutex<Connection>,
    dir: std::path::PathBuf,
    /// Sync the WAL after commits ([`Durability::Fsync`]).
    fsync: bool,
}

/// Prepared statements kept per connection. A statement is one shape (get, put, delete,
/// scans with and without bounds, each direction) on one table; rusqlite keeps 16 by
/// default, fewer than the ten-odd tables one append writes, so statements were prepared
/// again on most writes (a tenth of a commit's time).
const STATEMENT_CACHE: usize = 256;

/// Bytes of the database file the batch reader maps (`PRAGMA mmap_size`). A reader drops
/// its whole page cache whenever another connection has committed since its last read, so
/// on a server that writes between most reads (logins, sends, receipts) reads came from the
/// OS one `pread` per page: a first initial sync reading 3,000 events spread over the
/// events table spent a quarter of its time there. Through a mapping a page is a memory
/// read instead. Measured on the benchmark's database: a first initial sync went from 27-33
/// to 22-23 ms (median of 40 users). One connection only: mapped pages count in the
/// process's resident memory once per mapping, and four mapped readers raised the
/// benchmark's peak RSS from 84 to 159 MiB. Smaller on 32-bit boards, whose address space
/// is 3 GiB.
const BULK_MMAP: i64 = if cfg!(target_pointer_width = "64") { 1 << 30 } else { 256 << 20 };

/// Fewest keys a batch must have to be read through the mapped reader.
const BULK_MIN_KEYS: usize = 32;

fn open_reader(file: &Path) -> Result<Connection> {
    let r = Connection::open_with_flags(file, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    r.busy_timeout(std::time::Duration::from_secs(10))?;
    r.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(r)
}

fn configure(conn: &Connection) -> Result<()> {
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    Ok(())
}

impl SqliteEngine {
    pub fn open(root: &Path, durability: Durability) -> Result<Self> {
        let dir = root.join(SUBDIR);
        std::fs::create_dir_all(&dir)?;
        let file = dir.join(FILE);
        let writer = Connection::open(&file)?;
        configure(&writer)?;
        for t in tables::ALL {
            writer.execute_batch(&format!(
                "CREATE TABLE IF NOT EXISTS \"{t}\" (k BLOB PRIMARY KEY NOT NULL, v BLOB NOT NULL) WITHOUT ROWID;"
            ))?;
        }
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            readers.push(Mutex::new(open_reader(&file)?));
        }
        let bulk = open_reader(&file)?;
        bulk.pragma_update(None, "mmap_size", BULK_MMAP)?;
        Ok(SqliteEngine {
            writer: Mutex::new(writer),
            readers,
            next_reader: AtomicUsize::new(0),
            bulk: Mutex::new(bulk),
            dir,
            fsync: durability == Durability::Fsync,
        })
    }

    /// Makes every committed transaction durable: syncs the WAL file. Opened by path each
    /// time, so the sync always reaches the file SQLite is writing now.
    fn sync_wal(&self) -> Result<()> {
        if !self.fsync {
            return Ok(());
        }
        let wal = self.dir.join(format!("{FILE}-wal"));
        match std::fs::File::open(&wal) {
            Ok(f) => Ok(f.sync_data()?),
            // No WAL (nothing written since the last truncating checkpoint, which synced).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn commit(&self, batch: Batch) -> Result<()> {
        let mut conn = self.writer.lock();
        let tx = conn.transaction()?;
        for op in batch.ops {
            match op {
                Op::Put { table, key, value } => {
                    check_table(table)?;
                    tx.prepare_cached(&format!("INSERT OR REPLACE INTO \"{table}\" (k, v) VALUES (?1, ?2)"))?
                        .execute((key, value))?;
                }
                Op::Delete { table, key } => {
                    check_table(table)?;
                    tx.prepare_cached(&format!("DELETE FROM \"{table}\" WHERE k = ?1"))?.execute([key])?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn with_reader<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        for r in &self.readers {
            if let Some(conn) = r.try_lock() {
                return f(&conn);
            }
        }
        let i = self.next_reader.fetch_add(1, AtomicOrdering::Relaxed) % self.readers.len();
        f(&self.readers[i].lock())
    }
}

fn check_table(table: &'static str) -> Result<()> {
    // Table names are interpolated into SQL, so only declared names may pass.
    if tables::ALL.contains(&table) {
        Ok(())
    } else {
        Err(StoreError::Other(format!("unknown table {table}")))
    }
}

impl Engine for SqliteEngine {
    fn get(&self, table: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        check_table(table)?;
        self.with_reader(|c| {
            let mut stmt = c.prepare_cached(&format!("SELECT v FROM \"{table}\" WHERE k = ?1"))?;
            Ok(stmt.query_row([key], |row| row.get::<_, Vec<u8>>(0)).optional()?)
        })
    }

    fn get_many(&self, table: &'static str, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        check_table(table)?;
        let lookup = |c: &Connection| -> Result<Vec<Option<Vec<u8>>>> {
            let mut stmt = c.prepare_cached(&format!("SELECT v FROM \"{table}\" WHERE k = ?1"))?;
            keys.iter().map(|k| Ok(stmt.query_row([k], |row| row.get::<_, Vec<u8>>(0)).optional()?)).collect()
        };
        if keys.len() < 4 {
            return self.with_reader(|c| lookup(c));
        }
        let batch = |c: &Connection| {
            // One read transaction for the batch: each lookup on its own would begin and end
            // one (a fifth of a batch's time), and see a different snapshot.
            let txn = c.unchecked_transaction()?;
            let out = lookup(&txn);
            // Read-only: ending it either way releases the snapshot.
            txn.rollback()?;
            out
        };
        // Small batches (a sync's timeline) leave the mapped reader to the large ones (a
        // page of unread events) they would otherwise push onto `pread`.
        let bulk = if keys.len() >= BULK_MIN_KEYS { self.bulk.try_lock() } else { None };
        match bulk {
            Some(conn) => batch(&conn),
            None => self.with_reader(batch),
        }
    }

    fn scan(&self, table: &'static str, range: &KeyRange, order: Order, visit: Visit<'_>) -> Result<()> {
        check_table(table)?;
        let mut sql = format!("SELECT k, v FROM \"{table}\"");
        let mut params: Vec<&[u8]> = Vec::new();
        let mut conds = Vec::new();
        if let Some(lower) = &range.lower {
            params.push(lower);
            conds.push(format!("k >= ?{}", params.len()));
        }
        if let Some(upper) = &range.upper {
            params.push(upper);
            conds.push(format!("k < ?{}", params.len()));
        }
        if !conds.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conds.join(" AND "));
        }
        sql.push_str(match order {
            Order::Ascending => " ORDER BY k ASC",
            Order::Descending => " ORDER BY k DESC",
        });
        self.with_reader(|c| {
            let mut stmt = c.prepare_cached(&sql)?;
            let mut rows = stmt.query(params_from_iter(params.iter()))?;
            while let Some(row) = rows.next()? {
                let k = row.get_ref(0)?.as_blob().map_err(rusqlite::Error::from)?;
                let v = row.get_ref(1)?.as_blob().map_err(rusqlite::Error::from)?;
                if !visit(k, v)? {
                    break;
                }
            }
            Ok(())
        })
    }

    fn write(&self, batch: Batch) -> Result<()> {
        self.commit(batch)?;
        self.sync_wal()
    }

    fn write_deferred(&self, batch: Batch) -> Result<()> {
        self.commit(batch)
    }

    fn sync(&self) -> Result<()> {
        self.sync_wal()
    }

    fn flush(&self) -> Result<()> {
        let conn = self.writer.lock();
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }

    fn backup(&self, dest: &Path) -> Result<()> {
        let dir = dest.join(SUBDIR);
        std::fs::create_dir_all(&dir)?;
        let target = dir.join(FILE);
        let target = target.to_str().ok_or_else(|| StoreError::Other("backup path is not valid UTF-8".into()))?;
        // VACUUM INTO writes a consistent, compacted copy from one read transaction.
        self.with_reader(|c| {
            c.execute("VACUUM INTO ?1", [target])?;
            Ok(())
        })
    }

    fn size_on_disk(&self) -> Result<u64> {
        dir_size(&self.dir)
    }
}
