use super::*;

#[test]
fn corrupt_records_are_errors_not_panics() {
    let (dir, log) = temporary_with(Options::default());
    let a = log.append_at(1, b"first").unwrap();
    log.append_at(2, b"second").unwrap();
    log.append_at(3, b"third").unwrap();
    let [file] = &segment_files(dir.path())[..] else {
        panic!("one segment expected");
    };
    let second = HEADER_LEN + (RECORD_HEADER_LEN + 5) as u64;
    // A bad checksum (entry bytes changed).
    overwrite(file, second + RECORD_HEADER_LEN as u64, b"XX");
    assert!(is_corrupt(log.read_after(0, 10)));
    assert!(is_corrupt(log.read_after(a, 10)));
    assert_eq!(ids_of(&log.read_after(0, 1).unwrap()), vec![a]);
    assert!(is_corrupt(log.trim_older_than(10)));
    // A length running past the end, then one over the maximum.
    overwrite(file, second, &1_000u32.to_le_bytes());
    assert!(is_corrupt(log.read_after(0, 10)));
    overwrite(file, second, &u32::MAX.to_le_bytes());
    assert!(is_corrupt(log.read_after(0, 10)));
    assert!(is_corrupt(log.trim_to_len(1)));
    // The error names the file and the offset.
    let err = log.read_after(a, 10).unwrap_err().to_string();
    assert!(err.contains(&format!("offset {second}")), "{err}");
    assert!(is_corrupt(log.trim_before(a + 1)));
    // A failed trim removes nothing; trimming whole segments needs no reading, so the
    // damaged entries can still be trimmed away.
    assert_eq!(log.len(), 3);
    assert_eq!(log.trim_before(u64::MAX).unwrap(), 3);
    assert!(log.read_after(0, 10).unwrap().is_empty());
}

#[test]
fn unknown_format_versions_and_foreign_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (db, log) = open(dir.path());
    log.append(b"x").unwrap();
    drop((db, log));
    let file = segment_files(dir.path()).remove(0);

    overwrite(&file, 7, &[segment::FORMAT_VERSION + 1]);
    let db = sled::open(dir.path().join("db-2")).unwrap();
    let err = EventLog::open(&db, &log_dir(dir.path())).unwrap_err();
    assert!(
        matches!(
            &err,
            StorageError::EventLogFormatTooNew {
                path,
                found: 2,
                supported: 1
            } if *path == file
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains(&*file.to_string_lossy()), "{err}");
    // Corrupt reasons name the file.
    for (offset, bytes) in [(7, &[0][..]), (0, b"NOTSKEIN")] {
        overwrite(&file, offset, bytes);
        let err = EventLog::open(&db, &log_dir(dir.path())).unwrap_err();
        assert!(matches!(err, StorageError::Corrupt { .. }), "{err:?}");
        assert!(err.to_string().contains(&*file.to_string_lossy()), "{err}");
    }
    // Other files in the directory are none of the log's business.
    fs::remove_file(&file).unwrap();
    fs::write(log_dir(dir.path()).join("notes.txt"), b"hello").unwrap();
    fs::write(log_dir(dir.path()).join("1.seg"), b"short name").unwrap();
    assert!(EventLog::open(&db, &log_dir(dir.path()))
        .unwrap()
        .is_empty());
}

#[test]
fn a_torn_tail_is_cut_off_on_reopen_and_ids_continue_above_it() {
    type Tear = fn(&Path, u64);
    let tears: [(&str, Tear); 4] = [
        ("short record", |f, len| truncate(f, len - 3)),
        ("short header", |f, len| {
            let cut = len - (RECORD_HEADER_LEN + 4) as u64 + 10;
            truncate(f, cut)
        }),
        ("bad checksum", |f, len| overwrite(f, len - 1, b"!")),
        ("zeros", |f, len| {
            overwrite(f, len - (RECORD_HEADER_LEN + 4) as u64, &[0; 28])
        }),
    ];
    for (what, tear) in tears {
        let dir = tempfile::tempdir().unwrap();
        let (db, log) = open(dir.path());
        let kept = log.append(b"kept").unwrap();
        let torn = log.append(b"torn").unwrap();
        drop((db, log));
        let file = segment_files(dir.path()).remove(0);
        let full = file_len(&file);
        tear(&file, full);

        let (db, log) = open(dir.path());
        assert_eq!(
            log.read_after(0, 10).unwrap(),
            vec![(kept, b"kept".to_vec())],
            "{what}"
        );
        assert_eq!(
            file_len(&file),
            full - (RECORD_HEADER_LEN + 4) as u64,
            "{what}"
        );
        let next = log.append(b"next").unwrap();
        assert!(next > torn, "{what}");
        assert_eq!(
            ids_of(&log.read_after(0, 10).unwrap()),
            vec![kept, next],
            "{what}"
        );
        drop((db, log));
        let (_db, log) = open(dir.path());
        assert_eq!(
            ids_of(&log.read_after(0, 10).unwrap()),
            vec![kept, next],
            "{what}"
        );
    }
}

#[test]
fn a_torn_new_segment_is_discarded_on_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (db, log) = open_with(dir.path(), TINY);
    let ids: Vec<u64> = (0..20).map(|_| log.append(&[1; 30]).unwrap()).collect();
    drop((db, log));
    // A crash right after a segment file was created.
    let torn = log_dir(dir.path()).join(segment::file_name(ids[19] + 1));
    for torn_bytes in [&b"SKE"[..], &[0; 100]] {
        fs::write(&torn, torn_bytes).unwrap();
        let (db, log) = open_with(dir.path(), TINY);
        assert!(!torn.exists());
        assert_eq!(ids_of(&log.read_after(0, 100).unwrap()), ids);
        drop((db, log));
    }
    let (_db, log) = open_with(dir.path(), TINY);
    assert!(log.append(b"more").unwrap() > ids[19]);
}

#[test]
fn damage_inside_an_older_segment_fails_reads_until_trimmed_away() {
    let dir = tempfile::tempdir().unwrap();
    let (ids, files) = forty_tiny_entries(dir.path());
    // The second record of the second segment.
    let offset = HEADER_LEN + (RECORD_HEADER_LEN + 30) as u64 + 5;
    overwrite(&files[1], offset, b"garbage");
    let second_segment_len = file_len(&files[1]);

    let (_db, log) = open_with(dir.path(), TINY);
    // Nothing was truncated: only the newest segment's tail can be torn.
    assert_eq!(file_len(&files[1]), second_segment_len);
    assert!(is_corrupt(log.read_after(0, 100)));
    let per_segment = 40 / files.len();
    assert_eq!(log.read_after(0, per_segment).unwrap().len(), per_segment);
    // Past the damaged segment reads work.
    let third = ids[2 * per_segment];
    assert_eq!(
        log.read_after(third - 1, 100).unwrap().len(),
        40 - 2 * per_segment
    );
    // The tail's entries may be as new as the next segment's first (stamped
    // `third_at_ns`): a trim to that age stops at the damage, for good across a reopen.
    let third_at_ns = (2 * per_segment) as u64;
    assert_eq!(
        log.trim_older_than(third_at_ns).unwrap(),
        (per_segment + 1) as u64
    );
    assert!(files[1].exists());
    drop((_db, log));
    let (_db, log) = open_with(dir.path(), TINY);
    assert!(is_corrupt(log.read_after(0, 100)));
    assert!(is_corrupt(log.first_id()));
    assert_eq!(log.len(), (40 - 2 * per_segment) as u64);
    // Trimming by age past the next segment's first entry drops the unreadable tail.
    assert_eq!(log.trim_older_than(third_at_ns + 1).unwrap(), 1);
    assert_eq!(
        ids_of(&log.read_after(0, 100).unwrap()),
        ids[2 * per_segment + 1..]
    );
    assert_eq!(log.first_id().unwrap(), Some(ids[2 * per_segment + 1]));
    assert!(!files[1].exists());
}

#[test]
fn reads_do_not_skip_a_damaged_segment_tail() {
    let dir = tempfile::tempdir().unwrap();
    let (ids, files) = forty_tiny_entries(dir.path());
    let per_segment = 40 / files.len();
    overwrite(
        &files[1],
        HEADER_LEN + (RECORD_HEADER_LEN + 30) as u64 + 5,
        b"garbage",
    );
    let (_db, log) = open_with(dir.path(), TINY);
    let last_readable = ids[per_segment];
    assert!(is_corrupt(log.read_after(last_readable, 100)));
    // Any start inside the tail fails; from the next segment's first id on, reads work.
    let third = ids[2 * per_segment];
    assert!(is_corrupt(log.read_after(third - 2, 100)));
    assert_eq!(
        ids_of(&log.read_after(third - 1, 100).unwrap()),
        ids[2 * per_segment..]
    );
    assert_eq!(log.first_id().unwrap(), Some(ids[0]));
}

#[test]
fn a_noop_trim_keeps_a_damaged_head_segment() {
    let dir = tempfile::tempdir().unwrap();
    let (_, files) = forty_tiny_entries(dir.path());
    overwrite(&files[0], HEADER_LEN + RECORD_HEADER_LEN as u64, b"garbage");
    let (_db, log) = open_with(dir.path(), TINY);
    let read = log.read_after(0, 100);
    let len_before = log.len();
    assert_eq!(log.trim_to_len(1_000_000).unwrap(), 0);
    assert_eq!(log.len(), len_before);
    assert!(files[0].exists());
    assert!(is_corrupt(read));
}

#[test]
fn trims_pass_a_damaged_head_segment_only_when_they_provably_reach_past_it() {
    let dir = tempfile::tempdir().unwrap();
    let (ids, files) = forty_tiny_entries(dir.path());
    let per_segment = 40 / files.len();
    // The first record of the first segment: nothing of it is readable.
    overwrite(&files[0], HEADER_LEN + RECORD_HEADER_LEN as u64, b"garbage");

    let (db, log) = open_with(dir.path(), TINY);
    let second = ids[per_segment];
    assert_eq!(log.len(), (40 - per_segment) as u64);
    assert!(is_corrupt(log.read_after(0, 100)));
    assert!(is_corrupt(log.first_id()));
    // Each of these may leave entries of the tail that it was not asked to remove (ids
    // up to `second - 1`, stamped up to the next segment's first entry).
    assert_eq!(log.trim_before(second - 1).unwrap(), 0);
    assert_eq!(log.trim_older_than(per_segment as u64).unwrap(), 0);
    assert_eq!(log.trim_to_len(log.len()).unwrap(), 0);
    drop((db, log));
    let (db, log) = open_with(dir.path(), TINY);
    assert!(files[0].exists());
    assert!(is_corrupt(log.read_after(0, 100)));
    assert!(is_corrupt(log.first_id()));
    // Up to the next segment's name, past every id the tail can hold: the whole damaged
    // segment goes (its tail uncounted).
    assert_eq!(log.trim_before(second).unwrap(), 0);
    assert!(!files[0].exists());
    assert_eq!(ids_of(&log.read_after(0, 100).unwrap()), ids[per_segment..]);
    assert_eq!(log.first_id().unwrap(), Some(second));
    drop((db, log));

    // By length, one entry more than the readable ones; by age, past the next segment's
    // first entry. On a log damaged the same way.
    for by_len in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let (_, files) = forty_tiny_entries(dir.path());
        overwrite(&files[0], HEADER_LEN + RECORD_HEADER_LEN as u64, b"garbage");
        let (_db, log) = open_with(dir.path(), TINY);
        let removed = if by_len {
            log.trim_to_len(log.len() - 1).unwrap()
        } else {
            log.trim_older_than(per_segment as u64 + 1).unwrap()
        };
        assert_eq!(removed, 1, "by length: {by_len}");
        assert!(!files[0].exists(), "by length: {by_len}");
        assert_eq!(
            ids_of(&log.read_after(0, 100).unwrap()),
            ids[per_segment + 1..],
            "by length: {by_len}"
        );
    }
}

#[test]
fn damage_in_synced_data_of_the_newest_segment_is_kept_not_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let (db, log) = open(dir.path());
    let ids: Vec<u64> = (0..100u64)
        .map(|i| log.append_at(i, &[i as u8; 20]).unwrap())
        .collect();
    log.sync().unwrap();
    drop((db, log));
    let [file] = &segment_files(dir.path())[..] else {
        panic!("one segment expected");
    };
    let len = file_len(file);
    let record = (RECORD_HEADER_LEN + 20) as u64;
    // One flipped byte in the entry of record 10.
    overwrite(
        file,
        HEADER_LEN + 10 * record + RECORD_HEADER_LEN as u64,
        b"!",
    );

    let (db, log) = open(dir.path());
    assert_eq!(file_len(file), len, "synced records were cut off");
    assert!(is_corrupt(log.read_after(0, 1000)));
    let first_ten: Vec<(u64, Vec<u8>)> = (0..10).map(|i| (ids[i], vec![i as u8; 20])).collect();
    assert_eq!(log.read_after(0, 10).unwrap(), first_ten);
    // Anything after the readable records may be in the damaged tail.
    assert!(is_corrupt(log.read_after(ids[9], 1000)));
    assert!(is_corrupt(log.read_after(ids[99], 1000)));
    // Appends go to a new segment, readable on their own; the damage stays in the way.
    let new = log.append(b"new").unwrap();
    assert!(new > ids[99]);
    assert_eq!(segment_files(dir.path()).len(), 2);
    assert_eq!(ids_of(&log.read_after(new - 1, 10).unwrap()), vec![new]);
    assert!(is_corrupt(log.read_after(ids[9], 1000)));
    log.sync().unwrap();
    drop((db, log));

    let (_db, log) = open(dir.path());
    assert_eq!(file_len(file), len);
    assert!(is_corrupt(log.read_after(0, 1000)));
    assert_eq!(ids_of(&log.read_after(new - 1, 10).unwrap()), vec![new]);
    assert_eq!(log.len(), 11);
}

#[test]
fn a_torn_tail_past_the_last_sync_is_still_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let (db, log) = open(dir.path());
    let kept: Vec<u64> = (0..10).map(|_| log.append(b"kept").unwrap()).collect();
    log.sync().unwrap();
    let [file] = &segment_files(dir.path())[..] else {
        panic!("one segment expected");
    };
    let synced = file_len(file);
    log.append(b"torn").unwrap();
    drop((db, log));
    overwrite(file, file_len(file) - 1, b"!");

    let (_db, log) = open(dir.path());
    assert_eq!(ids_of(&log.read_after(0, 100).unwrap()), kept);
    assert_eq!(file_len(file), synced);
}

#[test]
fn an_append_after_damage_does_not_move_the_head_past_it() {
    let dir = tempfile::tempdir().unwrap();
    let (db, log) = open(dir.path());
    for _ in 0..5 {
        log.append(b"synced").unwrap();
    }
    log.sync().unwrap();
    drop((db, log));
    let file = segment_files(dir.path()).remove(0);
    overwrite(&file, HEADER_LEN + RECORD_HEADER_LEN as u64, b"!");

    let (db, log) = open(dir.path());
    assert!(log.is_empty(), "no readable entry");
    assert!(is_corrupt(log.read_after(0, 10)));
    assert!(is_corrupt(log.first_id()));
    let new = log.append(b"new").unwrap();
    for _ in 0..2 {
        assert!(is_corrupt(log.read_after(0, 10)));
        assert!(is_corrupt(log.first_id()));
        assert_eq!(log.trim_before(new - 1).unwrap(), 0);
        assert_eq!(log.trim_to_len(1).unwrap(), 0);
        assert_eq!(ids_of(&log.read_after(new - 1, 10).unwrap()), vec![new]);
        assert!(file.exists());
    }
    log.sync().unwrap();
    drop((db, log));
    let (_db, log) = open(dir.path());
    assert!(is_corrupt(log.read_after(0, 10)));
    assert_eq!(ids_of(&log.read_after(new - 1, 10).unwrap()), vec![new]);
}

#[test]
fn ids_never_wrap_or_repeat_at_the_end_of_the_id_space() {
    let dir = tempfile::tempdir().unwrap();
    // A corrupt reservation, one short of the last id.
    seed_reserved(dir.path(), u64::MAX - 1);
    let (db, log) = open(dir.path());
    let results: Vec<Result<u64>> = (0..3).map(|_| log.append(b"x")).collect();
    let ids: Vec<u64> = results
        .iter()
        .filter_map(|r| r.as_ref().ok().copied())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{results:?}");
    assert_eq!(ids, vec![u64::MAX], "{results:?}");
    assert!(
        matches!(results[2], Err(StorageError::IdsExhausted)),
        "{results:?}"
    );
    assert!(matches!(
        log.append_batch(&[(0, b"a"), (0, b"b")]),
        Err(StorageError::IdsExhausted)
    ));
    assert_eq!(log.last_id(), u64::MAX);
    assert_eq!(ids_of(&log.read_after(0, 10).unwrap()), vec![u64::MAX]);
    drop((db, log));

    let (_db, log) = open(dir.path());
    assert!(matches!(log.append(b"y"), Err(StorageError::IdsExhausted)));
    assert_eq!(ids_of(&log.read_after(0, 10).unwrap()), vec![u64::MAX]);

    // A batch that would cross the end is refused whole.
    let dir = tempfile::tempdir().unwrap();
    seed_reserved(dir.path(), u64::MAX - 2);
    let (_db, log) = open(dir.path());
    let batch: [(u64, &[u8]); 3] = [(0, b"a"), (0, b"b"), (0, b"c")];
    assert!(matches!(
        log.append_batch(&batch),
        Err(StorageError::IdsExhausted)
    ));
    assert!(log.is_empty());
    assert_eq!(log.append_batch(&batch[..2]).unwrap(), u64::MAX);
}

#[test]
fn a_watermark_that_could_not_be_stored_is_stored_by_the_next_trim() {
    let dir = tempfile::tempdir().unwrap();
    let (db, mut log) = open_with(dir.path(), TINY);
    let ids: Vec<u64> = (0..40u64)
        .map(|i| log.append_at(i, &[i as u8; 30]).unwrap())
        .collect();
    let files = segment_files(dir.path());
    let per_segment = 40 / files.len();
    // Writes to a dropped tree fail: the watermark cannot be stored.
    db.drop_tree(TREE_LOG_META).unwrap();
    let cut = ids[5 * per_segment];
    assert!(log.trim_before(cut).is_err());
    // What was removed stays removed, but no file goes while the watermark is unstored...
    assert_eq!(log.read_after(0, 1).unwrap()[0].0, cut);
    assert_eq!(segment_files(dir.path()), files);
    // ...and a trim with nothing left to remove still tries to store it.
    assert!(log.trim_before(cut).is_err());
    assert_eq!(segment_files(dir.path()), files);

    Arc::get_mut(&mut log.shared).unwrap().meta = db.open_tree(TREE_LOG_META).unwrap();
    assert_eq!(log.trim_before(cut).unwrap(), 0);
    assert_eq!(segment_files(dir.path())[..], files[5..]);
    drop((db, log));
    let (_db, log) = open_with(dir.path(), TINY);
    assert_eq!(log.first_id().unwrap(), Some(cut));
    assert_eq!(
        ids_of(&log.read_after(0, 100).unwrap()),
        ids[5 * per_segment..]
    );
}

/// Appends 40 entries of 30 bytes, stamped 0 to 39, to a [`TINY`] log in `dir`, then
/// closes it. Returns their ids and the segment files.
fn forty_tiny_entries(dir: &Path) -> (Vec<u64>, Vec<PathBuf>) {
    let (db, log) = open_with(dir, TINY);
    let ids: Vec<u64> = (0..40u64)
        .map(|i| log.append_at(i, &[i as u8; 30]).unwrap())
        .collect();
    drop((db, log));
    (ids, segment_files(dir))
}

/// Stores `reserved` as the id reservation of the log in `dir`, before it is opened.
fn seed_reserved(dir: &Path, reserved: u64) {
    let db = sled::open(dir.join("db")).unwrap();
    db.open_tree(TREE_LOG_META)
        .unwrap()
        .insert(RESERVED_KEY, &reserved.to_be_bytes())
        .unwrap();
    db.flush().unwrap();
}
