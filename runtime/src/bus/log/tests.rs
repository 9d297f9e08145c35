use serde_json::json;

use super::*;

fn event(n: u64) -> Event {
    Event::new("ns/b", "s", "t", json!({ "n": n }))
}

fn options(dir: &Path) -> LogOptions {
    LogOptions {
        commit_interval: Duration::from_millis(10),
        ..LogOptions::new(dir.to_owned())
    }
}

fn replay_all(log: &Log, topic: &str, from: u64, to: u64) -> Vec<(u64, Record)> {
    let mut replay = log.replay(topic, from, to).unwrap();
    let mut all = Vec::new();
    loop {
        let batch = replay.next_batch(3).unwrap();
        if batch.is_empty() {
            return all;
        }
        all.extend(batch);
    }
}

fn n_of(record: &Record) -> u64 {
    record.event.data["n"].as_u64().unwrap()
}

#[tokio::test]
async fn a_group_resumes_after_its_last_finished_event_when_the_log_is_opened_again() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = Log::open(options(dir.path())).unwrap();
        let (tracker, from, to) = log.join("t", "g").unwrap();
        assert_eq!((from, to), (0, 0));
        for n in 0..5 {
            let offset = log
                .append("t", None, &event(n), vec![tracker.clone()])
                .await
                .unwrap();
            assert_eq!(offset, n);
        }
        // Finished out of order: 0, 1 and 3; 2 and 4 still in flight.
        for o in [0, 3, 1] {
            tracker.handled(o);
        }
        assert_eq!(tracker.position(), 2);
        log.commit();
        // Crash: no close, no drop.
        std::mem::forget(log);
    }
    // The LOCK of the forgotten log is still held by this process's open file: the lock is
    // per open file description, so reopen through a copy of the directory instead.
    let copy = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), copy.path());
    let log = Log::open(options(copy.path())).unwrap();
    let (_tracker, from, to) = log.join("t", "g").unwrap();
    assert_eq!((from, to), (2, 5));
    let got: Vec<u64> = replay_all(&log, "t", from, to)
        .iter()
        .map(|(_, r)| n_of(r))
        .collect();
    // 3 is repeated: the position is a contiguous watermark.
    assert_eq!(got, [2, 3, 4]);
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&entry.path(), &target);
        } else if entry.file_name() != "LOCK" {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[tokio::test]
async fn a_second_process_on_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _log = Log::open(options(dir.path())).unwrap();
    let err = Log::open(options(dir.path())).unwrap_err();
    assert!(matches!(err, LogError::Locked { .. }), "{err}");
    assert!(
        err.to_string().contains("another inputbot process"),
        "{err}"
    );
}

#[tokio::test]
async fn records_cross_segments_and_finished_segments_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(LogOptions {
        segment_bytes: 300,
        max_bytes: 1 << 20,
        ..options(dir.path())
    })
    .unwrap();
    let (tracker, _, _) = log.join("t", "g").unwrap();
    log.seal();
    for n in 0..20 {
        log.append("t", None, &event(n), vec![tracker.clone()])
            .await
            .unwrap();
    }
    let topic_dir = dir.path().join("topics/t");
    let segments = segment::list(&topic_dir).unwrap();
    assert!(segments.len() > 3, "{segments:?}");
    let got: Vec<u64> = replay_all(&log, "t", 4, 17)
        .iter()
        .map(|(o, r)| {
            assert_eq!(*o, n_of(r));
            *o
        })
        .collect();
    assert_eq!(got, (4..17).collect::<Vec<_>>());

    let before = log.used();
    for o in 0..20 {
        tracker.handled(o);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while segment::list(&topic_dir).unwrap().len() > 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "finished segments stay"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(log.used() < before);
}

#[tokio::test]
async fn a_full_log_refuses_appends_until_consumers_free_space() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(LogOptions {
        max_bytes: 2_000,
        ..options(dir.path())
    })
    .unwrap();
    let (tracker, _, _) = log.join("t", "g").unwrap();
    log.seal();
    let mut accepted = 0u64;
    let err = loop {
        match log
            .append("t", None, &event(accepted), vec![tracker.clone()])
            .await
        {
            Ok(_) => accepted += 1,
            Err(e) => break e,
        }
        assert!(accepted < 1_000, "never full");
    };
    assert!(matches!(err, LogError::Full { .. }), "{err}");
    assert!(accepted > 5, "{accepted}");
    for o in 0..accepted {
        tracker.handled(o);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        if log
            .append("t", None, &event(999), vec![tracker.clone()])
            .await
            .is_ok()
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "space never returned");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_group_without_a_position_starts_at_the_start_only_when_no_group_ever_read_the_topic() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(options(dir.path())).unwrap();
    // Accepted before any consumer existed.
    log.append("t", None, &event(0), Vec::new()).await.unwrap();
    let (first, from, to) = log.join("t", "first").unwrap();
    assert_eq!((from, to), (0, 1));
    log.append("t", None, &event(1), vec![first.clone()])
        .await
        .unwrap();
    let (_late, from, to) = log.join("t", "late").unwrap();
    assert_eq!((from, to), (2, 2));
}

#[tokio::test]
async fn a_record_for_one_group_is_passed_over_by_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(options(dir.path())).unwrap();
    let (a, _, _) = log.join("t", "a").unwrap();
    let (b, _, _) = log.join("t", "b").unwrap();
    log.append("t", None, &event(0), vec![a.clone(), b.clone()])
        .await
        .unwrap();
    log.append("t", Some("a"), &event(1), vec![a.clone()])
        .await
        .unwrap();
    let records = replay_all(&log, "t", 0, 2);
    assert_eq!(records[0].1.group, None);
    assert_eq!(records[1].1.group.as_deref(), Some("a"));
    assert_eq!((a.in_flight(), b.in_flight()), (2, 1));
}

#[test]
fn names_that_are_not_plain_file_names_are_refused() {
    for bad in ["", ".", "..", "a/b", "../x", "x.tmp", "a b"] {
        assert!(check_name("topic", bad).is_err(), "{bad:?}");
    }
    check_name("topic", "default.bot.raw-1_x").unwrap();
}

#[test]
fn group_positions_with_dots_do_not_share_a_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("ns.p.process");
    let b = dir.path().join("ns.p.act");
    write_atomically(&a, b"1").unwrap();
    write_atomically(&b, b"2").unwrap();
    assert_eq!(read_position(&a).unwrap(), Some(1));
    assert_eq!(read_position(&b).unwrap(), Some(2));
}
