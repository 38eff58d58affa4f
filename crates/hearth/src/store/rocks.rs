//! The RocksDB engine, under `<database_path>/rocksdb`: every table shares RocksDB's
//! default column family, each under its own key prefix (the table's name and a zero
//! byte), and the store's `meta` table has a column family of its own.
//!
//! One keyspace rather than a column family per table, because RocksDB's fixed costs are
//! per column family: at every open it writes, fsyncs, re-reads and verifies an options
//! file with a section for each (creating and dropping a 32 MiB block-cache table for
//! each while it verifies), and each keeps its own memtable and files. With 38 tables
//! that was most of a start-up and of idle memory on a small board. `meta` keeps its own
//! column family so that a Hearth from before this layout, opening a newer database,
//! still finds the schema version there and refuses instead of seeing an empty database.
//! Databases in the older layout are moved over once, at open ([`migrate_layout`]).
//!
//! Writes go through a single `WriteBatch`, so a batch is atomic across tables. With
//! [`Durability::Fsync`] each batch is synced to disk before it is acknowledged (either by
//! a synced write, or, for the stream's deferred writes, by one WAL fsync covering every
//! write that arrived meanwhile: group commit); with [`Durability::Process`] it is in
//! RocksDB's write-ahead log in the OS, which survives a crash of Hearth but not of the
//! machine.

use std::path::Path;

use rocksdb::{
    checkpoint::Checkpoint, BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DBCompressionType, Options,
    ReadOptions, WriteBatch, WriteOptions, DB, DEFAULT_COLUMN_FAMILY_NAME,
};

use super::{dir_size, tables, Batch, Durability, Engine, KeyRange, Op, Order, Result, StoreError, Visit};

pub(super) const SUBDIR: &str = "rocksdb";
/// The one table with a column family of its own (see the module doc).
const META_CF: &str = tables::META_NAME;

pub struct RocksEngine {
    db: DB,
    sync: bool,
    /// Every column family open (flushed together at shutdown).
    names: Vec<String>,
}

/// Where `key` of `table` lives in the shared keyspace: the table's name, a zero byte,
/// the key. Tables keep their own order, and no table's range reaches into another's
/// (`to_device\0…` sorts before `to_device_txns\0…` and ends at `to_device\x01`).
fn prefixed(table: &str, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(table.len() + 1 + key.len());
    k.extend_from_slice(table.as_bytes());
    k.push(0);
    k.extend_from_slice(key);
    k
}

/// The first key after every key of `table`.
fn table_end(table: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(table.len() + 1);
    k.extend_from_slice(table.as_bytes());
    k.push(1);
    k
}

impl RocksEngine {
    pub fn open(root: &Path, durability: Durability, cache_mb: u64) -> Result<Self> {
        let path = root.join(SUBDIR);
        let cache = Cache::new_lru_cache((cache_mb.max(8) * 1024 * 1024) as usize);
        let mut block = BlockBasedOptions::default();
        block.set_block_cache(&cache);
        block.set_bloom_filter(10.0, false);

        let mut cf_opts = Options::default();
        cf_opts.set_block_based_table_factory(&block);
        cf_opts.set_compression_type(DBCompressionType::Lz4);
        cf_opts.set_bottommost_compression_type(DBCompressionType::Zstd);

        let mut db_opts = cf_opts.clone();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        // Small boards: few open files, few background threads, bounded logs.
        db_opts.set_max_open_files(512);
        db_opts.increase_parallelism(2);
        db_opts.set_keep_log_file_num(3);
        db_opts.set_max_log_file_size(4 * 1024 * 1024);
        // RocksDB's own LOG: warnings and errors only. At the default (info) level every
        // start writes each column family's full option dump, and a statistics dump
        // every ten minutes.
        db_opts.set_log_level(rocksdb::LogLevel::Warn);
        db_opts.set_stats_dump_period_sec(0);
        // Open table files on the opening thread. With the default (16), RocksDB starts
        // and joins 15 threads per column family at every open, to open a handful of files.
        db_opts.set_max_file_opening_threads(1);

        // Every column family that exists must be opened, including the per-table ones of
        // the older layout (moved below) and any a newer Hearth may have made.
        let mut names: Vec<String> = DB::list_cf(&db_opts, &path).unwrap_or_default();
        for n in [DEFAULT_COLUMN_FAMILY_NAME, META_CF] {
            if !names.iter().any(|have| have == n) {
                names.push(n.to_owned());
            }
        }
        let cfs = names.iter().map(|n| ColumnFamilyDescriptor::new(n, cf_opts.clone()));
        let mut db = DB::open_cf_descriptors(&db_opts, &path, cfs)?;
        migrate_layout(&mut db, &names)?;
        names.retain(|n| db.cf_handle(n).is_some());
        Ok(RocksEngine { db, sync: durability == Durability::Fsync, names })
    }

    fn write_batch(&self, batch: Batch, sync: bool) -> Result<()> {
        let mut wb = WriteBatch::default();
        for op in batch.ops {
            match op {
                Op::Put { table: META_CF, key, value } => wb.put_cf(self.meta()?, key, value),
                Op::Delete { table: META_CF, key } => wb.delete_cf(self.meta()?, key),
                Op::Put { table, key, value } => wb.put(prefixed(table, &key), value),
                Op::Delete { table, key } => wb.delete(prefixed(table, &key)),
            }
        }
        let mut opts = WriteOptions::default();
        opts.set_sync(sync);
        Ok(self.db.write_opt(wb, &opts)?)
    }

    fn meta(&self) -> Result<&ColumnFamily> {
        self.db.cf_handle(META_CF).ok_or_else(|| StoreError::Other("the meta column family is not open".into()))
    }
}

/// Moves a database in the older layout (a column family per table) into the shared
/// keyspace, once. Every column family other than `default` and `meta` can only be such
/// a table, named after it. All of it is copied and made durable before the first old
/// column family is dropped, so a crash at any point leaves either the old copy whole or
/// the new one whole, and the next open finishes the move (copying again writes the same
/// keys and values). Nothing else reads or writes while this runs.
fn migrate_layout(db: &mut DB, names: &[String]) -> Result<()> {
    let old: Vec<&str> =
        names.iter().map(String::as_str).filter(|n| *n != DEFAULT_COLUMN_FAMILY_NAME && *n != META_CF).collect();
    if old.is_empty() {
        return Ok(());
    }
    tracing::info!(tables = old.len(), "moving the database to the one-keyspace layout (once)");
    let mut moved = 0u64;
    for table in &old {
        let cf = db.cf_handle(table).ok_or_else(|| StoreError::Other(format!("column family {table} vanished")))?;
        let mut it = db.raw_iterator_cf(cf);
        it.seek_to_first();
        let mut wb = WriteBatch::default();
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            wb.put(prefixed(table, k), v);
            moved += 1;
            if wb.len() >= 4096 {
                db.write(std::mem::take(&mut wb))?;
            }
            it.next();
        }
        it.status()?;
        db.write(wb)?;
    }
    db.flush_wal(true)?;
    db.flush()?;
    for table in &old {
        db.drop_cf(table)?;
    }
    tracing::info!(entries = moved, tables = old.len(), "database moved to the one-keyspace layout");
    Ok(())
}

impl Engine for RocksEngine {
    fn get(&self, table: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if table == META_CF {
            return Ok(self.db.get_cf(self.meta()?, key)?);
        }
        Ok(self.db.get(prefixed(table, key))?)
    }

    fn get_many(&self, table: &'static str, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        if table == META_CF {
            return keys.iter().map(|k| self.get(table, k)).collect();
        }
        // One batched lookup: RocksDB shares the work of finding blocks between the keys.
        let keys: Vec<Vec<u8>> = keys.iter().map(|k| prefixed(table, k)).collect();
        let default = self
            .db
            .cf_handle(rocksdb::DEFAULT_COLUMN_FAMILY_NAME)
            .ok_or_else(|| StoreError::Other("the default column family is missing".into()))?;
        self.db
            .batched_multi_get_cf(&default, &keys, false)
            .into_iter()
            .map(|v| Ok(v?.map(|slice| slice.to_vec())))
            .collect()
    }

    fn scan(&self, table: &'static str, range: &KeyRange, order: Order, visit: Visit<'_>) -> Result<()> {
        let mut opts = ReadOptions::default();
        let mut it = if table == META_CF {
            if let Some(lower) = &range.lower {
                opts.set_iterate_lower_bound(lower.clone());
            }
            if let Some(upper) = &range.upper {
                opts.set_iterate_upper_bound(upper.clone());
            }
            self.db.raw_iterator_cf_opt(self.meta()?, opts)
        } else {
            opts.set_iterate_lower_bound(prefixed(table, range.lower.as_deref().unwrap_or_default()));
            opts.set_iterate_upper_bound(match &range.upper {
                Some(upper) => prefixed(table, upper),
                None => table_end(table),
            });
            self.db.raw_iterator_opt(opts)
        };
        let skip = if table == META_CF { 0 } else { table.len() + 1 };
        match order {
            Order::Ascending => it.seek_to_first(),
            Order::Descending => it.seek_to_last(),
        }
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            // Within the bounds every key carries the table's prefix.
            let k = k.get(skip..).ok_or_else(|| StoreError::Other(format!("a key outside table {table}")))?;
            if !visit(k, v)? {
                return Ok(());
            }
            match order {
                Order::Ascending => it.next(),
                Order::Descending => it.prev(),
            }
        }
        Ok(it.status()?)
    }

    fn write(&self, batch: Batch) -> Result<()> {
        self.write_batch(batch, self.sync)
    }

    fn write_deferred(&self, batch: Batch) -> Result<()> {
        self.write_batch(batch, false)
    }

    fn sync(&self) -> Result<()> {
        if self.sync {
            // Flushes RocksDB's WAL buffer and fsyncs the log: every write so far is durable.
            self.db.flush_wal(true)?;
        }
        Ok(())
    }

    fn sync_is_free(&self) -> bool {
        !self.sync
    }

    fn flush(&self) -> Result<()> {
        self.db.flush_wal(true)?;
        // Memtables to table files too: otherwise the next start replays the whole
        // write-ahead log (0.26 s after the benchmark's 12,000 events, against 0.05 s).
        let cfs: Vec<&rocksdb::ColumnFamily> = self.names.iter().filter_map(|n| self.db.cf_handle(n)).collect();
        self.db.flush_cfs_opt(&cfs, &rocksdb::FlushOptions::default())?;
        Ok(())
    }

    fn backup(&self, dest: &Path) -> Result<()> {
        std::fs::create_dir_all(dest)?;
        Checkpoint::new(&self.db)?.create_checkpoint(dest.join(SUBDIR))?;
        Ok(())
    }

    fn size_on_disk(&self) -> Result<u64> {
        dir_size(self.db.path())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Backend, Store};

    fn collect(engine: &RocksEngine, table: &'static str, range: &KeyRange, order: Order) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        engine
            .scan(table, range, order, &mut |k: &[u8], v: &[u8]| {
                out.push((k.to_vec(), v.to_vec()));
                Ok(true)
            })
            .expect("scan");
        out
    }

    #[test]
    fn tables_sharing_a_keyspace_stay_apart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = RocksEngine::open(dir.path(), Durability::Fsync, 8).expect("open");
        let mut batch = Batch::new();
        for (table, key) in [(tables::TO_DEVICE, "a"), (tables::TO_DEVICE, "b"), (tables::TO_DEVICE_TXNS, "a")] {
            batch.ops.push(Op::Put { table, key: key.as_bytes().to_vec(), value: table.as_bytes().to_vec() });
        }
        engine.write(batch).expect("write");
        let all = KeyRange { lower: None, upper: None };
        let keys = |t, order| collect(&engine, t, &all, order).into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        assert_eq!(keys(tables::TO_DEVICE, Order::Ascending), [b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(keys(tables::TO_DEVICE, Order::Descending), [b"b".to_vec(), b"a".to_vec()]);
        assert_eq!(keys(tables::TO_DEVICE_TXNS, Order::Descending), [b"a".to_vec()]);
        let from_b = KeyRange { lower: Some(b"b".to_vec()), upper: None };
        assert_eq!(collect(&engine, tables::TO_DEVICE, &from_b, Order::Ascending).len(), 1);
        let below_b = KeyRange { lower: None, upper: Some(b"b".to_vec()) };
        assert_eq!(collect(&engine, tables::TO_DEVICE, &below_b, Order::Descending)[0].0, b"a");
        assert_eq!(engine.get(tables::TO_DEVICE_TXNS, b"b").expect("get"), None);
        assert_eq!(engine.get(tables::TO_DEVICE_TXNS, b"a").expect("get").as_deref(), Some(&b"to_device_txns"[..]));
    }

    /// Opens `root`'s RocksDB directly, as the older per-table layout did, with `families`.
    fn open_old_layout(root: &Path, families: &[&str]) -> DB {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        DB::open_cf(&opts, root.join(SUBDIR), families).expect("open old layout")
    }

    /// The column families left once the move is done.
    fn families_left(root: &Path) -> Vec<String> {
        let mut cfs = DB::list_cf(&Options::default(), root.join(SUBDIR)).expect("list");
        cfs.sort();
        cfs
    }

    /// A database written by the older layout (a column family per table, schema 1)
    /// opens with every entry in place, loses its old column families, and records
    /// schema 2.
    #[test]
    fn the_per_table_layout_is_moved_over() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let db = open_old_layout(dir.path(), tables::ALL);
            let cf = |n: &str| db.cf_handle(n).expect("cf");
            db.put_cf(cf(tables::META_NAME), b"schema_version\0\x01", 1u64.to_be_bytes()).expect("put");
            for i in 0..5000u32 {
                db.put_cf(cf(tables::PDUS), i.to_be_bytes(), format!("pdu {i}")).expect("put");
            }
            db.put_cf(cf(tables::TO_DEVICE), b"k", b"to-device").expect("put");
            db.put_cf(cf(tables::TO_DEVICE_TXNS), b"k", b"txn").expect("put");
            db.put_cf(cf(tables::ACCOUNTS), b"alice", b"account").expect("put");
        }
        let store = Store::open(dir.path(), Backend::Rocksdb, Durability::Fsync, 8).expect("open migrated");
        let version = tables::META.get(&store, "schema_version").expect("meta").expect("a version");
        assert_eq!(version, SCHEMA.to_vec());
        drop(store);

        assert_eq!(families_left(dir.path()), [DEFAULT_COLUMN_FAMILY_NAME, META_CF]);
        let engine = RocksEngine::open(dir.path(), Durability::Fsync, 8).expect("reopen");
        let all = KeyRange { lower: None, upper: None };
        let pdus = collect(&engine, tables::PDUS, &all, Order::Ascending);
        assert_eq!(pdus.len(), 5000);
        assert_eq!(pdus[4999], (4999u32.to_be_bytes().to_vec(), b"pdu 4999".to_vec()));
        assert_eq!(engine.get(tables::TO_DEVICE, b"k").expect("get").as_deref(), Some(&b"to-device"[..]));
        assert_eq!(engine.get(tables::TO_DEVICE_TXNS, b"k").expect("get").as_deref(), Some(&b"txn"[..]));
        assert_eq!(engine.get(tables::ACCOUNTS, b"alice").expect("get").as_deref(), Some(&b"account"[..]));
    }

    /// A move interrupted by a crash: part of one table already copied, another table
    /// copied and its column family dropped. The next open finishes the move.
    #[test]
    fn an_interrupted_move_is_finished() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let db = open_old_layout(dir.path(), &[META_CF, tables::PDUS]);
            let pdus = db.cf_handle(tables::PDUS).expect("cf");
            for i in 0..100u32 {
                db.put_cf(pdus, i.to_be_bytes(), format!("pdu {i}")).expect("put");
            }
            // Already moved: the first ten PDUs, and all of ACCOUNTS (its family gone).
            for i in 0..10u32 {
                db.put(prefixed(tables::PDUS, &i.to_be_bytes()), format!("pdu {i}")).expect("put");
            }
            db.put(prefixed(tables::ACCOUNTS, b"alice"), b"account").expect("put");
        }
        let engine = RocksEngine::open(dir.path(), Durability::Fsync, 8).expect("open");
        let all = KeyRange { lower: None, upper: None };
        let pdus = collect(&engine, tables::PDUS, &all, Order::Ascending);
        assert_eq!(pdus.len(), 100);
        assert_eq!(pdus[42], (42u32.to_be_bytes().to_vec(), b"pdu 42".to_vec()));
        assert_eq!(engine.get(tables::ACCOUNTS, b"alice").expect("get").as_deref(), Some(&b"account"[..]));
        drop(engine);
        assert_eq!(families_left(dir.path()), [DEFAULT_COLUMN_FAMILY_NAME, META_CF]);
    }

    const SCHEMA: [u8; 8] = crate::store::SCHEMA_VERSION.to_be_bytes();
}
