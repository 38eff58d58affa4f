//! The SQLite engine: one `WITHOUT ROWID` table per table, in `<database_path>/sqlite/hearth.db`.
//!
//! WAL mode: one writer connection behind a mutex, a few reader connections that never
//! block it. A plain [`Engine::write`] is one transaction, committed with
//! `synchronous=NORMAL` (the WAL is written, not synced); with [`Durability::Fsync`] Hearth
//! then syncs the WAL file itself (what `synchronous=FULL` would do).
//!
//! Deferred writes (the stream's appends, [`Engine::write_deferred`]) share one open
//! transaction until the next [`Engine::sync`], the stream's group commit, commits it and
//! syncs the WAL once for all of them. Committing each append on its own wrote its ten-odd
//! pages as WAL frames every time, though consecutive appends modify many of the same
//! pages (the newest leaf of the stream, of the room's timeline, the room's heads); commit
//! and checkpoint were two fifths of a send's CPU. The reader connections cannot see an
//! open transaction, so the batches in it are also kept in memory ([`Pending`]) and every
//! read looks there first: a deferred write is visible to every read once
//! `write_deferred` returns, as before.
//!
//! A committed transaction is a commit frame in the WAL, so once the file is synced the
//! transaction survives a power cut; SQLite syncs the WAL before each checkpoint and the
//! database after it, also under `NORMAL`. With [`Durability::Process`] nothing is synced:
//! a process crash loses only deferred writes not yet committed (never acknowledged ones),
//! a power cut may lose the last transactions.
//!
//! If a write fails while the open transaction holds other batches, those batches are lost
//! with it (they were not yet acknowledged: their sync fails too), and the engine refuses
//! every later write until Hearth restarts, as RocksDB does after a failed log write:
//! memory elsewhere already reflects those batches, so carrying on would build on writes
//! that are not there. `/_hearth/health` then answers 503.

use std::{
    collections::{BTreeMap, HashMap},
    ops::Bound,
    path::Path,
    sync::atomic::{AtomicUsize, Ordering as AtomicOrdering},
};

use parking_lot::{Mutex, RwLock};
use rusqlite::{params_from_iter, Connection, OpenFlags, OptionalExtension};

use super::{dir_size, tables, Batch, Durability, Engine, KeyRange, Op, Order, Result, StoreError, Visit};

pub(super) const SUBDIR: &str = "sqlite";
pub(super) const FILE: &str = "hearth.db";
const READERS: usize = 4;

/// Most deferred batches one transaction holds before it is committed without waiting for
/// a sync (which the stream's group commit normally brings within milliseconds): bounds
/// [`Pending`] when deferred writes come without one (presence refreshes).
const MAX_OPEN_BATCHES: usize = 512;

/// Deferred writes in the open transaction, not yet committed, by table and key (`None`: a
/// delete). Readers consult it before their connection, which cannot see the transaction.
type Pending = HashMap<&'static str, BTreeMap<Vec<u8>, Option<Vec<u8>>>>;

/// The writer connection and the transaction it may hold open across deferred writes.
struct Writer {
    conn: Connection,
    /// Deferred batches in the open transaction (none: no transaction is open).
    open_batches: usize,
    /// Why writing stopped (see the module doc).
    failed: Option<String>,
    /// Tests: the next batch fails as a full disk would.
    #[cfg(test)]
    fail_next: bool,
}

pub struct SqliteEngine {
    writer: Mutex<Writer>,
    /// Filled and emptied under the writer's lock; read by every read.
    pending: RwLock<Pending>,
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
            writer: Mutex::new(Writer {
                conn: writer,
                open_batches: 0,
                failed: None,
                #[cfg(test)]
                fail_next: false,
            }),
            pending: RwLock::new(Pending::new()),
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

    /// Runs a batch's statements on the writer connection, inside whatever transaction is open.
    fn apply(w: &mut Writer, ops: &[Op]) -> Result<()> {
        #[cfg(test)]
        if std::mem::take(&mut w.fail_next) {
            return Err(
                rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL), None).into()
            );
        }
        for op in ops {
            match op {
                Op::Put { table, key, value } => {
                    w.conn
                        .prepare_cached(&format!("INSERT OR REPLACE INTO \"{table}\" (k, v) VALUES (?1, ?2)"))?
                        .execute((key, value))?;
                }
                Op::Delete { table, key } => {
                    w.conn.prepare_cached(&format!("DELETE FROM \"{table}\" WHERE k = ?1"))?.execute([key])?;
                }
            }
        }
        Ok(())
    }

    fn writable(w: &Writer, batch: &Batch) -> Result<()> {
        if let Some(why) = &w.failed {
            return Err(StoreError::Other(format!("writes are refused until Hearth restarts, after: {why}")));
        }
        for op in &batch.ops {
            let (Op::Put { table, .. } | Op::Delete { table, .. }) = op;
            check_table(table)?;
        }
        Ok(())
    }

    /// Ends the open transaction after `error`: the batches in it are gone, and writing stops.
    fn fail(&self, w: &mut Writer, error: StoreError) -> StoreError {
        let _ = w.conn.execute_batch("ROLLBACK");
        w.open_batches = 0;
        self.pending.write().clear();
        tracing::error!(%error, "a write failed inside a transaction holding other writes; refusing writes until restart");
        w.failed = Some(error.to_string());
        error
    }

    /// Commits the open transaction, if any (not synced: see [`SqliteEngine::sync_wal`]).
    fn commit_open(&self, w: &mut Writer) -> Result<()> {
        if w.open_batches == 0 {
            return Ok(());
        }
        if let Err(e) = w.conn.execute_batch("COMMIT") {
            return Err(self.fail(w, e.into()));
        }
        w.open_batches = 0;
        // Only now: until the commit, readers find these writes here and nowhere else.
        self.pending.write().clear();
        Ok(())
    }

    /// A batch in a transaction of its own, committed (not synced), or, when deferred
    /// batches are open, added to their transaction and committed with them.
    fn commit(&self, batch: Batch) -> Result<()> {
        let mut w = self.writer.lock();
        Self::writable(&w, &batch)?;
        if w.open_batches > 0 {
            if let Err(e) = Self::apply(&mut w, &batch.ops) {
                return Err(self.fail(&mut w, e));
            }
            // Into memory too, before the commit: otherwise, between the commit and the
            // clearing of memory, a reader would find an older value there than the
            // database now holds, and prefer it.
            self.remember(batch.ops);
            return self.commit_open(&mut w);
        }
        w.conn.execute_batch("BEGIN")?;
        let done = Self::apply(&mut w, &batch.ops).and_then(|()| Ok(w.conn.execute_batch("COMMIT")?));
        if done.is_err() && !w.conn.is_autocommit() {
            // Only this batch was in the transaction: undo it, and carry on.
            let _ = w.conn.execute_batch("ROLLBACK");
        }
        done
    }

    /// A batch added to the open transaction (opening one if needed), readable at once
    /// through [`Pending`], committed by the next sync.
    fn defer(&self, batch: Batch) -> Result<()> {
        let mut w = self.writer.lock();
        Self::writable(&w, &batch)?;
        if w.open_batches == 0 {
            w.conn.execute_batch("BEGIN")?;
        }
        if let Err(e) = Self::apply(&mut w, &batch.ops) {
            if w.open_batches == 0 {
                let _ = w.conn.execute_batch("ROLLBACK");
                return Err(e);
            }
            return Err(self.fail(&mut w, e));
        }
        w.open_batches += 1;
        self.remember(batch.ops);
        if w.open_batches >= MAX_OPEN_BATCHES {
            self.commit_open(&mut w)?;
        }
        Ok(())
    }

    /// Records ops applied in the open transaction, for readers (called under the writer's
    /// lock). Memory must never hold an older value for a key than the database: readers
    /// prefer memory.
    fn remember(&self, ops: Vec<Op>) {
        let mut pending = self.pending.write();
        for op in ops {
            match op {
                Op::Put { table, key, value } => pending.entry(table).or_default().insert(key, Some(value)),
                Op::Delete { table, key } => pending.entry(table).or_default().insert(key, None),
            };
        }
    }

    /// What the open transaction holds for `key`: `None` if nothing, `Some(None)` if deleted.
    fn pending_get(&self, table: &'static str, key: &[u8]) -> Option<Option<Vec<u8>>> {
        let pending = self.pending.read();
        pending.get(table)?.get(key).cloned()
    }

    /// The open transaction's entries for `table` within `range`, in `order`.
    fn pending_range(&self, table: &'static str, range: &KeyRange, order: Order) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        let pending = self.pending.read();
        let Some(t) = pending.get(table) else { return Vec::new() };
        if let (Some(lower), Some(upper)) = (&range.lower, &range.upper) {
            // `BTreeMap::range` panics on an inverted range; SQLite just finds nothing.
            if lower >= upper {
                return Vec::new();
            }
        }
        let lower = range.lower.as_deref().map_or(Bound::Unbounded, Bound::Included);
        let upper = range.upper.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
        let entries = t.range::<[u8], _>((lower, upper)).map(|(k, v)| (k.clone(), v.clone()));
        match order {
            Order::Ascending => entries.collect(),
            Order::Descending => entries.rev().collect(),
        }
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
        if let Some(pending) = self.pending_get(table, key) {
            return Ok(pending);
        }
        self.with_reader(|c| {
            let mut stmt = c.prepare_cached(&format!("SELECT v FROM \"{table}\" WHERE k = ?1"))?;
            Ok(stmt.query_row([key], |row| row.get::<_, Vec<u8>>(0)).optional()?)
        })
    }

    fn get_many(&self, table: &'static str, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        check_table(table)?;
        let pending: Vec<Option<Option<Vec<u8>>>> = {
            let pending = self.pending.read();
            match pending.get(table) {
                Some(t) if !t.is_empty() => keys.iter().map(|k| t.get(k.as_slice()).cloned()).collect(),
                _ => Vec::new(),
            }
        };
        if pending.iter().any(Option::is_some) {
            let rest: Vec<Vec<u8>> =
                keys.iter().zip(&pending).filter(|(_, p)| p.is_none()).map(|(k, _)| k.clone()).collect();
            let mut from_db = self.get_many_committed(table, &rest)?.into_iter();
            return Ok(pending.into_iter().map(|p| p.unwrap_or_else(|| from_db.next().flatten())).collect());
        }
        self.get_many_committed(table, keys)
    }

    fn scan(&self, table: &'static str, range: &KeyRange, order: Order, visit: Visit<'_>) -> Result<()> {
        check_table(table)?;
        let pending = self.pending_range(table, range, order);
        if pending.is_empty() {
            return self.scan_committed(table, range, order, visit);
        }
        // Merge the two ordered sequences; where both have a key, the pending entry wins.
        let comes_first = |a: &[u8], b: &[u8]| match order {
            Order::Ascending => a < b,
            Order::Descending => a > b,
        };
        let mut pending = pending.into_iter().peekable();
        let mut stopped = false;
        self.scan_committed(table, range, order, &mut |k, v| {
            while let Some((pk, _)) = pending.peek() {
                if !comes_first(pk, k) && pk.as_slice() != k {
                    break;
                }
                let (pk, pv) = pending.next().expect("peeked");
                let same = pk.as_slice() == k;
                if let Some(pv) = pv {
                    if !visit(&pk, &pv)? {
                        stopped = true;
                        return Ok(false);
                    }
                }
                if same {
                    return Ok(true);
                }
            }
            let go_on = visit(k, v)?;
            stopped = !go_on;
            Ok(go_on)
        })?;
        if !stopped {
            for (pk, pv) in pending {
                if let Some(pv) = pv {
                    if !visit(&pk, &pv)? {
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    fn write(&self, batch: Batch) -> Result<()> {
        self.commit(batch)?;
        self.sync_wal()
    }

    fn write_deferred(&self, batch: Batch) -> Result<()> {
        self.defer(batch)
    }

    fn sync(&self) -> Result<()> {
        {
            let mut w = self.writer.lock();
            if let Some(why) = &w.failed {
                return Err(StoreError::Other(format!("writes are refused until Hearth restarts, after: {why}")));
            }
            self.commit_open(&mut w)?;
        }
        // Outside the writer's lock: appends go on while the disk syncs, and the next
        // sync covers them.
        self.sync_wal()
    }

    fn flush(&self) -> Result<()> {
        let mut w = self.writer.lock();
        if w.failed.is_none() {
            self.commit_open(&mut w)?;
        }
        w.conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }

    fn backup(&self, dest: &Path) -> Result<()> {
        let dir = dest.join(SUBDIR);
        std::fs::create_dir_all(&dir)?;
        let target = dir.join(FILE);
        let target = target.to_str().ok_or_else(|| StoreError::Other("backup path is not valid UTF-8".into()))?;
        // Deferred writes so far go in too (the copy reads committed data only).
        {
            let mut w = self.writer.lock();
            if w.failed.is_none() {
                self.commit_open(&mut w)?;
            }
        }
        // VACUUM INTO writes a consistent, compacted copy from one read transaction.
        self.with_reader(|c| {
            c.execute("VACUUM INTO ?1", [target])?;
            Ok(())
        })
    }

    fn size_on_disk(&self) -> Result<u64> {
        dir_size(&self.dir)
    }

    fn failed(&self) -> Option<String> {
        self.writer.lock().failed.clone()
    }
}

/// Reads of committed data only, through the reader connections.
impl SqliteEngine {
    fn get_many_committed(&self, table: &'static str, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
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

    fn scan_committed(&self, table: &'static str, range: &KeyRange, order: Order, visit: Visit<'_>) -> Result<()> {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &str) -> Batch {
        let mut batch = Batch::new();
        batch.ops.push(Op::Put { table: tables::FILTERS, key: key.into(), value: value.into() });
        batch
    }

    fn get(engine: &SqliteEngine, key: &str) -> Option<Vec<u8>> {
        engine.get(tables::FILTERS, key.as_bytes()).expect("get")
    }

    /// What another connection to the file (as after a crash) finds committed.
    fn committed(dir: &Path, key: &str) -> Option<Vec<u8>> {
        let c = open_reader(&dir.join(SUBDIR).join(FILE)).expect("open");
        c.query_row(&format!("SELECT v FROM \"{}\" WHERE k = ?1", tables::FILTERS), [key.as_bytes()], |r| r.get(0))
            .optional()
            .expect("query")
    }

    #[test]
    fn deferred_batches_share_one_transaction_until_sync() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = SqliteEngine::open(dir.path(), Durability::Fsync).expect("open");
        engine.write_deferred(put("a", "1")).expect("defer");
        engine.write_deferred(put("b", "2")).expect("defer");
        // Readable at once, not yet committed.
        assert_eq!(get(&engine, "a"), Some(b"1".to_vec()));
        assert_eq!(committed(dir.path(), "a"), None);
        assert_eq!(engine.writer.lock().open_batches, 2);
        engine.sync().expect("sync");
        assert_eq!(committed(dir.path(), "a"), Some(b"1".to_vec()));
        assert_eq!(committed(dir.path(), "b"), Some(b"2".to_vec()));
        assert!(engine.pending.read().is_empty());
        // A plain write commits the open transaction with it.
        engine.write_deferred(put("c", "3")).expect("defer");
        engine.write(put("d", "4")).expect("write");
        assert_eq!(committed(dir.path(), "c"), Some(b"3".to_vec()));
        assert_eq!(committed(dir.path(), "d"), Some(b"4".to_vec()));
        // A backup holds the deferred writes made before it.
        engine.write_deferred(put("e", "5")).expect("defer");
        engine.backup(&dir.path().join("backup")).expect("backup");
        assert_eq!(committed(&dir.path().join("backup"), "e"), Some(b"5".to_vec()));
        // Without a sync, the transaction is committed after MAX_OPEN_BATCHES batches.
        for i in 0..MAX_OPEN_BATCHES {
            engine.write_deferred(put(&format!("m{i}"), "x")).expect("defer");
        }
        assert_eq!(committed(dir.path(), &format!("m{}", MAX_OPEN_BATCHES - 1)), Some(b"x".to_vec()));
        assert!(engine.pending.read().is_empty());
    }

    /// Readers on other threads never see a key go back to an older value while deferred
    /// writes, commits and plain writes go on: the open transaction's entries leave memory
    /// only once the commit has made them readable from the database.
    #[test]
    fn concurrent_readers_never_see_a_write_undone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = std::sync::Arc::new(SqliteEngine::open(dir.path(), Durability::Process).expect("open"));
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let read = |engine: &SqliteEngine| -> (u64, u64) {
            let value = |v: Option<Vec<u8>>| v.map_or(0, |v| u64::from_be_bytes(v.try_into().expect("8 bytes")));
            let by_get = value(engine.get(tables::FILTERS, b"n").expect("get"));
            let mut by_scan = 0;
            engine
                .scan(tables::FILTERS, &KeyRange::default(), Order::Ascending, &mut |_, v| {
                    by_scan = value(Some(v.to_vec()));
                    Ok(true)
                })
                .expect("scan");
            (by_get, by_scan)
        };
        let readers: Vec<_> = (0..3)
            .map(|_| {
                let (engine, done) = (engine.clone(), done.clone());
                std::thread::spawn(move || {
                    let (mut last_get, mut last_scan) = (0, 0);
                    while !done.load(std::sync::atomic::Ordering::Relaxed) {
                        let (g, sc) = read(&engine);
                        assert!(g >= last_get, "get went back from {last_get} to {g}");
                        assert!(sc >= last_scan, "scan went back from {last_scan} to {sc}");
                        (last_get, last_scan) = (g, sc);
                    }
                })
            })
            .collect();
        for n in 1..=3000u64 {
            let mut batch = Batch::new();
            batch.ops.push(Op::Put { table: tables::FILTERS, key: b"n".to_vec(), value: n.to_be_bytes().to_vec() });
            match n % 7 {
                0 => engine.write(batch).expect("write"),
                _ => engine.write_deferred(batch).expect("defer"),
            }
            if n % 3 == 0 {
                engine.sync().expect("sync");
            }
            // The writer reads its own writes at once.
            assert_eq!(read(&engine), (n, n));
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        for r in readers {
            r.join().expect("a reader saw a write undone");
        }
    }

    #[test]
    fn a_failure_amid_deferred_batches_stops_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = SqliteEngine::open(dir.path(), Durability::Fsync).expect("open");
        engine.write(put("kept", "1")).expect("write");
        // A batch failing alone is undone, and writing goes on.
        engine.writer.lock().fail_next = true;
        assert!(engine.write(put("x", "1")).is_err());
        engine.writer.lock().fail_next = true;
        assert!(engine.write_deferred(put("x", "0")).is_err());
        assert_eq!(engine.writer.lock().open_batches, 0);
        assert_eq!(engine.failed(), None);
        engine.write_deferred(put("x", "1")).expect("defer after a lone failure");
        engine.sync().expect("sync");
        assert_eq!(committed(dir.path(), "x"), Some(b"1".to_vec()));

        // Failing after other batches joined the transaction loses them, and stops writes.
        engine.write_deferred(put("lost", "2")).expect("defer");
        engine.writer.lock().fail_next = true;
        assert!(engine.write_deferred(put("y", "3")).is_err());
        assert!(engine.failed().is_some());
        assert_eq!(get(&engine, "lost"), None);
        assert_eq!(get(&engine, "kept"), Some(b"1".to_vec()));
        assert!(engine.write(put("z", "4")).is_err());
        assert!(engine.write_deferred(put("z", "4")).is_err());
        assert!(engine.sync().is_err());
        drop(engine);

        // A restart writes again, from what was committed.
        let engine = SqliteEngine::open(dir.path(), Durability::Fsync).expect("reopen");
        assert_eq!(get(&engine, "lost"), None);
        assert_eq!(get(&engine, "x"), Some(b"1".to_vec()));
        engine.write(put("z", "4")).expect("write after restart");
    }
}
