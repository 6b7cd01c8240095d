use super::*;
use crate::store::rows::{AlertRow, EDGE_TABLE};

pub(super) fn row(i: u64) -> AnyRow {
    AnyRow::Alert(AlertRow {
        ts: i as i64,
        node: "n".into(),
        state: "firing".into(),
        rule: "r".into(),
        severity: "critical".into(),
        dedup_key: format!("k{i}"),
        summary: "s".into(),
        first_move: "m".into(),
        fired_at: 0,
        evidence: "{}".into(),
    })
}

/// The table of [`row`]'s rows.
pub(super) const ALERTS: usize = 7;

fn varuint(data: &[u8], at: &mut usize) -> usize {
    let (mut v, mut shift) = (0usize, 0);
    loop {
        let b = data[*at];
        *at += 1;
        v |= usize::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return v;
        }
        shift += 7;
    }
}

/// The `dedup_key` of every row of an alerts batch, read out of its Native blocks (a decoder
/// of its own: the alerts table has only strings and 8-byte timestamps).
pub(super) fn keys(path: &Path) -> Vec<String> {
    let (f, data) = read_frames(path, ALERTS).expect("read");
    let mut keys = Vec::new();
    for block in f.into_body_pooled(ALERTS, data, &BufferPool::default()) {
        let mut at = 0;
        let cols = varuint(&block, &mut at);
        let rows = varuint(&block, &mut at);
        for _ in 0..cols {
            let n = varuint(&block, &mut at);
            let name = std::str::from_utf8(&block[at..at + n])
                .expect("name")
                .to_owned();
            at += n;
            let n = varuint(&block, &mut at);
            let ty = &block[at..at + n];
            at += n;
            for _ in 0..rows {
                if ty == b"String" {
                    let n = varuint(&block, &mut at);
                    if name == "dedup_key" {
                        keys.push(String::from_utf8(block[at..at + n].to_vec()).expect("utf-8"));
                    }
                    at += n;
                } else {
                    assert_eq!(ty, b"DateTime64(9)");
                    at += 8;
                }
            }
        }
        assert_eq!(at, block.len(), "the block is read to its end");
    }
    keys
}

/// Which blocks of a batch file have their index.
fn f_indexes(data: &[u8]) -> Vec<bool> {
    let f = parse_frames(data, EDGE_TABLE).expect("frames");
    f.indexes.iter().map(Option::is_some).collect()
}

/// The batch file with every index frame's kind changed to one no version knows (its CRC
/// made good again): what a version before index frames reads.
fn with_index_frames_unknown(data: &[u8]) -> Vec<u8> {
    let mut out = data.to_vec();
    let seed = frames::seed_of(&out[..HEADER]);
    let mut at = HEADER;
    while at + FRAME_HEADER <= out.len() {
        let len = u32::from_le_bytes([out[at], out[at + 1], out[at + 2], out[at + 3]]) as usize;
        if len == 0 {
            break; // the end mark
        }
        let payload = at + FRAME_HEADER..at + FRAME_HEADER + len;
        if out[payload.start] == FRAME_INDEX {
            out[payload.start] = 0x7f;
            let crc = frames::frame_crc(Some(seed), &out[payload.clone()]);
            out[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
        }
        at = payload.end;
    }
    out
}

pub(super) fn limits() -> SpoolLimits {
    SpoolLimits {
        batch_rows: 10,
        batch_bytes: 1 << 20,
        batch_max_age: Duration::from_secs(3600),
        max_bytes: 1 << 30,
        fsync: false,
    }
}

#[test]
fn batches_seal_by_rows_and_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Spool::open(dir.path(), limits()).expect("open");
    for i in 0..25 {
        s.push(row(i)).expect("push");
    }
    s.flush().expect("flush");
    let shared = s.shared();
    assert_eq!(shared.backlog().0, 2, "two full batches sealed");
    let b = shared.next_batch().expect("batch");
    let token = shared.token(&b);
    shared.release(&b);
    // "Crash": drop without sealing; the 5 rows of the open batch are on disk.
    drop(s);
    let s = Spool::open(dir.path(), limits()).expect("reopen");
    let shared = s.shared();
    assert_eq!(shared.backlog().0, 3);
    assert_eq!(shared.backlog_rows(), 25);
    assert_eq!(s.stats().recovered_rows, 5);
    let first = shared.next_batch().expect("batch");
    assert_eq!(
        shared.token(&first),
        token,
        "tokens are stable across restarts"
    );
    let (f, _) = read_frames(&first.path, ALERTS).expect("read");
    assert_eq!(f.rows, 10);
    assert_eq!(f.cut, 0);
    assert_eq!(
        keys(&first.path),
        (0..10).map(|i| format!("k{i}")).collect::<Vec<_>>()
    );
    shared.done(&first).expect("done");
    assert!(!first.path.exists());
    assert_eq!(shared.backlog().0, 2);
}

#[test]
fn one_writer_per_spool() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _first = Spool::open(dir.path(), limits()).expect("open");
    let err = Spool::open(dir.path(), limits())
        .err()
        .expect("second open fails");
    assert!(
        err.to_string().contains("in use by another edgewatch"),
        "{err}"
    );
}

#[test]
fn a_closed_spool_opens_again_while_another_thread_forks_children() {
    // A child forked by another thread holds a copy of every descriptor until it execs, the
    // lock file's too (close-on-exec or not): closing the file alone would leave the lock
    // held, and the next open here found the directory "in use" (a rare test flake, and
    // ~4% of reopens in this loop).
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    let dir = tempfile::tempdir().expect("tempdir");
    let stop = Arc::new(AtomicBool::new(false));
    let forks = Arc::new(AtomicU32::new(0));
    let forker = {
        let (stop, forks) = (Arc::clone(&stop), Arc::clone(&forks));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::process::Command::new("true")
                    .status()
                    .expect("run true");
                forks.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    // At least 500 opens, and at least 200 children forked meanwhile.
    let (mut opens, mut failed) = (0, 0);
    let start = forks.load(Ordering::Relaxed);
    while (opens < 500 || forks.load(Ordering::Relaxed) < start + 200) && !forker.is_finished() {
        match Spool::open(dir.path(), limits()) {
            Ok(s) => drop(s),
            Err(_) => failed += 1,
        }
        opens += 1;
    }
    stop.store(true, Ordering::Relaxed);
    forker.join().expect("forker");
    assert!(forks.load(Ordering::Relaxed) >= start + 200);
    assert_eq!(failed, 0, "of {opens} opens");
}

#[test]
fn a_torn_last_frame_is_cut_on_recovery() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Spool::open(dir.path(), limits()).expect("open");
    for i in 0..3 {
        s.push(row(i)).expect("push");
    }
    s.flush().expect("flush");
    drop(s);
    let open: PathBuf = fs::read_dir(dir.path())
        .expect("dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "open"))
        .expect("open batch");
    // Part of a frame, as if the process died inside a write: a write starts at the end mark
    // the last one left.
    let f = OpenOptions::new().write(true).open(&open).expect("open");
    let end = f.metadata().expect("len").len() - FRAME_HEADER as u64;
    std::os::unix::fs::FileExt::write_all_at(&f, &[40, 0, 0, 0, 9, 9, 9, 9, 1, 2, 3, 4], end)
        .expect("write");
    drop(f);
    let s = Spool::open(dir.path(), limits()).expect("reopen");
    assert_eq!(s.stats().recovered_rows, 3);
    assert_eq!(s.stats().truncated_bytes, 12);
    let b = s.shared().next_batch().expect("batch");
    assert_eq!(read_frames(&b.path, ALERTS).expect("read").0.rows, 3);
    assert_eq!(keys(&b.path), ["k0", "k1", "k2"]);
}

#[test]
fn a_full_spool_drops_the_oldest_and_counts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut l = limits();
    l.max_bytes = 2000;
    let mut s = Spool::open(dir.path(), l).expect("open");
    for i in 0..200 {
        s.push(row(i)).expect("push");
    }
    s.flush().expect("flush");
    let st = s.stats();
    assert!(st.dropped_rows > 0, "{st:?}");
    assert_eq!(st.dropped_rows % 10, 0, "whole batches go");
    let shared = s.shared();
    assert!(shared.backlog().1 <= 2000);
    assert_eq!(st.accepted_rows, 200);
    assert_eq!(
        shared.backlog_rows() + st.dropped_rows,
        200,
        "kept + dropped = all"
    );
    // The oldest went: what is left is the newest.
    let b = shared.next_batch().expect("batch");
    assert_eq!(keys(&b.path)[0], format!("k{}", st.dropped_rows));
}

#[test]
fn rejected_batches_are_set_aside() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Spool::open(dir.path(), limits()).expect("open");
    for i in 0..10 {
        s.push(row(i)).expect("push");
    }
    let shared = s.shared();
    let b = shared.next_batch().expect("batch");
    let to = shared.reject(&b).expect("reject");
    assert!(to.starts_with(dir.path().join("rejected")) && to.exists());
    assert!(shared.next_batch().is_none());
    drop(s);
    let s = Spool::open(dir.path(), limits()).expect("reopen");
    assert!(
        s.shared().next_batch().is_none(),
        "rejected batches are not resent"
    );
}

#[test]
fn garbage_in_the_spool_is_not_a_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("0000000000000007-alerts.batch"), b"garbage").expect("write");
    fs::write(
        dir.path().join("0000000000000008-alerts.open"),
        b"EWSPOOL1\xff\xff",
    )
    .expect("write");
    let mut s1 = Spool::open(dir.path(), limits()).expect("open");
    let t1 = {
        for i in 0..10 {
            s1.push(row(i)).expect("push");
        }
        let sh = s1.shared();
        let b = sh.next_batch().expect("batch");
        let t = sh.token(&b);
        sh.done(&b).expect("done");
        t
    };
    drop(s1);
    let mut s2 = Spool::open(dir.path(), limits()).expect("open");
    for i in 0..10 {
        s2.push(row(i)).expect("push");
    }
    let sh = s2.shared();
    let b = sh.next_batch().expect("batch");
    assert_ne!(sh.token(&b), t1, "a new run never reuses a token");
    sh.done(&b).expect("done");
    drop(s2);
    let s = Spool::open(dir.path(), limits()).expect("open");
    assert!(s.shared().next_batch().is_none());
    assert!(dir
        .path()
        .join("rejected/0000000000000007-alerts.batch")
        .exists());
}

#[test]
fn a_corrupt_frame_in_the_middle_is_skipped_to_the_next_and_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Spool::open(dir.path(), limits()).expect("open");
    // A frame per row: each turn's rows are one block.
    for i in 0..10 {
        s.push(row(i)).expect("push");
        s.flush().expect("flush");
    }
    let b = s.shared().next_batch().expect("a sealed batch of 10");
    drop(s);
    let mut data = fs::read(&b.path).expect("read");
    // A bit flip inside the fifth block frame's payload (each block is followed by its index).
    let mut at = HEADER;
    for _ in 0..8 {
        let len = u32::from_le_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]);
        at += FRAME_HEADER + len as usize;
    }
    data[at + FRAME_HEADER + 2] ^= 0x40;
    fs::write(&b.path, &data).expect("write");
    let (f, _) = read_frames(&b.path, ALERTS).expect("readable");
    assert_eq!(f.rows, 9, "every frame but the bad one");
    assert_eq!(f.corrupt_regions, 1);
    assert!(f.corrupt_bytes > 0);
    assert_eq!(f.cut, 0);
    let kept = keys(&b.path);
    assert_eq!(kept.len(), 9);
    assert!(!kept.contains(&"k4".to_owned()) && kept.contains(&"k5".to_owned()));
    // Reopening counts it too.
    let s = Spool::open(dir.path(), limits()).expect("reopen");
    assert_eq!(s.stats().corrupt_regions, 1);
}

#[test]
fn rejected_batches_count_against_the_bound_and_go_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut l = limits();
    let mut s = Spool::open(dir.path(), l).expect("open");
    for i in 0..10 {
        s.push(row(i)).expect("push");
    }
    let shared = s.shared();
    let b = shared.next_batch().expect("batch");
    let rejected = shared.reject(&b).expect("reject");
    assert!(rejected.exists());
    let batch_bytes = b.bytes;
    drop(s);
    // A bound that holds the rejected batch and one more, not two: the rejected one
    // goes first.
    l.max_bytes = batch_bytes * 2 + batch_bytes / 2;
    let mut s = Spool::open(dir.path(), l).expect("reopen");
    for i in 10..30 {
        s.push(row(i)).expect("push");
    }
    assert!(!rejected.exists(), "the rejected batch was deleted first");
    assert_eq!(s.stats().dropped_rejected, 1);
    assert_eq!(s.stats().dropped_batches, 0, "no sealed batch was needed");
}

/// A small tmpfs the test mounts (root): writes fail with ENOSPC for real.
struct SmallFs(tempfile::TempDir);

impl SmallFs {
    fn new(bytes: u64) -> Option<Self> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "mount tmpfs (the tests run as root)");
        Some(Self(dir))
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.0.path())
            .status();
    }
}

#[test]
fn a_full_disk_rolls_a_write_back_and_leaves_no_torn_frame() {
    let Some(fs_) = SmallFs::new(256 * 1024) else {
        panic!("this test mounts a tmpfs: run the tests as root (cargo xtask test)");
    };
    let dir = fs_.0.path().join("spool");
    let mut l = limits();
    l.batch_rows = 1_000_000;
    let mut s = Spool::open(&dir, l).expect("open");
    // A filler takes most of the space.
    let filler = fs_.0.path().join("filler");
    fs::write(&filler, vec![0u8; 200 * 1024]).expect("filler");
    let mut failed = false;
    let mut pushed = 0u64;
    for i in 0..20_000u64 {
        pushed += 1;
        if s.push(row(i)).is_err() || s.flush().is_err() {
            failed = true;
            break;
        }
    }
    assert!(failed, "the disk filled up");
    assert!(s.stats().write_rollbacks >= 1);
    // Space comes back; the buffered rows go out with the next flush.
    fs::remove_file(&filler).expect("free");
    s.flush().expect("flush after space came back");
    s.seal_all().expect("seal");
    let dropped = s.stats().dropped_rows;
    let b = s.shared().next_batch().expect("batch");
    let (f, _) = read_frames(&b.path, ALERTS).expect("read");
    assert_eq!(f.corrupt_regions, 0, "no torn frame in the middle");
    assert_eq!(f.cut, 0);
    // Every row pushed is in the batch, or was dropped and counted: none lost silently.
    assert_eq!(f.rows + dropped, pushed);
    assert_eq!(keys(&b.path).len() as u64, f.rows);
}

#[test]
fn a_batch_is_sent_as_the_blocks_its_file_holds_with_tail_marks_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Spool::open(dir.path(), limits()).expect("open");
    let edge = |i: u64| {
        AnyRow::Edge(crate::store::rows::EdgeRow {
            ts: i as i64,
            node: "n".into(),
            format: "json".into(),
            request_id: format!("r{i}"),
            client: "203.0.113.7".into(),
            host: "h".into(),
            method: "GET".into(),
            path: "/".into(),
            status: 200,
            request_time_ns: Some(i),
            upstream_addr: String::new(),
            upstream_connect_ns: None,
            upstream_header_ns: None,
            upstream_response_ns: None,
            bytes_sent: Some(1),
        })
    };
    let mark = |offset: u64| {
        AnyRow::TailMark(crate::store::rows::TailMarkRow {
            path: "/var/log/access.log".into(),
            dev: 1,
            inode: 2,
            offset,
            head_len: 64,
            head_crc: 0xdead_beef,
        })
    };
    s.push(edge(0)).expect("push");
    s.push(edge(1)).expect("push");
    s.push(mark(100)).expect("mark");
    s.push(edge(2)).expect("push");
    s.flush().expect("flush");
    s.push(edge(3)).expect("push");
    s.seal_all().expect("seal");
    let b = s.shared().next_batch().expect("batch");
    assert_eq!(b.rows, 4, "marks are no rows");
    let data = fs::read(&b.path).expect("read");
    let f = parse_frames(&data, EDGE_TABLE).expect("frames");
    // The rows before the mark, the mark, the rest of the turn, the next turn.
    assert_eq!(f.blocks.len(), 3);
    assert_eq!(f.marks.len(), 1);
    assert!(f.blocks[0].end < f.blocks[1].start);
    let rows: Vec<u64> = f
        .blocks
        .iter()
        .map(|r| crate::store::rows::block_rows(EDGE_TABLE, &data[r.clone()]).expect("a block"))
        .collect();
    assert_eq!(rows, [2, 1, 1]);
    // What is sent is one block of every row, in order: the blocks' columns joined, which is
    // what writing all the rows at once would have made.
    let body = f.into_body_pooled(EDGE_TABLE, data.clone(), &BufferPool::default());
    let mut cols = Columns::new(EDGE_TABLE);
    let mut want = Vec::new();
    for i in 0..4 {
        cols.push(&edge(i));
    }
    cols.write_block(&mut want);
    assert_eq!(body.len(), 1);
    assert_eq!(&body[0][..], &want[..]);
    // Each block has its index, which the merge above went by.
    assert_eq!(f_indexes(&data), [true, true, true]);
    // A version that does not know index frames (here: their kind made unknown) skips them
    // like damage and keeps every row; merged by walking the values, the same block.
    let old = with_index_frames_unknown(&data);
    let f = parse_frames(&old, EDGE_TABLE).expect("frames");
    assert_eq!((f.rows, f.blocks.len(), f.marks.len()), (4, 3, 1));
    assert!(f.corrupt_regions + u64::from(f.cut > 0) >= 3, "{f:?}");
    assert_eq!(f.indexes, [None, None, None]);
    let body = f.into_body_pooled(EDGE_TABLE, old.clone(), &BufferPool::default());
    assert_eq!(&body[0][..], &want[..]);
    // The mark is found again by a new run.
    drop(s);
    let s = Spool::open(dir.path(), limits()).expect("reopen");
    assert_eq!(
        s.tail_mark("/var/log/access.log")
            .map(|m| (m.offset, m.head_len, m.head_crc)),
        Some((100, 64, 0xdead_beef))
    );
}

#[test]
fn a_batch_an_older_version_spooled_as_rows_is_sent_as_one_block() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The first format: one postcard row per frame.
    let mut data = MAGIC_V1.to_vec();
    data.extend_from_slice(&[b'a'; RUN_ID]);
    for i in 0..3 {
        let payload = postcard::to_allocvec(&row(i)).expect("encode");
        data.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        data.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        data.extend_from_slice(&payload);
    }
    let path = dir.path().join("0000000000000003-alerts.batch");
    fs::write(&path, &data).expect("write");
    let s = Spool::open(dir.path(), limits()).expect("open");
    let b = s.shared().next_batch().expect("the old batch is sent");
    assert_eq!((b.rows, b.run.as_str()), (3, "a".repeat(RUN_ID).as_str()));
    assert_eq!(keys(&b.path), ["k0", "k1", "k2"]);
    // A new run's batches come after it.
    drop(s);
    let mut s = Spool::open(dir.path(), limits()).expect("reopen");
    s.push(row(9)).expect("push");
    s.seal_all().expect("seal");
    let shared = s.shared();
    let old = shared.next_batch().expect("old");
    let new = shared.next_batch().expect("new");
    assert!(new.seq > old.seq);
}

/// A batch of the default size, passed by the rows the byte check may let through, is read
/// back and merged in buffers the pool keeps: a busy sidecar does not map (and the kernel
/// zero) fresh memory for every batch.
#[test]
fn default_batches_fit_the_senders_kept_buffers() {
    let default = usize::try_from(crate::store::config::DEFAULT_BATCH_BYTES).expect("fits");
    // The most a batch can pass its bound by: 31 rows of 64 KiB heads.
    let batch = default + usize::try_from(BYTES_CHECK_ROWS - 1).expect("fits") * (64 << 10);
    let pool = BufferPool::default();
    for _ in 0..2 {
        let read = pool.take(batch);
        let merged = pool.take(batch);
        assert!(read.capacity() >= batch && merged.capacity() >= batch);
        let at = (read.as_ptr(), merged.as_ptr());
        pool.give(read);
        pool.give(merged);
        let again = (pool.take(batch), pool.take(batch));
        let back = (again.0.as_ptr(), again.1.as_ptr());
        assert!(
            back == at || back == (at.1, at.0),
            "both buffers kept and reused"
        );
        pool.give(again.0);
        pool.give(again.1);
    }
    assert!(default <= KEPT_BUFFER_BYTES);
}

#[test]
fn a_batchs_body_from_pooled_buffers_is_its_body() {
    // Kept buffers that held other bytes (a batch's body is the body, merged into one block).
    let pool = BufferPool::default();
    for _ in 0..2 {
        pool.give(vec![0xAA; 4096]);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Spool::open(dir.path(), limits()).expect("open");
    for i in 0..10 {
        s.push(row(i)).expect("push");
        s.flush().expect("flush");
    }
    let b = s.shared().next_batch().expect("batch");
    let kept = pool.take(usize::try_from(b.bytes).expect("fits"));
    assert_eq!(kept.capacity(), 4096, "a kept one");
    let (f, data) = read_frames_into(&b.path, ALERTS, kept).expect("read");
    let (g, data2) = read_frames(&b.path, ALERTS).expect("read");
    assert_eq!(
        f.into_body_pooled(ALERTS, data, &pool),
        g.into_body_pooled(ALERTS, data2, &BufferPool::default())
    );
}

/// A batch is sealed by its bytes too, checked every [`BYTES_CHECK_ROWS`] rows: it passes
/// `batch_bytes` by fewer than that many rows, and keeps every row.
#[test]
fn batches_seal_by_bytes_within_the_check_interval() {
    let dir = tempfile::tempdir().expect("tempdir");
    let l = SpoolLimits {
        batch_rows: 1_000_000,
        batch_bytes: 8192,
        ..limits()
    };
    let mut s = Spool::open(dir.path(), l).expect("open");
    let shared = s.shared();
    // The rows (about 60 bytes each in columns) until the first seal.
    let mut pushed = 0;
    while shared.backlog().0 == 0 {
        s.push(row(pushed)).expect("push");
        pushed += 1;
        assert!(pushed < 1000, "never sealed by bytes");
    }
    let b = shared.next_batch().expect("batch");
    assert_eq!(
        b.rows, pushed,
        "the row that crossed the check sealed the batch"
    );
    assert_eq!(b.rows % BYTES_CHECK_ROWS, 0, "sealed on a check");
    // Under the bound one check earlier, over it at this one: at most a check's rows past it.
    let per_row = b.bytes / b.rows;
    assert!(
        b.bytes >= l.batch_bytes && b.bytes < l.batch_bytes + (BYTES_CHECK_ROWS + 1) * per_row,
        "{} bytes in {} rows for a bound of {}",
        b.bytes,
        b.rows,
        l.batch_bytes
    );
    assert_eq!(keys(&b.path).len() as u64, b.rows);
}

/// A sealed batch is synced at the seal unless inserts are succeeding and nothing waits
/// before it; a failure (or a stop) syncs every batch not yet durable, and seals sync again
/// until an insert succeeds. Recovered batches count as not yet durable.
#[test]
fn sealed_batches_skip_the_sync_only_while_sent_straight_away() {
    let dir = tempfile::tempdir().expect("tempdir");
    let l = SpoolLimits {
        batch_rows: 2,
        fsync: true,
        ..limits()
    };
    let mut s = Spool::open(dir.path(), l).expect("open");
    let shared = s.shared();
    let seal_one = |s: &mut Spool, i: u64| {
        s.push(row(2 * i)).expect("push");
        s.push(row(2 * i + 1)).expect("push");
    };
    // Before any insert succeeded: synced.
    seal_one(&mut s, 0);
    assert_eq!(shared.unsynced(), 0, "no insert has succeeded yet");
    let first = shared.next_batch().expect("batch");
    // Given up (deleted) is not sent: still synced.
    shared.done(&first).expect("done");
    seal_one(&mut s, 9);
    assert_eq!(shared.unsynced(), 0, "no insert has succeeded yet");
    let ok = shared.next_batch().expect("batch");
    shared.sent(&ok).expect("sent");
    // Sending well, nothing waiting: straight out, unsynced.
    seal_one(&mut s, 1);
    assert_eq!(shared.unsynced(), 1, "goes straight to a healthy server");
    let second = shared.next_batch().expect("batch");
    // Still sending well, the one before in flight only: unsynced too.
    seal_one(&mut s, 2);
    assert_eq!(shared.unsynced(), 2);
    // A batch waiting (not in flight) before the next: synced at its seal.
    seal_one(&mut s, 3);
    assert_eq!(
        shared.unsynced(),
        2,
        "the batch sealed at seq 2 waits before it"
    );
    // The insert fails: both made durable, and seals sync until an insert succeeds.
    shared.release(&second);
    assert_eq!(shared.sync_unsynced().expect("sync"), 2);
    assert_eq!(shared.unsynced(), 0);
    let b = shared.next_batch().expect("batch");
    shared.sent(&b).expect("done");
    // Success again, but two sealed batches are still waiting: synced.
    seal_one(&mut s, 4);
    assert_eq!(shared.unsynced(), 0);
    while let Some(b) = shared.next_batch() {
        shared.sent(&b).expect("done");
    }
    seal_one(&mut s, 5);
    assert_eq!(shared.unsynced(), 1, "the backlog is empty again");
    // A restart finds it: not known to be durable.
    drop(s);
    let s = Spool::open(dir.path(), l).expect("reopen");
    assert_eq!(s.shared().unsynced(), 1);
    assert_eq!(s.shared().backlog_rows(), 2);
    // Sent or synced, it leaves the set.
    assert_eq!(s.shared().sync_unsynced().expect("sync"), 1);
    assert_eq!(s.shared().unsynced(), 0);
}

/// A batch file larger than memory (a sparse 8 TiB file) is an error, set aside at start, not
/// an abort: its buffer is reserved fallibly.
#[test]
fn a_batch_larger_than_memory_is_an_error_not_an_abort() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("0000000000000003-alerts.batch");
    let f = File::create(&path).expect("create");
    if f.set_len(8 << 40).is_err() {
        // The file system cannot hold a file this large, even sparse: nothing to test here.
        return;
    }
    drop(f);
    let err = read_frames(&path, ALERTS).expect_err("no 8 TiB buffer");
    assert!(
        err.to_string().contains("0000000000000003-alerts.batch"),
        "{err}"
    );
    let s = Spool::open(dir.path(), limits()).expect("open");
    assert!(s.shared().next_batch().is_none());
    // Set aside in `rejected/`, where its 8 TiB are over the spool's bound: deleted, counted.
    assert!(!path.exists());
    assert!(!dir
        .path()
        .join("rejected/0000000000000003-alerts.batch")
        .exists());
    assert_eq!(s.stats().dropped_rejected, 1);
}

#[test]
fn a_large_batch_waits_for_the_large_one_in_flight_unless_the_sender_is_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Spool::open(dir.path(), limits()).expect("open");
    let shared = s.shared();
    let add = |seq: u64, bytes: u64| {
        shared.lock().add(BatchInfo {
            seq,
            run: "r".into(),
            table: ALERTS,
            rows: 1,
            bytes,
            path: dir.path().join(format!("{seq}")),
        })
    };
    let large = LARGE_BATCH_BYTES;
    // Two large batches sealed together (an exchanges' and a lines' batch) and a small one.
    add(1, 12 * large);
    add(2, 10 * large);
    add(3, 100);
    let first = shared
        .next_batch_beside(false)
        .expect("the oldest, nothing in flight");
    assert_eq!(first.seq, 1);
    assert!(
        shared.next_batch_beside(true).is_none(),
        "the second large one waits for the first"
    );
    // A third large one behind them: the sender is behind, so two go at once.
    add(4, 2 * large);
    assert_eq!(shared.next_batch_beside(true).map(|b| b.seq), Some(2));
    // Once that one is in flight, the oldest left (small) goes beside a large one at once.
    assert_eq!(shared.next_batch_beside(true).map(|b| b.seq), Some(3));
    // With none of the sender's own inserts in flight, a large one goes at once.
    assert_eq!(shared.next_batch_beside(false).map(|b| b.seq), Some(4));
    assert!(shared.next_batch_beside(false).is_none(), "all in flight");
}
