//! The storage engines behave identically: ordering, ranges, batches, deferred writes,
//! backups, locking.

use std::ops::Bound;

use std::collections::BTreeMap;

use hearth::store::{codec::encode_key, tables, Backend, Batch, Durability, KeyRange, Order, Store, Table};
use rand::{rngs::StdRng, Rng, SeedableRng};

use crate::both_engines;

/// A scratch table (the name is a real one; the store is fresh, so nothing else uses it).
const T: Table<(String, u64), Vec<u8>> = Table::new(tables::PROFILE_FIELDS);

fn open(b: Backend, dir: &std::path::Path) -> Store {
    Store::open(dir, b, Durability::Process, 8).unwrap()
}

async fn ordered_scans_and_prefixes(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(b, dir.path());
    let mut batch = Batch::new();
    for room in ["!a", "!b", "!a\0x"] {
        for n in [3u64, 1, 256, 2] {
            T.put(&mut batch, (room, n), &format!("{room}{n}").into_bytes());
        }
    }
    store.write(batch).unwrap();

    let mut seen = Vec::new();
    T.scan_prefix(&store, "!a", Order::Ascending, |(r, n), _| {
        seen.push((r, n));
        true
    })
    .unwrap();
    assert_eq!(seen, vec![("!a".into(), 1), ("!a".into(), 2), ("!a".into(), 3), ("!a".into(), 256)]);

    let mut seen = Vec::new();
    T.scan_prefix(&store, "!b", Order::Descending, |(_, n), v| {
        seen.push((n, v));
        n > 2
    })
    .unwrap();
    assert_eq!(seen, vec![(256, b"!b256".to_vec()), (3, b"!b3".to_vec()), (2, b"!b2".to_vec())]);

    // An explicit range: from (!a, 2) inclusive to (!a, 256) exclusive.
    let lo = hearth::store::codec::encode_key::<(String, u64)>(("!a", 2));
    let hi = hearth::store::codec::encode_key::<(String, u64)>(("!a", 256));
    let mut seen = Vec::new();
    T.scan_range(
        &store,
        &KeyRange::from_bounds(Bound::Included(&lo), Bound::Excluded(&hi)),
        Order::Ascending,
        |(_, n), _| {
            seen.push(n);
            true
        },
    )
    .unwrap();
    assert_eq!(seen, vec![2, 3]);

    let mut all = 0;
    T.scan_all(&store, |_, _| {
        all += 1;
        true
    })
    .unwrap();
    assert_eq!(all, 12);
}

async fn batches_put_and_delete(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(b, dir.path());
    let mut batch = Batch::new();
    T.put(&mut batch, ("k", 1), &b"one".to_vec());
    T.put(&mut batch, ("k", 2), &b"two".to_vec());
    store.write(batch).unwrap();
    let mut batch = Batch::new();
    T.delete(&mut batch, ("k", 1));
    T.put(&mut batch, ("k", 2), &b"TWO".to_vec());
    store.write(batch).unwrap();
    assert_eq!(T.get(&store, ("k", 1)).unwrap(), None);
    assert_eq!(T.get(&store, ("k", 2)).unwrap(), Some(b"TWO".to_vec()));
    assert!(store.size_on_disk().unwrap() > 0);
}

async fn data_survives_reopen_and_backup_restores(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let backup = dir.path().join("backup");
    {
        let store = open(b, &data);
        let mut batch = Batch::new();
        T.put(&mut batch, ("x", 7), &b"seven".to_vec());
        store.write(batch).unwrap();
        store.backup(&backup).unwrap();
        // Written after the backup: must not be in it.
        let mut batch = Batch::new();
        T.put(&mut batch, ("x", 8), &b"eight".to_vec());
        store.write(batch).unwrap();
    }
    let store = open(b, &data);
    assert_eq!(T.get(&store, ("x", 8)).unwrap(), Some(b"eight".to_vec()));
    drop(store);
    let restored = open(b, &backup);
    assert_eq!(T.get(&restored, ("x", 7)).unwrap(), Some(b"seven".to_vec()));
    assert_eq!(T.get(&restored, ("x", 8)).unwrap(), None);
}

async fn second_open_is_refused(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let _store = open(b, dir.path());
    let err = Store::open(dir.path(), b, Durability::Process, 8).err().expect("second open must fail");
    let msg = err.to_string();
    assert!(msg.contains("already in use"), "{msg}");
    assert!(msg.contains(&std::process::id().to_string()), "holder pid missing: {msg}");
}

/// Records `version` as the schema of the database in `dir` (created if new).
fn record_schema(b: Backend, dir: &std::path::Path, version: u64) {
    let store = open(b, dir);
    let mut batch = Batch::new();
    tables::META.put(&mut batch, "schema_version", &version.to_be_bytes().to_vec());
    store.write(batch).unwrap();
}

async fn newer_schema_is_refused(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    record_schema(b, dir.path(), 999);
    let err = Store::open(dir.path(), b, Durability::Process, 8).err().expect("newer schema must be refused");
    assert!(err.to_string().contains("schema version 999"), "{err}");
}

/// A database of schema 2 (timeline rows without push views) is opened and recorded as the
/// current schema: its rows are read as they are (the 3 → 4 step, receipts and
/// transaction keys, has its own test in `store`).
async fn older_schema_is_moved_forward(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    record_schema(b, dir.path(), 2);
    let store = open(b, dir.path());
    let version = tables::META.get(&store, "schema_version").unwrap().expect("a version");
    assert_eq!(version, hearth::store::SCHEMA_VERSION.to_be_bytes().to_vec());
    assert_eq!(hearth::store::SCHEMA_VERSION, 4);
}

async fn conduit_directory_is_refused(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("CURRENT"), "MANIFEST-000001\n").unwrap();
    let err = Store::open(dir.path(), b, Durability::Process, 8).err().expect("Conduit data must be refused");
    assert!(err.to_string().contains("Conduit"), "{err}");
}

/// A second scratch table, with keys that sort as numbers.
const N: Table<u64, Vec<u8>> = Table::new(tables::FILTERS);

/// Reads see deferred writes at once and synced ones after a reopen, on every read path,
/// exactly as a plain map would: random batches of puts and deletes over 40 keys, deferred
/// or written, with syncs in between; after each step point reads, a batch read of every
/// key (large enough for SQLite's mapped reader), and scans with random bounds, order and
/// stopping point are compared with the map. On SQLite, deferred batches share one open
/// transaction that only the next sync commits, so its reads merge that transaction's
/// writes (kept in memory) with the database.
async fn deferred_writes_read_like_written_ones(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(b, dir.path());
    let mut model: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut rng = StdRng::seed_from_u64(7);
    for step in 0..1500u32 {
        let mut batch = Batch::new();
        for _ in 0..rng.gen_range(1..5) {
            let key = rng.gen_range(0..40u64);
            if rng.gen_bool(0.3) {
                N.delete(&mut batch, key);
                model.remove(&key);
            } else {
                let value = format!("{key}@{step}").into_bytes();
                N.put(&mut batch, key, &value);
                model.insert(key, value);
            }
        }
        match rng.gen_range(0..10) {
            0..=5 => store.write_deferred(batch).unwrap(),
            6..=7 => store.write(batch).unwrap(),
            _ => {
                store.write_deferred(batch).unwrap();
                store.sync().unwrap();
            }
        }
        if step % 500 == 499 {
            store.sync().unwrap();
            drop(store);
            store = open(b, dir.path());
        }

        for _ in 0..3 {
            let key = rng.gen_range(0..45u64);
            assert_eq!(N.get(&store, key).unwrap(), model.get(&key).cloned(), "get {key} at step {step}");
        }
        let keys: Vec<u64> = (0..45).collect();
        let expected: Vec<Option<Vec<u8>>> = keys.iter().map(|k| model.get(k).cloned()).collect();
        assert_eq!(N.get_many(&store, keys.iter().copied()).unwrap(), expected, "get_many at step {step}");

        let (lo, hi) = (rng.gen_range(0..45u64), rng.gen_range(0..45u64));
        let range = KeyRange {
            lower: rng.gen_bool(0.8).then(|| encode_key::<u64>(lo)),
            upper: rng.gen_bool(0.8).then(|| encode_key::<u64>(hi)),
        };
        let in_range =
            |k: &u64| range.lower.as_ref().is_none_or(|_| *k >= lo) && range.upper.as_ref().is_none_or(|_| *k < hi);
        let order = if rng.gen_bool(0.5) { Order::Ascending } else { Order::Descending };
        let take = rng.gen_range(1..50usize);
        let mut expected: Vec<(u64, Vec<u8>)> =
            model.iter().filter(|(k, _)| in_range(k)).map(|(k, v)| (*k, v.clone())).collect();
        if order == Order::Descending {
            expected.reverse();
        }
        expected.truncate(take);
        let mut seen = Vec::new();
        N.scan_range(&store, &range, order, |k, v| {
            seen.push((k, v));
            seen.len() < take
        })
        .unwrap();
        assert_eq!(seen, expected, "scan {range:?} {order:?} taking {take} at step {step}");
    }
}

both_engines!(
    ordered_scans_and_prefixes,
    batches_put_and_delete,
    data_survives_reopen_and_backup_restores,
    second_open_is_refused,
    newer_schema_is_refused,
    older_schema_is_moved_forward,
    conduit_directory_is_refused,
    deferred_writes_read_like_written_ones,
);
