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
    let mut chart = ChartBuilder::on(&root)
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
    for (server, name) in timeline.servers.iter().enumerate().rev() {
        let colour = PALETTE[server % PALETTE.len()];
        chart
            .draw_series(
                AreaSeries::new(stacked(server), 0.0, colour.mix(0.85)).border_style(colour),
            )?
            .label(name.clone())
            .legend(move |(x, y)| {
                Rectangle::new([(x, y - 5), (x + 10, y + 5)], colour.mix(0.85).filled())
            });
    }
    let failed: Vec<(f64, f64)> = timeline
        .failed
        .iter()
        .enumerate()
        .map(|(bucket, n)| (at(bucket), *n as f64 * per_second))
        .collect();
    let total_failed: u64 = timeline.failed.iter().sum();
    chart
        .draw_series(LineSeries::new(failed, FAILED.stroke_width(2)))?
        .label(format!("failed reads ({total_failed} in all)"))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], FAILED.stroke_width(2)));
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
        // Staggered, so that marks close together stay legible.
        let y = top * (0.97 - 0.06 * index as f64);
        chart.draw_series(std::iter::once(Text::new(
            format!(" {text}"),
            (x, y),
            ("sans-serif", 12)
                .into_font()
                .into_text_style(&root)
                .pos(Pos::new(HPos::Left, VPos::Top)),
        )))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()?;
    root.present()?;
    Ok(())
}

fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}
