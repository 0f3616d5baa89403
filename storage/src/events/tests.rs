use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::sync::atomic::AtomicBool;

use super::recovery::OLD_FORMAT_VERSION;
use super::segment::{HEADER_LEN, RECORD_HEADER_LEN};
use super::*;

/// Damage, torn writes and failures: what the log does when its files or its metadata
/// are not what it wrote.
mod damage;

/// Segments of a few records each, and an index point every record or two.
const TINY: Options = Options {
    segment_bytes: 256,
    index_every: 48,
};

fn log_dir(dir: &Path) -> PathBuf {
    dir.join("event_log")
}

/// Opens (or reopens) the log of a test directory: sled in `db/`, segments in `event_log/`.
fn open_with(dir: &Path, options: Options) -> (Db, EventLog) {
    // sled releases its file lock asynchronously after a drop: retry briefly.
    let mut last = None;
    for _ in 0..250 {
        match sled::open(dir.join("db")) {
            Ok(db) => {
                let log = EventLog::open_with(&db, &log_dir(dir), options, false).unwrap();
                return (db, log);
            }
            Err(e) => {
                last = Some(e);
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }
    panic!("cannot reopen: {last:?}");
}

fn open(dir: &Path) -> (Db, EventLog) {
    open_with(dir, Options::default())
}

fn temporary() -> EventLog {
    let db = sled::Config::new().temporary(true).open().unwrap();
    EventLog::open_temporary(&db).unwrap()
}

fn temporary_with(options: Options) -> (tempfile::TempDir, EventLog) {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::Config::new().temporary(true).open().unwrap();
    let log = EventLog::open_with(&db, &log_dir(dir.path()), options, false).unwrap();
    (dir, log)
}

fn ids_of(entries: &[(u64, Vec<u8>)]) -> Vec<u64> {
    entries.iter().map(|(id, _)| *id).collect()
}

/// Segment file names in the log's directory, in order.
fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(log_dir(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    files
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).unwrap().len()
}

fn overwrite(path: &Path, offset: u64, bytes: &[u8]) {
    let file = OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(bytes, offset).unwrap();
}

fn truncate(path: &Path, len: u64) {
    let file = OpenOptions::new().write(true).open(path).unwrap();
    file.set_len(len).unwrap();
}

fn is_corrupt<T: std::fmt::Debug>(result: Result<T>) -> bool {
    matches!(result, Err(StorageError::Corrupt { .. }))
}

#[test]
fn ids_increase_and_reads_resume_after_an_id() {
    let log = temporary();
    assert_eq!((log.last_id(), log.len()), (0, 0));
    assert!(log.read_after(0, 10).unwrap().is_empty());
    assert_eq!(log.first_id().unwrap(), None);
    let a = log.append(b"a").unwrap();
    let b = log.append(b"b").unwrap();
    let c = log.append(b"").unwrap();
    assert!(a >= 1 && a < b && b < c);
    assert_eq!(log.last_id(), c);
    assert_eq!(log.len(), 3);
    let all = log.read_after(0, 10).unwrap();
    assert_eq!(
        all,
        vec![(a, b"a".to_vec()), (b, b"b".to_vec()), (c, Vec::new())]
    );
    assert_eq!(ids_of(&log.read_after(a, 10).unwrap()), vec![b, c]);
    assert_eq!(ids_of(&log.read_after(0, 2).unwrap()), vec![a, b]);
    assert!(log.read_after(0, 0).unwrap().is_empty());
    assert!(log.read_after(c, 10).unwrap().is_empty());
    assert!(log.read_after(u64::MAX, 10).unwrap().is_empty());
    assert_eq!(log.first_id().unwrap(), Some(a));
    log.sync().unwrap();
    log.sync().unwrap();
    assert!(format!("{log:?}").contains("len: 3"));
}

#[test]
fn trims_by_id_age_and_length() {
    for options in [Options::default(), TINY] {
        let (_dir, log) = temporary_with(options);
        let ids: Vec<u64> = (0..10u64)
            .map(|i| log.append_at(1_000 + i, &[i as u8]).unwrap())
            .collect();
        assert_eq!(log.trim_before(ids[2]).unwrap(), 2);
        assert_eq!(log.trim_before(ids[2]).unwrap(), 0);
        assert_eq!(log.first_id().unwrap(), Some(ids[2]));
        assert_eq!(log.trim_older_than(1_005).unwrap(), 3);
        assert_eq!(log.first_id().unwrap(), Some(ids[5]));
        assert_eq!(log.len(), 5);
        assert_eq!(log.trim_to_len(2).unwrap(), 3);
        assert_eq!(log.trim_to_len(2).unwrap(), 0);
        assert_eq!(
            ids_of(&log.read_after(0, 10).unwrap()),
            vec![ids[8], ids[9]]
        );
        assert_eq!(log.read_after(ids[8], 10).unwrap(), vec![(ids[9], vec![9])]);
        assert_eq!(log.len(), 2);
        // Trimming doesn't move the id counter back.
        let next = log.append(b"x").unwrap();
        assert!(next > ids[9]);
        assert_eq!(log.trim_to_len(0).unwrap(), 3);
        assert_eq!((log.len(), log.first_id().unwrap()), (0, None));
        assert!(log.read_after(0, 10).unwrap().is_empty());
        let after = log.append(b"y").unwrap();
        assert_eq!(log.first_id().unwrap(), Some(after));
        assert_eq!(ids_of(&log.read_after(0, 10).unwrap()), vec![after]);
    }
}

#[test]
fn trimming_across_many_segments_removes_everything_asked() {
    let (dir, log) = temporary_with(TINY);
    let n = 500;
    for i in 0..n {
        log.append_at(i, b"entry").unwrap();
    }
    let files = segment_files(dir.path()).len();
    assert!(files > 20, "{files} segments");
    assert_eq!(log.trim_older_than(n - 1).unwrap(), n - 1);
    assert_eq!(log.len(), 1);
    assert_eq!(log.read_after(0, 10).unwrap().len(), 1);
    assert_eq!(segment_files(dir.path()).len(), 1);
}

#[test]
fn ids_keep_increasing_across_reopen_even_when_everything_was_trimmed() {
    let dir = tempfile::tempdir().unwrap();
    let (db, log) = open(dir.path());
    let a = log.append(b"one").unwrap();
    let b = log.append(b"two").unwrap();
    log.sync().unwrap();
    drop((db, log));

    let (db, log) = open(dir.path());
    assert_eq!(log.len(), 2);
    assert_eq!(log.last_id(), b);
    assert_eq!(
        log.read_after(0, 10).unwrap(),
        vec![(a, b"one".to_vec()), (b, b"two".to_vec())]
    );
    let c = log.append(b"three").unwrap();
    assert!(c > b);
    assert_eq!(log.trim_before(c + 1).unwrap(), 3);
    assert!(log.is_empty());
    drop((db, log));

    let (_db, log) = open(dir.path());
    assert!(log.is_empty());
    assert!(log.read_after(0, 10).unwrap().is_empty());
    let d = log.append(b"four").unwrap();
    assert!(d > c, "{d} after {c}");
}

#[test]
fn ids_are_not_reused_when_unsynced_entries_are_lost() {
    let dir = tempfile::tempdir().unwrap();
    let (db, log) = open(dir.path());
    let a = log.append(b"kept").unwrap();
    log.sync().unwrap();
    let [file] = &segment_files(dir.path())[..] else {
        panic!("one segment expected");
    };
    let synced = file_len(file);
    let lost = log.append(b"lost").unwrap();
    drop((db, log));
    // Simulate a crash that lost the newest entry but not its reservation.
    truncate(file, synced);

    let (_db, log) = open(dir.path());
    assert_eq!(ids_of(&log.read_after(0, 10).unwrap()), vec![a]);
    assert_eq!(log.last_id(), a);
    assert!(log.append(b"new").unwrap() > lost);
}

#[test]
fn reads_span_segment_boundaries() {
    let (dir, log) = temporary_with(TINY);
    let ids: Vec<u64> = (0..100u64)
        .map(|i| log.append(format!("entry {i}").as_bytes()).unwrap())
        .collect();
    let files = segment_files(dir.path());
    assert!(files.len() > 10, "{} segments", files.len());
    // No segment grows past the size, and each is named by its first id.
    for file in &files {
        assert!(file_len(file) <= TINY.segment_bytes, "{}", file.display());
    }
    let first_names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .take(2)
        .collect();
    assert_eq!(first_names[0], format!("{:020}.seg", ids[0]));
    for start in 0..ids.len() {
        let after = if start == 0 { 0 } else { ids[start - 1] };
        for limit in [1, 7, 1000] {
            let read = log.read_after(after, limit).unwrap();
            let expected: Vec<(u64, Vec<u8>)> = (start..ids.len())
                .take(limit)
                .map(|i| (ids[i], format!("entry {i}").into_bytes()))
                .collect();
            assert_eq!(read, expected, "after {after}, limit {limit}");
        }
    }
}

#[test]
fn trimming_deletes_whole_segment_files_but_never_the_newest() {
    let (dir, log) = temporary_with(TINY);
    let ids: Vec<u64> = (0..60u64)
        .map(|i| log.append(&[i as u8; 20]).unwrap())
        .collect();
    let before = segment_files(dir.path());
    assert!(before.len() >= 6);
    let per_segment = 60 / before.len();
    // Into the middle of the third segment: the first two files go, the third stays.
    let cut = ids[2 * per_segment + 1];
    assert_eq!(log.trim_before(cut).unwrap(), (2 * per_segment + 1) as u64);
    let after = segment_files(dir.path());
    assert_eq!(after[..], before[2..]);
    assert_eq!(log.first_id().unwrap(), Some(cut));
    assert_eq!(log.read_after(0, 1).unwrap()[0].0, cut);

    assert_eq!(
        log.trim_before(u64::MAX).unwrap(),
        60 - (2 * per_segment + 1) as u64
    );
    assert_eq!(segment_files(dir.path())[..], before[before.len() - 1..]);
    assert!(log.is_empty());
    assert!(log.read_after(0, 100).unwrap().is_empty());
    assert_eq!(log.last_id(), ids[59]);
    // New appends go on (possibly into a new segment); the old newest goes at the next trim.
    let more: Vec<u64> = (0..20).map(|_| log.append(&[7; 20]).unwrap()).collect();
    assert_eq!(ids_of(&log.read_after(0, 100).unwrap()), more);
    assert_eq!(log.trim_to_len(1).unwrap(), 19);
    assert!(!segment_files(dir.path()).contains(before.last().unwrap()));
    assert_eq!(ids_of(&log.read_after(0, 100).unwrap()), vec![more[19]]);
}

#[test]
fn the_watermark_survives_reopen() {
    for options in [Options::default(), TINY] {
        let dir = tempfile::tempdir().unwrap();
        let (db, log) = open_with(dir.path(), options);
        let ids: Vec<u64> = (0..30u64)
            .map(|i| log.append_at(i, &[i as u8; 10]).unwrap())
            .collect();
        assert_eq!(log.trim_older_than(17).unwrap(), 17);
        drop((db, log));

        let (db, log) = open_with(dir.path(), options);
        assert_eq!(log.len(), 13);
        assert_eq!(log.first_id().unwrap(), Some(ids[17]));
        assert_eq!(log.read_after(0, 1).unwrap(), vec![(ids[17], vec![17; 10])]);
        assert_eq!(log.read_after(0, 100).unwrap().len(), 13);
        assert_eq!(log.trim_older_than(17).unwrap(), 0);
        assert_eq!(log.trim_to_len(3).unwrap(), 10);
        drop((db, log));

        let (_db, log) = open_with(dir.path(), options);
        assert_eq!(ids_of(&log.read_after(0, 100).unwrap()), ids[27..]);
        assert_eq!(log.len(), 3);
    }
}

#[test]
fn entries_move_from_the_old_sled_tree_with_their_ids_and_times() {
    let dir = tempfile::tempdir().unwrap();
    let old = |db: &Db, entries: &[(u64, u64, &[u8])]| {
        let tree = db.open_tree(LOG_NAME).unwrap();
        for &(id, at_ns, entry) in entries {
            let mut value = vec![OLD_FORMAT_VERSION];
            value.extend_from_slice(&at_ns.to_be_bytes());
            value.extend_from_slice(entry);
            tree.insert(id.to_be_bytes(), value).unwrap();
        }
        db.open_tree(TREE_LOG_META)
            .unwrap()
            .insert(RESERVED_KEY, &1024u64.to_be_bytes())
            .unwrap();
        db.flush().unwrap();
    };
    let expected = vec![
        (3, b"three".to_vec()),
        (4, Vec::new()),
        (10, b"ten".to_vec()),
    ];
    {
        let db = sled::open(dir.path().join("db")).unwrap();
        // Half of it copied by an earlier, interrupted run.
        old(&db, &[(3, 300, b"three"), (4, 400, b"")]);
        drop(EventLog::open(&db, &log_dir(dir.path())).unwrap());
        old(
            &db,
            &[(3, 300, b"three"), (4, 400, b""), (10, 1000, b"ten")],
        );
    }
    let (db, log) = open(dir.path());
    assert!(!db.tree_names().iter().any(|n| n == LOG_NAME.as_bytes()));
    assert_eq!(log.read_after(0, 10).unwrap(), expected);
    assert_eq!((log.len(), log.last_id()), (3, 10));
    assert_eq!(log.first_id().unwrap(), Some(3));
    let new = log.append(b"new").unwrap();
    assert_eq!(new, 1025, "above the old reservation");
    drop((db, log));

    let (_db, log) = open(dir.path());
    assert_eq!(log.len(), 4);
    // The times came along: only the entry stamped 300 is older than 400.
    assert_eq!(log.trim_older_than(400).unwrap(), 1);
    assert_eq!(ids_of(&log.read_after(0, 10).unwrap()), vec![4, 10, new]);
}

#[test]
fn corrupt_old_entries_stop_the_migration_without_losing_them() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path().join("db")).unwrap();
        let tree = db.open_tree(LOG_NAME).unwrap();
        tree.insert(1u64.to_be_bytes(), vec![9, 0]).unwrap();
        assert!(is_corrupt(EventLog::open(&db, &log_dir(dir.path()))));
        assert_eq!(tree.len(), 1);
    }
}

#[test]
fn batches_get_consecutive_ids_and_are_readable() {
    let (dir, log) = temporary_with(TINY);
    assert_eq!(log.append_batch(&[]).unwrap(), 0);
    let first = log.append(b"single").unwrap();
    assert_eq!(log.append_batch(&[]).unwrap(), first);
    let entries: Vec<Vec<u8>> = (0..50u8).map(|i| vec![i; usize::from(i)]).collect();
    let batch: Vec<(u64, &[u8])> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| (i as u64, e.as_slice()))
        .collect();
    let last = log.append_batch(&batch).unwrap();
    assert_eq!(last, first + 50);
    assert_eq!(log.len(), 51);
    let read = log.read_after(first, 100).unwrap();
    let expected: Vec<(u64, Vec<u8>)> = (first + 1..).zip(entries).collect();
    assert_eq!(read, expected);
    // One batch is one write, into one segment, even past the segment size.
    assert_eq!(segment_files(dir.path()).len(), 2);
    // The batch kept its times.
    assert_eq!(
        log.trim_older_than(25).unwrap(),
        0,
        "the single entry is newer"
    );
    assert_eq!(log.trim_before(last).unwrap(), 50);

    let big = vec![0u8; MAX_ENTRY_LEN + 1];
    let refused = log.append_batch(&[(0, b"ok"), (0, &big)]);
    assert!(
        matches!(refused, Err(StorageError::EntryTooLarge { .. })),
        "{refused:?}"
    );
    assert_eq!(log.last_id(), last);
    assert_eq!(log.append(b"after").unwrap(), last + 1);
}

#[test]
fn read_after_respects_its_limit_on_a_large_log() {
    let options = Options {
        segment_bytes: 64 << 10,
        index_every: 1 << 10,
    };
    let (dir, log) = temporary_with(options);
    let n = 20_000u64;
    let entries: Vec<[u8; 8]> = (0..n).map(u64::to_le_bytes).collect();
    for chunk in entries.chunks(1000) {
        let batch: Vec<(u64, &[u8])> = chunk.iter().map(|e| (0, &e[..])).collect();
        log.append_batch(&batch).unwrap();
    }
    assert_eq!(log.len(), n);
    for after in [0, 1, 999, 7_777, 19_899, 19_990] {
        let read = log.read_after(after, 100).unwrap();
        let expected = (n - after).min(100);
        assert_eq!(read.len() as u64, expected);
        assert_eq!(read[0], (after + 1, after.to_le_bytes().to_vec()));
        assert!(read.windows(2).all(|w| w[1].0 == w[0].0 + 1));
    }
    assert_eq!(log.read_after(0, usize::MAX).unwrap().len() as u64, n);
    // Memory: a sparse index, not an entry per record.
    let state = log.state();
    let points: usize = state.segments.iter().map(|s| s.index_len()).sum();
    let bytes: u64 = segment_files(dir.path()).iter().map(|f| file_len(f)).sum();
    assert!(state.segments.len() > 5);
    assert!((points as u64) <= bytes / options.index_every + state.segments.len() as u64);
    assert!((points as u64) < n / 20, "{points} index points");
}

#[test]
fn readers_see_a_consistent_prefix_while_a_writer_appends() {
    readers_race_a_writer(false);
}

#[test]
fn readers_see_whole_entries_in_order_while_a_writer_appends_and_trims() {
    readers_race_a_writer(true);
}

/// A writer appends batches of varied sizes into small segments while one reader follows
/// the log and another keeps reading it from the start (and, with `trim`, a third thread
/// trims it to 2,000 entries).
fn readers_race_a_writer(trim: bool) {
    let options = Options {
        segment_bytes: 4 << 10,
        index_every: 256,
    };
    let (_dir, log) = temporary_with(options);
    let total = 5_000u32;
    // Entry `i` is `i` and then a length that varies with `i`, so torn or misplaced
    // records can't pass as valid. Ids are 1, 2, ...: entry `i` has id `i + 1`.
    let entry = |i: u32| {
        let mut e = i.to_le_bytes().to_vec();
        e.resize(4 + (i as usize * 7) % 61, i as u8);
        e
    };
    let check = move |id: u64, e: &[u8]| {
        let i = u32::from_le_bytes(e[..4].try_into().unwrap());
        assert_eq!(u64::from(i) + 1, id);
        assert_eq!(e, entry(i));
    };
    let done = Arc::new(AtomicBool::new(false));

    let writer = {
        let log = log.clone();
        std::thread::spawn(move || {
            let (mut i, mut size) = (0, 1);
            while i < total {
                let n = size.min(total - i);
                let owned: Vec<Vec<u8>> = (i..i + n).map(entry).collect();
                let batch: Vec<(u64, &[u8])> = owned.iter().map(|e| (0, e.as_slice())).collect();
                let last = log.append_batch(&batch).unwrap();
                assert_eq!(last, u64::from(i + n));
                i += n;
                size = size % 13 + 1;
            }
        })
    };
    let trimmer = trim.then(|| {
        let (log, done) = (log.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Acquire) {
                log.trim_to_len(2_000).unwrap();
                std::thread::yield_now();
            }
        })
    });
    // Follows the log: each entry once, in order, whole; none skipped unless trimmed.
    let follower = {
        let log = log.clone();
        std::thread::spawn(move || {
            let mut after = 0;
            while after < u64::from(total) {
                for (id, e) in log.read_after(after, 37).unwrap() {
                    if !trim {
                        assert_eq!(id, after + 1);
                    }
                    assert!(id > after);
                    check(id, &e);
                    after = id;
                }
            }
        })
    };
    // Reads from the start: a prefix of what was appended (a run of it when trimming).
    let scanner = {
        let (log, done) = (log.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Acquire) {
                let read = log.read_after(0, 500).unwrap();
                if let (false, Some((first, _))) = (trim, read.first()) {
                    assert_eq!(*first, 1);
                }
                for pair in read.windows(2) {
                    if trim {
                        assert!(pair[1].0 > pair[0].0);
                    } else {
                        assert_eq!(pair[1].0, pair[0].0 + 1);
                    }
                }
                for (id, e) in &read {
                    check(*id, e);
                }
            }
        })
    };
    writer.join().unwrap();
    follower.join().unwrap();
    done.store(true, Ordering::Release);
    scanner.join().unwrap();
    if let Some(trimmer) = trimmer {
        trimmer.join().unwrap();
    }
    log.trim_to_len(2_000).unwrap();
    assert_eq!(log.len(), 2_000);
    let kept = log.read_after(0, usize::MAX).unwrap();
    assert_eq!(kept.len(), 2_000);
    assert_eq!(kept[0].0, u64::from(total - 2_000 + 1));
}

#[test]
fn a_temporary_log_has_its_own_directory_removed_with_the_last_handle() {
    let logs: Vec<EventLog> = (0..8).map(|_| temporary()).collect();
    let dirs: std::collections::HashSet<PathBuf> =
        logs.iter().map(|l| l.shared.dir.clone()).collect();
    assert_eq!(dirs.len(), 8);
    let log = logs.into_iter().next().unwrap();
    log.append(b"x").unwrap();
    let dir = log.shared.dir.clone();
    assert!(dir.starts_with(std::env::temp_dir()));
    let clone = log.clone();
    drop(log);
    assert!(dir.exists());
    assert_eq!(clone.read_after(0, 1).unwrap().len(), 1);
    drop(clone);
    assert!(!dir.exists());
    assert!(dirs.iter().all(|d| !d.exists()));
}

#[test]
fn the_store_keeps_the_log_in_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    let store = crate::Store::open(dir.path()).unwrap();
    store.event_log().append(b"hello").unwrap();
    store.flush_blocking().unwrap();
    assert_eq!(segment_files(dir.path()).len(), 1);
    drop(store);

    let temporary = crate::Store::open_temporary().unwrap();
    let dir = temporary.event_log().shared.dir.clone();
    assert!(dir.exists());
    drop(temporary);
    assert!(!dir.exists());

    let threads: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(|| {
                (0..4)
                    .map(|_| {
                        let store = crate::Store::open_temporary().unwrap();
                        store.event_log().append(b"x").unwrap();
                        (store.event_log().shared.dir.clone(), store)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let stores: Vec<_> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let dirs: std::collections::HashSet<_> = stores.iter().map(|(d, _)| d.clone()).collect();
    assert_eq!(dirs.len(), 32);
    assert!(stores.iter().all(|(_, s)| s.event_log().len() == 1));
}

#[test]
fn creating_the_directory_syncs_the_parent_of_each_level_created() {
    let dir = tempfile::tempdir().unwrap();
    let log_dir = dir.path().join("a").join("b");
    assert_eq!(
        create_dir_durably(&log_dir).unwrap(),
        vec![dir.path().to_owned(), dir.path().join("a")]
    );
    assert!(log_dir.is_dir());
    assert!(create_dir_durably(&log_dir).unwrap().is_empty());
}

impl EventLog {
    /// Makes syncing the newest segment fail from now on: its handle becomes a socket,
    /// which refuses fsync (EINVAL).
    pub(crate) fn fail_syncs(&self) {
        let (socket, _) = std::os::unix::net::UnixStream::pair().unwrap();
        let file = fs::File::from(std::os::fd::OwnedFd::from(socket));
        self.state_mut().segments.back_mut().unwrap().file = Arc::new(file);
    }
}
