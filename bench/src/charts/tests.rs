//! The charts drawn from made-up figures: they are written, and their text is there.

use std::time::Duration;

use super::*;
use crate::failover::{Failover, Timeline};
use crate::workload::Measurement;

fn measurement(rps: usize, p50_us: u64) -> Measurement {
    let latencies = (0..rps)
        .map(|i| Duration::from_micros(p50_us / 2 + (i as u64 * p50_us) / rps as u64))
        .collect();
    Measurement::of(Duration::from_secs(1), latencies)
}

#[test]
fn the_cells_chart_shows_every_system_and_client_count() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("point.svg");
    let clients = [1, 4, 16];
    let mut all = Vec::new();
    for (i, count) in clients.iter().enumerate() {
        for (system, scale) in [
            (SystemKind::Baseline, 10),
            (SystemKind::Routed, 9),
            (SystemKind::Pgpool, 3),
        ] {
            all.push(Cell {
                workload: Workload::Point,
                clients: *count,
                system,
                outcome: Ok(measurement(scale * 1000 * (i + 1), 60 * (i as u64 + 1))),
            });
        }
    }
    // A failed cell leaves a gap, not an error.
    all[4].outcome = Err("failed".to_owned());
    cells(&path, Workload::Point, &clients, &all).unwrap();
    let svg = std::fs::read_to_string(&path).unwrap();
    for text in [
        "1 client",
        "4 clients",
        "16 clients",
        "baseline",
        "routed",
        "pgpool",
        "30.0k",
    ] {
        assert!(svg.contains(text), "no {text} in the chart");
    }
}

#[test]
fn the_failover_chart_marks_the_stop_and_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("failover.svg");
    let s = Duration::from_secs;
    let buckets = 60;
    let timeline = Timeline {
        servers: vec!["primary".into(), "replica 0".into(), "replica 1".into()],
        served: (0..buckets)
            .map(|b| {
                if (20..45).contains(&b) {
                    vec![0, 0, 900]
                } else {
                    vec![0, 450, 450]
                }
            })
            .collect(),
        failed: vec![0; buckets],
    };
    let failover = Failover {
        reads: 54_000,
        failed: 0,
        first_error: None,
        stop_began: s(2),
        stop_ended: Duration::from_millis(2_150),
        restart_began: s(4),
        restart_ended: Duration::from_millis(4_500),
        ended: s(6),
        last_routed_while_down: None,
        last_answer_before_restart: None,
        first_routed_after_restart: None,
        first_answer_after_restart: None,
        bans: 1,
        timeline,
    };
    timeline::draw(&path, &failover).unwrap();
    let svg = std::fs::read_to_string(&path).unwrap();
    for text in [
        "stop replica 0",
        "start replica 0",
        "replica 1",
        "failed reads (0 in all)",
    ] {
        assert!(svg.contains(text), "no {text} in the chart");
    }
}
