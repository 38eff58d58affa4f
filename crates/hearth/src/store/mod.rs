//! The storage layer: ordered key/value tables behind one engine trait.
//!
//! Two engines implement [`Engine`]: RocksDB (a column family per table, the default) and
//! SQLite (a table per table, WAL mode). Everything above this module talks to typed
//! [`Table`]s declared once in [`tables`], never to raw bytes, and writes go through one
//! atomic [`Batch`] so a request's changes land together or not at all.
//!
//! This module knows nothing of Matrix: services sit above it, never the other way round.

pub mod codec;
mod lock;
mod rocks;
mod sqlite;
pub mod tables;

use std::{
    marker::PhantomData,
    ops::Bound,
    path::{Path, PathBuf},
};

use self::codec::{decode_key, encode_key, CodecError, KeyPart, ValueCodec};
pub use self::lock::DirLock;

/// A storage failure. These are server faults: callers log them and answer 500.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Other(String),
    /// Another process holds the data directory (see `lock`).
    #[error("{0}")]
    Locked(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Which engine a data directory uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Rocksdb,
    Sqlite,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Rocksdb => "rocksdb",
            Backend::Sqlite => "sqlite",
        }
    }
}

/// How hard a write is pushed to disk before it is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync before acknowledging: survives power loss. The default.
    Fsync,
    /// Written to the OS before acknowledging: survives `kill -9` of Hearth, not a power cut.
    Process,
}

/// A key range with both ends normalised: lower bound inclusive, upper bound exclusive.
#[derive(Debug, Clone, Default)]
pub struct KeyRange {
    pub lower: Option<Vec<u8>>,
    pub upper: Option<Vec<u8>>,
}

impl KeyRange {
    /// Every key starting with `prefix`.
    pub fn prefix(prefix: &[u8]) -> Self {
        KeyRange { lower: Some(prefix.to_vec()), upper: prefix_successor(prefix) }
    }

    /// Converts arbitrary bounds to the normalised form.
    pub fn from_bounds(from: Bound<&[u8]>, to: Bound<&[u8]>) -> Self {
        let lower = match from {
            Bound::Included(k) => Some(k.to_vec()),
            Bound::Excluded(k) => Some(immediate_successor(k)),
            Bound::Unbounded => None,
        };
        let upper = match to {
            Bound::Included(k) => Some(immediate_successor(k)),
            Bound::Excluded(k) => Some(k.to_vec()),
            Bound::Unbounded => None,
        };
        KeyRange { lower, upper }
    }
}

/// The smallest key greater than `key`.
fn immediate_successor(key: &[u8]) -> Vec<u8> {
    let mut k = key.to_vec();
    k.push(0);
    k
}

/// The smallest key greater than every key starting with `prefix` (none if all 0xFF).
fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut k = prefix.to_vec();
    while let Some(last) = k.pop() {
        if last < 0xFF {
            k.push(last + 1);
            return Some(k);
        }
    }
    None
}

/// Scan order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    Ascending,
    Descending,
}

/// One change in a batch.
#[derive(Debug)]
pub enum Op {
    Put { table: &'static str, key: Vec<u8>, value: Vec<u8> },
    Delete { table: &'static str, key: Vec<u8> },
}

/// Changes applied atomically by [`Store::write`].
#[derive(Debug, Default)]
pub struct Batch {
    pub(crate) ops: Vec<Op>,
}

impl Batch {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// Visitor return: keep scanning or stop.
pub type Visit<'a> = &'a mut dyn FnMut(&[u8], &[u8]) -> Result<bool>;

/// What an engine provides. Tables are named by the static names in [`tables::ALL`].
pub trait Engine: Send + Sync + 'static {
    fn get(&self, table: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Several point reads at once (engines may batch them), in the order of `keys`.
    fn get_many(&self, table: &'static str, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        keys.iter().map(|k| self.get(table, k)).collect()
    }
    /// Calls `visit` for each entry in range and order until it returns `false`.
    fn scan(&self, table: &'static str, range: &KeyRange, order: Order, visit: Visit<'_>) -> Result<()>;
    fn write(&self, batch: Batch) -> Result<()>;
    /// Writes a batch atomically and in order, but may return before it is on disk; a
    /// later [`Engine::sync`] makes it (and everything before it) durable. Every read sees
    /// it once this returns. Engines that cannot split the two write durably here.
    fn write_deferred(&self, batch: Batch) -> Result<()> {
        self.write(batch)
    }
    /// Makes every deferred write so far durable.
    fn sync(&self) -> Result<()> {
        Ok(())
    }
    /// Whether [`Engine::sync`] does nothing (RocksDB without fsync): then there is no
    /// point in gathering writes for it.
    fn sync_is_free(&self) -> bool {
        false
    }
    /// Makes everything written so far durable on disk, in the form that opens fastest
    /// (called at shutdown: RocksDB memtables to table files, SQLite WAL checkpointed).
    fn flush(&self) -> Result<()>;
    /// Writes a consistent copy of the whole database into the empty directory `dest`
    /// while the database stays online.
    fn backup(&self, dest: &Path) -> Result<()>;
    /// Bytes the database occupies on disk.
    fn size_on_disk(&self) -> Result<u64>;
    /// Why the engine refuses writes until restart, if it does (a write failed after
    /// others were accepted into the same transaction: SQLite's deferred writes).
    fn failed(&self) -> Option<String> {
        None
    }
}

/// The newest schema this build writes; older ones are migrated in [`Store::open`].
///
/// - 1: the first.
/// - 2: RocksDB keeps every table but `meta` in one keyspace (the engine moves the data
///   when it opens; SQLite is unchanged). Version 2 is recorded so that a Hearth from
///   before it refuses the database instead of reading it as empty.
/// - 3: a timeline row may carry its event cut down to what push rules read
///   (`rooms::TimelineEntry`). Rows written before read as they did; a Hearth from before
///   it would fail on the new rows, so it refuses the database instead.
/// - 4: receipts and send transaction ids are keyed by their parts (receipt type and
///   thread; room, event type and transaction id) instead of strings joined with `|`
///   ([`migrate_typed_keys`]).
pub const SCHEMA_VERSION: u64 = 4;

/// An open data directory: the engine plus the lock that keeps other processes out.
pub struct Store {
    engine: Box<dyn Engine>,
    backend: Backend,
    path: PathBuf,
    _lock: DirLock,
}

/// Whether `path` holds a database of `backend` that [`Store::open`] would open (rather
/// than create): RocksDB's `CURRENT` file, or SQLite's database file.
pub fn holds_database(path: &Path, backend: Backend) -> bool {
    match backend {
        Backend::Rocksdb => path.join(rocks::SUBDIR).join("CURRENT").is_file(),
        Backend::Sqlite => path.join(sqlite::SUBDIR).join(sqlite::FILE).is_file(),
    }
}

impl Store {
    /// Opens (creating if needed) the database under `path`, taking its lock first.
    pub fn open(path: &Path, backend: Backend, durability: Durability, cache_mb: u64) -> Result<Self> {
        ensure_writable_dir(path)?;
        refuse_foreign_database(path)?;
        let lock = DirLock::acquire(path)?;
        let engine: Box<dyn Engine> = match backend {
            Backend::Rocksdb => Box::new(rocks::RocksEngine::open(path, durability, cache_mb)?),
            Backend::Sqlite => Box::new(sqlite::SqliteEngine::open(path, durability)?),
        };
        let store = Store { engine, backend, path: path.to_path_buf(), _lock: lock };
        store.check_schema()?;
        Ok(store)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn check_schema(&self) -> Result<()> {
        let meta = &tables::META;
        match meta.get(self, "schema_version")? {
            None => {
                let mut batch = Batch::new();
                meta.put(&mut batch, "schema_version", &SCHEMA_VERSION.to_be_bytes().to_vec());
                self.write(batch)
            }
            Some(bytes) => {
                let found = u64::decode_value(&bytes)?;
                if found > SCHEMA_VERSION {
                    return Err(StoreError::Other(format!(
                        "the database at {} has schema version {found}, newer than this Hearth \
                         understands ({SCHEMA_VERSION}); run a newer Hearth",
                        self.path.display()
                    )));
                }
                // Migrations from older versions go here, one step per version, each in
                // its own batch that also bumps `schema_version`. 1 → 2 needs no data
                // change here: the RocksDB engine moved its tables when it opened. 2 → 3
                // needs none either: older timeline rows are read as they are.
                if found < SCHEMA_VERSION {
                    let mut batch = Batch::new();
                    if found < 4 {
                        migrate_typed_keys(self, &mut batch)?;
                    }
                    meta.put(&mut batch, "schema_version", &SCHEMA_VERSION.to_be_bytes().to_vec());
                    self.write(batch)?;
                }
                Ok(())
            }
        }
    }

    pub fn write(&self, batch: Batch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        self.engine.write(batch)
    }

    /// See [`Engine::write_deferred`]: only for callers that call [`Store::sync`] before
    /// acknowledging (the stream's group commit).
    pub fn write_deferred(&self, batch: Batch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        self.engine.write_deferred(batch)
    }

    pub fn sync(&self) -> Result<()> {
        self.engine.sync()
    }

    /// See [`Engine::sync_is_free`].
    pub fn sync_is_free(&self) -> bool {
        self.engine.sync_is_free()
    }

    pub fn flush(&self) -> Result<()> {
        self.engine.flush()
    }

    pub fn backup(&self, dest: &Path) -> Result<()> {
        self.engine.backup(dest)
    }

    pub fn size_on_disk(&self) -> Result<u64> {
        self.engine.size_on_disk()
    }

    /// See [`Engine::failed`].
    pub fn failed(&self) -> Option<String> {
        self.engine.failed()
    }

    fn get_raw(&self, table: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.engine.get(table, key)
    }

    fn get_many_raw(&self, table: &'static str, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        self.engine.get_many(table, keys)
    }

    fn scan_raw(&self, table: &'static str, range: &KeyRange, order: Order, visit: Visit<'_>) -> Result<()> {
        self.engine.scan(table, range, order, visit)
    }
}

/// Creates the data directory if missing and proves it writable, with a message an
/// operator can act on (a read-only or wrongly owned NFS export is the usual cause).
fn ensure_writable_dir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path)
        .map_err(|e| StoreError::Other(format!("cannot create the data directory {}: {e}", path.display())))?;
    let probe = path.join(".hearth-write-test");
    std::fs::write(&probe, b"ok").and_then(|_| std::fs::remove_file(&probe)).map_err(|e| {
        StoreError::Other(format!(
            "the data directory {} is not writable by this process (uid {}): {e}; \
                 check the volume's ownership or the pod's fsGroup",
            path.display(),
            current_uid()
        ))
    })
}

fn current_uid() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("Uid:")).and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Conduit keeps its RocksDB files directly in the database path; Hearth keeps its own in
/// subdirectories. Opening Conduit's files would corrupt nothing but would look like an
/// empty server, so say what is going on instead.
fn refuse_foreign_database(path: &Path) -> Result<()> {
    if path.join("CURRENT").exists() || path.join("conduit.db").exists() {
        return Err(StoreError::Other(format!(
            "{} holds a Conduit database, which Hearth cannot read; point database_path at a \
             new, empty directory",
            path.display()
        )));
    }
    Ok(())
}

/// A typed table: key type `K`, value type `V`, stored under `name`.
pub struct Table<K, V> {
    pub name: &'static str,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<K: KeyPart, V: ValueCodec> Table<K, V> {
    pub const fn new(name: &'static str) -> Self {
        Table { name, _types: PhantomData }
    }

    pub fn get(&self, store: &Store, key: K::Ref<'_>) -> Result<Option<V>> {
        match store.get_raw(self.name, &encode_key::<K>(key))? {
            Some(bytes) => Ok(Some(V::decode_value(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Several entries at once, in the order of `keys`.
    pub fn get_many<'k>(&self, store: &Store, keys: impl IntoIterator<Item = K::Ref<'k>>) -> Result<Vec<Option<V>>> {
        let keys: Vec<Vec<u8>> = keys.into_iter().map(encode_key::<K>).collect();
        store
            .get_many_raw(self.name, &keys)?
            .into_iter()
            .map(|v| v.map(|bytes| V::decode_value(&bytes)).transpose().map_err(Into::into))
            .collect()
    }

    pub fn contains(&self, store: &Store, key: K::Ref<'_>) -> Result<bool> {
        Ok(store.get_raw(self.name, &encode_key::<K>(key))?.is_some())
    }

    pub fn put(&self, batch: &mut Batch, key: K::Ref<'_>, value: &V) {
        batch.ops.push(Op::Put { table: self.name, key: encode_key::<K>(key), value: value.encode_value() });
    }

    /// Puts a value already encoded as `V` encodes it: for a value written under many
    /// keys, encoded once.
    pub fn put_encoded(&self, batch: &mut Batch, key: K::Ref<'_>, value: Vec<u8>) {
        batch.ops.push(Op::Put { table: self.name, key: encode_key::<K>(key), value });
    }

    pub fn delete(&self, batch: &mut Batch, key: K::Ref<'_>) {
        batch.ops.push(Op::Delete { table: self.name, key: encode_key::<K>(key) });
    }

    /// Visits entries in `range` (encoded keys) in `order` until `visit` returns `false`.
    pub fn scan_range(
        &self,
        store: &Store,
        range: &KeyRange,
        order: Order,
        mut visit: impl FnMut(K, V) -> bool,
    ) -> Result<()> {
        store.scan_raw(self.name, range, order, &mut |k, v| Ok(visit(decode_key::<K>(k)?, V::decode_value(v)?)))
    }

    /// Visits the keys in `range` in `order` until `visit` returns `false`, without
    /// decoding the values.
    pub fn scan_keys(
        &self,
        store: &Store,
        range: &KeyRange,
        order: Order,
        mut visit: impl FnMut(K) -> bool,
    ) -> Result<()> {
        store.scan_raw(self.name, range, order, &mut |k, _| Ok(visit(decode_key::<K>(k)?)))
    }

    /// Visits the entries in `range` in `order` as stored, undecoded, until `visit` returns
    /// `false`: for a hot loop that reads a part of each entry without allocating.
    pub fn scan_bytes(
        &self,
        store: &Store,
        range: &KeyRange,
        order: Order,
        mut visit: impl FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()> {
        store.scan_raw(self.name, range, order, &mut |k, v| Ok(visit(k, v)))
    }

    /// Every entry, in key order.
    pub fn scan_all(&self, store: &Store, visit: impl FnMut(K, V) -> bool) -> Result<()> {
        self.scan_range(store, &KeyRange::default(), Order::Ascending, visit)
    }
}

impl<A: KeyPart, B: KeyPart, V: ValueCodec> Table<(A, B), V> {
    /// Visits every entry whose first key part is `first`.
    pub fn scan_prefix(
        &self,
        store: &Store,
        first: A::Ref<'_>,
        order: Order,
        visit: impl FnMut((A, B), V) -> bool,
    ) -> Result<()> {
        self.scan_range(store, &KeyRange::prefix(&encode_key::<A>(first)), order, visit)
    }

    /// Collects every entry whose first key part is `first`.
    pub fn collect_prefix(&self, store: &Store, first: A::Ref<'_>) -> Result<Vec<(B, V)>> {
        let mut out = Vec::new();
        self.scan_prefix(store, first, Order::Ascending, |(_, b), v| {
            out.push((b, v));
            true
        })?;
        Ok(out)
    }
}

/// Copies a backup made by [`Store::backup`] into `dest`, which must be empty or absent.
/// The copy is a plain directory copy; the server must not be running on `dest`.
pub fn restore(from: &Path, dest: &Path) -> Result<()> {
    if !from.join("rocksdb").is_dir() && !from.join("sqlite").is_dir() {
        return Err(StoreError::Other(format!("{} does not look like a Hearth backup", from.display())));
    }
    if dest.exists() && std::fs::read_dir(dest)?.next().is_some() {
        return Err(StoreError::Other(format!(
            "{} is not empty; restore only into an empty directory",
            dest.display()
        )));
    }
    copy_dir(from, dest)
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else if entry.file_name() != "hearth.lock" {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// Total size of the regular files below `dir`.
pub(crate) fn dir_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() { dir_size(&entry.path())? } else { meta.len() };
    }
    Ok(total)
}

impl<A: KeyPart, B: KeyPart, C: KeyPart, V: ValueCodec> Table<(A, B, C), V> {
    /// Collects every entry whose first key part is `first`, as ((second, third), value).
    pub fn collect_prefix(&self, store: &Store, first: A::Ref<'_>) -> Result<Vec<((B, C), V)>> {
        let mut out = Vec::new();
        self.scan_range(store, &KeyRange::prefix(&encode_key::<A>(first)), Order::Ascending, |(_, b, c), v| {
            out.push(((b, c), v));
            true
        })?;
        Ok(out)
    }
}

/// Schema 3 → 4. Receipts were keyed (room, user, "type|thread"): they are rewritten as
/// (room, user, type, thread); receipt types hold no `|`, so the first one splits them.
/// Send transaction ids were keyed (sender, device, "room|type|txn id"), where room ids
/// and event types may themselves hold `|`: they cannot be split for certain, so they are
/// dropped. They only make a retried send idempotent; a client retrying across the upgrade
/// could send one message twice.
fn migrate_typed_keys(store: &Store, batch: &mut Batch) -> Result<()> {
    let old_receipts: Table<(String, String, String), Vec<u8>> = Table::new(tables::RECEIPTS);
    let new_receipts: Table<(String, String, String, String), Vec<u8>> = Table::new(tables::RECEIPTS);
    let mut receipts = Vec::new();
    old_receipts.scan_all(store, |key, value| {
        receipts.push((key, value));
        true
    })?;
    for ((room, user, key), value) in &receipts {
        old_receipts.delete(batch, (room, user, key));
        let (kind, thread) = key.split_once('|').unwrap_or((key.as_str(), ""));
        new_receipts.put(batch, (room, user, kind, thread), value);
    }
    let old_txns: Table<(String, String, String), Vec<u8>> = Table::new(tables::TRANSACTIONS);
    let mut txns = Vec::new();
    old_txns.scan_all(store, |key, _| {
        txns.push(key);
        true
    })?;
    for (user, device, scope) in &txns {
        old_txns.delete(batch, (user, device, scope));
    }
    tracing::info!(
        receipts = receipts.len(),
        transactions = txns.len(),
        "schema 4: receipts rekeyed, old send transaction ids dropped"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A schema 3 database with receipts and transaction ids opens as schema 4 with the
    /// receipts under their typed keys and the old transaction rows gone, on both engines.
    #[test]
    fn schema_3_receipts_and_transactions_are_migrated() {
        for backend in [Backend::Rocksdb, Backend::Sqlite] {
            let dir = tempfile::tempdir().expect("tempdir");
            let open = || Store::open(dir.path(), backend, Durability::Process, 8).expect("open");
            let store = open();
            let old_receipts: Table<(String, String, String), Vec<u8>> = Table::new(tables::RECEIPTS);
            let old_txns: Table<(String, String, String), Vec<u8>> = Table::new(tables::TRANSACTIONS);
            let mut batch = Batch::new();
            old_receipts.put(&mut batch, ("!r:x", "@a:x", "m.read|$thread"), &b"r1".to_vec());
            old_receipts.put(&mut batch, ("!r:x", "@b:x", "m.read.private|"), &b"r2".to_vec());
            old_txns.put(&mut batch, ("@a:x", "DEV", "!r|x|m.room.message|t1"), &b"$e".to_vec());
            tables::META.put(&mut batch, "schema_version", &3u64.to_be_bytes().to_vec());
            store.write(batch).expect("write");
            drop(store);

            let store = open();
            let version = tables::META.get(&store, "schema_version").expect("get").expect("version");
            assert_eq!(u64::decode_value(&version).expect("u64"), SCHEMA_VERSION, "{backend:?}");
            let new_receipts: Table<(String, String, String, String), Vec<u8>> = Table::new(tables::RECEIPTS);
            let mut rows = Vec::new();
            new_receipts
                .scan_all(&store, |k, v| {
                    rows.push((k, v));
                    true
                })
                .expect("scan");
            assert_eq!(
                rows,
                vec![
                    (("!r:x".into(), "@a:x".into(), "m.read".into(), "$thread".into()), b"r1".to_vec()),
                    (("!r:x".into(), "@b:x".into(), "m.read.private".into(), String::new()), b"r2".to_vec()),
                ],
                "{backend:?}"
            );
            let new_txns: Table<(String, String, String, String, String), Vec<u8>> = Table::new(tables::TRANSACTIONS);
            let mut left = 0;
            new_txns
                .scan_all(&store, |_, _| {
                    left += 1;
                    true
                })
                .expect("scan");
            assert_eq!(left, 0, "old transaction rows are dropped ({backend:?})");
        }
    }

    #[test]
    fn prefix_successor_handles_ff() {
        assert_eq!(prefix_successor(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_successor(&[1, 0xFF]), Some(vec![2]));
        assert_eq!(prefix_successor(&[0xFF, 0xFF]), None);
    }
}
