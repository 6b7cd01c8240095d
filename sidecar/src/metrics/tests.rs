//! The metrics' own tests: names, help texts and counts as a scrape shows them.
use super::*;

#[test]
fn the_joined_family_names_each_match_as_the_records_do() {
    for m in [
        Matched::Exact,
        Matched::Inferred,
        Matched::EdgeOnly,
        Matched::HopOnly,
    ] {
        assert_eq!(MATCHED[matched_index(m)], m.as_str());
    }
}

#[test]
fn renders_counters() {
    let m = Metrics::new();
    m.event("listen_change");
    m.batch_drained(3, 1, 0.002);
    m.kernel_drops_now("ringbuf_full", 5);
    m.kernel_drops_now("ringbuf_full", 7);
    m.kernel_drops_now("ringbuf_full", 7);
    m.decode_error();
    let text = m.render();
    assert!(
        text.contains("edgewatch_events_total{kind=\"listen_change\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("edgewatch_kernel_drops_total{reason=\"ringbuf_full\"} 7"),
        "{text}"
    );
    assert!(text.contains("edgewatch_decode_errors_total 1"), "{text}");
    assert!(
        text.contains("edgewatch_event_lag_seconds_count 1"),
        "{text}"
    );
    assert!(
        text.contains("edgewatch_events_total{kind=\"hop_segment\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("edgewatch_hop_followed_segments_total 1"),
        "{text}"
    );
}

/// The process metrics, unprefixed, with the kernel's figures, and one end marker.
#[test]
fn renders_the_standard_process_metrics() {
    let m = Metrics::new();
    // Some CPU to count.
    let spin = std::time::Instant::now();
    while spin.elapsed() < std::time::Duration::from_millis(30) {
        std::hint::black_box(0);
    }
    let text = m.render();
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("{name} missing:\n{text}"))
            .parse()
            .expect("a number")
    };
    assert!(value("process_cpu_seconds_total") >= 0.03, "{text}");
    assert!(
        text.contains("# TYPE process_cpu_seconds counter"),
        "{text}"
    );
    assert!(value("process_resident_memory_bytes") > 1e6, "{text}");
    assert!(value("process_open_fds") >= 3.0, "{text}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64();
    let started = value("process_start_time_seconds");
    assert!(
        started <= now + 1.0 && started > now - 86_400.0 * 365.0,
        "{text}"
    );
    assert!(
        text.ends_with("# EOF\n") && text.matches("# EOF").count() == 1,
        "{text}"
    );
}

#[test]
fn members_resolved_at_start_are_the_familys() {
    let m = Metrics::new();
    // Present at zero before anything happened.
    let text = m.render();
    for line in [
        "edgewatch_events_total{kind=\"connect_start\"} 0",
        "edgewatch_store_rows_total{result=\"dropped\"} 0",
        "edgewatch_webhook_alerts_total{result=\"failed\"} 0",
        "edgewatch_edge_lines_total{result=\"non_utf8\"} 0",
        "edgewatch_limit_drops_total{limit=\"spool_corrupt_regions\"} 0",
    ] {
        assert!(text.contains(line), "{line} missing:\n{text}");
    }
    m.store_rows_now("sent", 5);
    m.store_rows_now("sent", 4);
    m.edge_lines(0, 1, 0);
    m.edge_lines(1, 0, 1);
    m.edge_lines(1, 0, 0);
    m.records(&[3, 0, 0, 0, 1, 2]);
    m.records(&[1, 0, 0, 0, 0, 0]);
    m.joined(&[2, 0, 1, 0]);
    m.joined(&[1, 0, 0, 4]);
    m.event("connect_end");
    m.follow_armed("body");
    // A value outside the set still counts, in the family.
    m.limit_drops_now("not_listed", 2);
    let text = m.render();
    for line in [
        "edgewatch_store_rows_total{result=\"sent\"} 5",
        "edgewatch_edge_lines_total{result=\"malformed\"} 1",
        "edgewatch_edge_lines_total{result=\"parsed\"} 2",
        "edgewatch_edge_lines_total{result=\"non_utf8\"} 1",
        "edgewatch_records_total{kind=\"http\"} 4",
        "edgewatch_records_total{kind=\"request\"} 1",
        "edgewatch_records_total{kind=\"edge\"} 2",
        "edgewatch_joined_requests_total{matched=\"exact\"} 3",
        "edgewatch_joined_requests_total{matched=\"inferred\"} 0",
        "edgewatch_joined_requests_total{matched=\"edge_only\"} 1",
        "edgewatch_joined_requests_total{matched=\"hop_only\"} 4",
        "edgewatch_records_total{kind=\"conn\"} 0",
        "edgewatch_events_total{kind=\"connect_end\"} 1",
        "edgewatch_hop_follow_armed_total{mode=\"body\"} 1",
        "edgewatch_limit_drops_total{limit=\"not_listed\"} 2",
    ] {
        assert!(text.contains(line), "{line} missing:\n{text}");
    }
}
