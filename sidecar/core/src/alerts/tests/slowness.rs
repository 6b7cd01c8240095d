//! The upstream slowness rule: its percentile over the window, and the window itself.
use super::*;

#[test]
fn slowness_fires_over_the_percentile_and_resolves_when_fast_again() {
    let mut cfg = AlertsConfig::default();
    cfg.upstream_slowness.min_samples = 10;
    cfg.upstream_slowness.threshold = Duration::from_millis(200);
    cfg.upstream_slowness.window = Duration::from_secs(60);
    let mut e = Engine::new(cfg);
    let mut out = Vec::new();
    let mut t = 0;
    // Healthy: 10 ms.
    for i in 0..20u16 {
        t += S / 10;
        e.hop(&HopRecord::Http(http(i, t, false, 200, S / 100)), &mut out);
    }
    assert!(out.is_empty());
    // 5 % slow is at p95 itself: still fine at 1 in 20 ... 3 in 23 is not.
    for i in 0..3u16 {
        t += S / 10;
        e.hop(
            &HopRecord::Http(http(100 + i, t, false, 200, S / 2)),
            &mut out,
        );
    }
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].rule, rule::SLOWNESS);
    assert!(out[0].summary.contains("p95"), "{}", out[0].summary);
    assert_eq!(out[0].evidence["detail"]["slowest"][0]["ttfb_s"], 0.5);
    // The slow ones age out of the window while fast ones come in.
    for i in 0..30u16 {
        t += 3 * S;
        e.hop(
            &HopRecord::Http(http(200 + i, t, false, 200, S / 100)),
            &mut out,
        );
    }
    assert_eq!(out.len(), 2, "{out:?}");
    assert_eq!(out[1].state, State::Resolved);
}

/// The slowest exchanges an alert names are the window's, each with its own request id:
/// slow ones that aged out of the window take their ids with them.
#[test]
fn the_slowest_named_are_the_windows_each_with_its_request_id() {
    let mut cfg = AlertsConfig::default();
    cfg.upstream_slowness.min_samples = 10;
    cfg.upstream_slowness.percentile = 95.0;
    cfg.upstream_slowness.threshold = Duration::from_millis(200);
    cfg.upstream_slowness.window = Duration::from_secs(60);
    let mut e = Engine::new(cfg);
    let mut out = Vec::new();
    let ms = S / 1000;
    // Five very slow ones, too few to judge, then out of the window.
    for (i, ttfb) in [900, 800, 700, 600, 550].into_iter().enumerate() {
        e.hop(
            &HopRecord::Http(http(
                1000 + i as u16,
                (1 + i as u64) * S,
                false,
                200,
                ttfb * ms,
            )),
            &mut out,
        );
    }
    let mut t = 70 * S;
    for i in 0..30u16 {
        t += S / 10;
        e.hop(&HopRecord::Http(http(i, t, false, 200, 10 * ms)), &mut out);
    }
    assert!(out.is_empty(), "{out:?}");
    // Two slow ones in 32 put p95 over the threshold.
    for (i, ttfb) in [300, 450].into_iter().enumerate() {
        t += S / 10;
        e.hop(
            &HopRecord::Http(http(2000 + i as u16, t, false, 200, ttfb * ms)),
            &mut out,
        );
    }
    let [alert] = &out[..] else {
        panic!("one alert: {out:?}")
    };
    let slowest: Vec<(String, f64)> = alert.evidence["detail"]["slowest"]
        .as_array()
        .expect("the slowest listed")
        .iter()
        .map(|s| {
            (
                s["request_id"].as_str().unwrap_or_default().to_owned(),
                s["ttfb_s"].as_f64().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        slowest,
        [("rid2001".to_owned(), 0.45), ("rid2000".to_owned(), 0.3)]
    );
}

#[test]
fn a_busy_upstream_is_judged_once_a_second_and_every_slow_exchange_counted() {
    let mut cfg = AlertsConfig::default();
    cfg.upstream_slowness.threshold = Duration::from_millis(200);
    let mut e = Engine::new(cfg);
    let mut out = Vec::new();
    let mut t = 0;
    for i in 0..1500u16 {
        t += S / 100;
        e.hop(&HopRecord::Http(http(i, t, false, 200, S / 100)), &mut out);
    }
    assert!(out.is_empty());
    for i in 0..200u16 {
        t += S / 100;
        e.hop(&HopRecord::Http(http(2000 + i, t, false, 200, S)), &mut out);
    }
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].rule, rule::SLOWNESS);
    e.advance(t + quiet(), &mut out);
    assert_eq!(out.len(), 2);
    assert_eq!(
        out[1].evidence["counts"]["slow_exchanges"], 200,
        "each slow exchange once, judged or not"
    );
}

#[test]
fn a_busy_ports_slowness_window_is_allocated_once() {
    // Made with room for the most it holds: it neither grows nor moves, however busy.
    let mut e = Engine::new(AlertsConfig::default());
    let mut out = Vec::new();
    let mut t = 0;
    let mut capacity = None;
    for i in 0..(MAX_SAMPLES + 3000) {
        t += S / 1000;
        let x = http((i % 60_000) as u16, t, false, 200, S / 1000);
        e.hop(&HopRecord::Http(x), &mut out);
        let w = &e.ttfb[&18789];
        assert!(w.samples.len() <= MAX_SAMPLES);
        assert_eq!(
            *capacity.get_or_insert(w.samples.capacity()),
            w.samples.capacity()
        );
    }
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(e.ttfb[&18789].samples.len(), MAX_SAMPLES);
    assert!(capacity.is_some_and(|c| c <= MAX_SAMPLES + 1));
}
