//! The RocksDB engine: one column family per table, under `<database_path>/rocksdb`.
//!
//! Writes go through a single `WriteBatch`, so a batch is atomic across tables. With
//! [`Durability::Fsync`] each batch is synced to disk before it is acknowledged (either by
//! a synced write, or, for the stream's deferred writes, by one WAL fsync covering every
//! write that arrived meanwhile: group commit); with [`Durability::Process`] it is in
//! RocksDB's write-ahead log in the OS, which survives a crash of Hearth but not of the
//! machine.

use std::path::Path;

use rocksdb::{
    checkpoint::Checkpoint, BlockBasedOptions, Cache, ColumnFamilyDescriptor, DBCompressionType, Options, ReadOptions,
    WriteBatch, WriteOptions, DB,
};

use super::{dir_size, tables, Batch, Durability, Engine, KeyRange, Op, Order, Result, StoreError, Visit};

pub struct RocksEngine {
    db: DB,
    sync: bool,
    /// Every column family open (flushed together at shutdown).
    names: Vec<String>,
}

const SUBDIR: &str = "rocksdb";

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
        // start writes each column family's full option dump (~2,500 lines), which was a
        // third of an empty start-up, and a statistics dump every ten minutes.
        db_opts.set_log_level(rocksdb::LogLevel::Warn);
        db_opts.set_stats_dump_period_sec(0);

        // Open every column family that exists, including ones a newer schema created,
        // plus every table this build declares.
        let mut names: Vec<String> = DB::list_cf(&db_opts, &path).unwrap_or_default();
        for t in tables::ALL {
            if !names.iter().any(|n| n == t) {
                names.push((*t).to_owned());
            }
        }
        let cfs = names.iter().map(|n| ColumnFamilyDescriptor::new(n, cf_opts.clone()));
        let db = DB::open_cf_descriptors(&db_opts, &path, cfs)?;
        Ok(RocksEngine { db, sync: durability == Durability::Fsync, names })
    }

    fn write_batch(&self, batch: Batch, sync: bool) -> Result<()> {
        let mut wb = WriteBatch::default();
        for op in batch.ops {
            match op {
                Op::Put { table, key, value } => wb.put_cf(self.cf(table)?, key, value),
                Op::Delete { table, key } => wb.delete_cf(self.cf(table)?, key),
            }
        }
        let mut opts = WriteOptions::default();
        opts.set_sync(sync);
        Ok(self.db.write_opt(wb, &opts)?)
    }

    fn cf(&self, table: &'static str) -> Result<&rocksdb::ColumnFamily> {
        self.db.cf_handle(table).ok_or_else(|| StoreError::Other(format!("unknown table {table}")))
    }
}

impl Engine for RocksEngine {
    fn get(&self, table: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get_cf(self.cf(table)?, key)?)
    }

    fn scan(&self, table: &'static str, range: &KeyRange, order: Order, visit: Visit<'_>) -> Result<()> {
        let mut opts = ReadOptions::default();
        if let Some(lower) = &range.lower {
            opts.set_iterate_lower_bound(lower.clone());
        }
        if let Some(upper) = &range.upper {
            opts.set_iterate_upper_bound(upper.clone());
        }
        let mut it = self.db.raw_iterator_cf_opt(self.cf(table)?, opts);
        match order {
            Order::Ascending => it.seek_to_first(),
            Order::Descending => it.seek_to_last(),
        }
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
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
