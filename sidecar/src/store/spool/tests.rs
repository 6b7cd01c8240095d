use super::*;
use crate::store::rows::AlertRow;

fn row(i: u64) -> AnyRow {
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

fn limits() -> SpoolLimits {
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
    let f = read_frames(&first.path).expect("read");
    assert_eq!(f.rows.len(), 10);
    assert_eq!(f.rows[0], row(0));
    assert_eq!(f.cut, 0);
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
    // Half a frame, as if the process died inside a write.
    let mut f = OpenOptions::new().append(true).open(&open).expect("append");
    f.write_all(&[40, 0, 0, 0, 1, 2]).expect("write");
    drop(f);
    let s = Spool::open(dir.path(), limits()).expect("reopen");
    assert_eq!(s.stats().recovered_rows, 3);
    assert_eq!(s.stats().truncated_bytes, 6);
    let b = s.shared().next_batch().expect("batch");
    assert_eq!(read_frames(&b.path).expect("read").rows.len(), 3);
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
    let f = read_frames(&b.path).expect("read");
    assert_eq!(f.rows[0], row(st.dropped_rows));
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
    for i in 0..10 {
        s.push(row(i)).expect("push");
    }
    s.flush().expect("flush");
    let b = s.shared().next_batch().expect("a sealed batch of 10");
    drop(s);
    let mut data = fs::read(&b.path).expect("read");
    // A bit flip inside the fifth frame's payload.
    let mut at = HEADER;
    for _ in 0..4 {
        let len = u32::from_le_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]);
        at += FRAME_HEADER + len as usize;
    }
    data[at + FRAME_HEADER + 2] ^= 0x40;
    fs::write(&b.path, &data).expect("write");
    let f = read_frames(&b.path).expect("readable");
    assert_eq!(f.rows.len(), 9, "every frame but the bad one");
    assert_eq!(f.corrupt_regions, 1);
    assert!(f.corrupt_bytes > 0);
    assert_eq!(f.cut, 0);
    let kept: Vec<String> = f
        .rows
        .iter()
        .map(|r| match r {
            AnyRow::Alert(a) => a.dedup_key.clone(),
            _ => String::new(),
        })
        .collect();
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
    let f = read_frames(&b.path).expect("read");
    assert_eq!(f.corrupt_regions, 0, "no torn frame in the middle");
    assert_eq!(f.cut, 0);
    // Every row pushed is in the batch, or was dropped and counted: none lost silently.
    assert_eq!(f.rows.len() as u64 + dropped, pushed);
}

#[test]
fn a_fresh_batch_hands_its_rows_over_in_memory_once_and_the_file_stays_the_authority() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Spool::open(dir.path(), limits()).expect("open");
    for i in 0..30 {
        s.push(row(i)).expect("push");
    }
    s.flush().expect("flush");
    let shared = s.shared();
    let batches: Vec<BatchInfo> = std::iter::from_fn(|| shared.next_batch()).collect();
    assert_eq!(batches.len(), 3);
    // Only the newest FRESH_BATCHES keep their rows in memory: an outage fills the disk.
    assert_eq!(shared.take_fresh(batches[0].seq), None);
    for b in &batches[1..] {
        let mem = shared.take_fresh(b.seq).expect("rows in memory");
        assert_eq!(
            mem,
            read_frames(&b.path).expect("read").rows,
            "same rows as the file"
        );
        assert_eq!(
            shared.take_fresh(b.seq),
            None,
            "handed over once: a retry reads the file"
        );
    }
    // A batch over the memory bound is left to its file.
    let dir2 = tempfile::tempdir().expect("tempdir");
    let mut s2 = Spool::open(
        dir2.path(),
        SpoolLimits {
            batch_rows: 1_000_000,
            batch_bytes: 64 << 20,
            ..limits()
        },
    )
    .expect("open");
    let big = |i: u64| {
        let AnyRow::Alert(mut a) = row(i) else {
            unreachable!()
        };
        a.evidence = "x".repeat(64 * 1024);
        AnyRow::Alert(a)
    };
    let n = FRESH_MAX_BYTES / (64 * 1024) + 2;
    for i in 0..n {
        s2.push(big(i)).expect("push");
    }
    s2.seal_all().expect("seal");
    let b = s2.shared().next_batch().expect("batch");
    assert_eq!(b.rows, n);
    assert_eq!(s2.shared().take_fresh(b.seq), None);
    // A recovered batch (written by an earlier run) is read from its file.
    drop(s);
    let s = Spool::open(dir.path(), limits()).expect("reopen");
    let b = s.shared().next_batch().expect("batch");
    assert_eq!(s.shared().take_fresh(b.seq), None);
}
