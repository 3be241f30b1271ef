//! The failover timeline: reads per second answered by each server and failed, with replica 0's
//! stop and restart marked.

use std::path::Path;
use std::time::Duration;

use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{PALETTE, SIZE};
use crate::BoxError;
use crate::failover::{BUCKET, Failover};

/// The red of failed reads.
const FAILED: RGBColor = RGBColor(0xc4, 0x2e, 0x2e);

/// Draws `failover`'s timeline into `path`.
pub(super) fn draw(path: &Path, failover: &Failover) -> Result<(), BoxError> {
    let timeline = &failover.timeline;
    let per_second = 1.0 / BUCKET.as_secs_f64();
    let at = |bucket: usize| (bucket as f64 + 0.5) * BUCKET.as_secs_f64();
    let end = failover.ended.as_secs_f64().max(at(timeline.failed.len()));
    let top = timeline
        .served
        .iter()
        .map(|counts| counts.iter().sum::<u64>())
        .chain(timeline.failed.iter().copied())
        .map(|n| n as f64 * per_second)
        .fold(1.0, f64::max)
        * 1.25;
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    // The key sits in a strip of its own below the chart, clear of the data and the marks.
    let (plot, key) = root.split_vertically(SIZE.1 - 28);
    let mut chart = ChartBuilder::on(&plot)
        .caption(
            format!(
                "failover: reads per second by server, stacked ({} ms buckets); replica 0 \
                 stopped and started again",
                BUCKET.as_millis()
            ),
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..end, 0.0..top)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the load began")
        .y_desc("reads/s")
        .y_label_formatter(&|v| format!("{:.0}k", v / 1e3))
        .draw()?;
    // Stacked: each server's band sits on the ones before it, so that the top is every read
    // served. Drawn from the top band down, each covering the part of the next below it.
    let stacked = |server: usize| -> Vec<(f64, f64)> {
        timeline
            .served
            .iter()
            .enumerate()
            .map(|(bucket, counts)| {
                let below: u64 = counts.iter().take(server + 1).sum();
                (at(bucket), below as f64 * per_second)
            })
            .collect()
    };
    let mut entries = Vec::new();
    for (server, name) in timeline.servers.iter().enumerate().rev() {
        let colour = PALETTE[server % PALETTE.len()];
        chart.draw_series(
            AreaSeries::new(stacked(server), 0.0, colour.mix(0.85)).border_style(colour),
        )?;
        entries.push((name.clone(), colour.mix(0.85)));
    }
    entries.reverse();
    let failed: Vec<(f64, f64)> = timeline
        .failed
        .iter()
        .enumerate()
        .map(|(bucket, n)| (at(bucket), *n as f64 * per_second))
        .collect();
    let total_failed: u64 = timeline.failed.iter().sum();
    chart.draw_series(LineSeries::new(failed, FAILED.stroke_width(2)))?;
    entries.push((
        format!("failed reads ({total_failed} in all)"),
        FAILED.to_rgba(),
    ));
    let marks = [
        (failover.stop_began, "stop replica 0"),
        (failover.restart_began, "start replica 0"),
        (failover.restart_ended, "streaming again"),
    ];
    for (index, (when, text)) in marks.iter().enumerate() {
        let x = seconds(*when);
        chart.draw_series(std::iter::once(DashedPathElement::new(
            vec![(x, 0.0), (x, top)],
            6,
            4,
            BLACK.mix(0.6).stroke_width(1),
        )))?;
        // Staggered, so that marks close together stay legible; to the left of a mark near the
        // right edge.
        let y = top * (0.97 - 0.06 * index as f64);
        let (text, side) = if x > end * 0.75 {
            (format!("{text} "), HPos::Right)
        } else {
            (format!(" {text}"), HPos::Left)
        };
        chart.draw_series(std::iter::once(Text::new(
            text,
            (x, y),
            ("sans-serif", 12)
                .into_font()
                .into_text_style(&plot)
                .pos(Pos::new(side, VPos::Top)),
        )))?;
    }
    let mut left = 80;
    for (text, colour) in entries {
        key.draw(&Rectangle::new(
            [(left, 6), (left + 12, 18)],
            colour.filled(),
        ))?;
        key.draw(&Text::new(
            text.clone(),
            (left + 17, 6),
            ("sans-serif", 12).into_font(),
        ))?;
        left += 17 + 7 * i32::try_from(text.len()).unwrap_or(40) + 24;
    }
    root.present()?;
    Ok(())
}

fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}
