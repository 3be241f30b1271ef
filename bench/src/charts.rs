//! The run's figures as SVG charts (plotters' SVG backend: text is left to the viewer's fonts, so
//! nothing here needs a font installed): per workload, throughput and p50/p99 latency per system
//! and client count; and the failover timeline.

#[cfg(test)]
mod tests;
mod timeline;

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::BoxError;
use crate::report::{Cell, Report};
use crate::systems::SystemKind;
use crate::workload::Workload;

/// A chart's size in pixels.
const SIZE: (u32, u32) = (960, 400);

/// The colour of each system, and of the servers of the timeline.
pub(crate) const PALETTE: [RGBColor; 10] = [
    RGBColor(0x4c, 0x72, 0xb0),
    RGBColor(0xdd, 0x84, 0x52),
    RGBColor(0x55, 0xa8, 0x68),
    RGBColor(0x81, 0x72, 0xb3),
    RGBColor(0xc4, 0x4e, 0x52),
    RGBColor(0x93, 0x78, 0x60),
    RGBColor(0xda, 0x8b, 0xc3),
    RGBColor(0x8c, 0x8c, 0x8c),
    RGBColor(0xcc, 0xb9, 0x74),
    RGBColor(0x64, 0xb5, 0xcd),
];

/// Writes every chart of `report` into `dir` (created if missing); the paths written.
///
/// # Errors
///
/// The folder cannot be created or a chart cannot be drawn or written.
pub(crate) fn write(dir: &Path, report: &Report) -> Result<Vec<PathBuf>, BoxError> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut written = Vec::new();
    for workload in &report.settings.workloads {
        let path = dir.join(format!("{workload}.svg"));
        cells(&path, *workload, &report.settings.clients, &report.cells)
            .map_err(|e| format!("cannot draw {}: {e}", path.display()))?;
        written.push(path);
    }
    if let Ok(failover) = &report.failover {
        let path = dir.join("failover.svg");
        timeline::draw(&path, failover)
            .map_err(|e| format!("cannot draw {}: {e}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// One measured system at each client count: req/s, p50 and p99 in milliseconds (`None` where
/// the cell failed).
struct Series {
    system: SystemKind,
    colour: RGBColor,
    points: Vec<Option<(f64, f64, f64)>>,
}

fn series(workload: Workload, clients: &[usize], cells: &[Cell]) -> Vec<Series> {
    SystemKind::ALL
        .iter()
        .enumerate()
        .filter_map(|(index, system)| {
            let points: Vec<_> = clients
                .iter()
                .map(|count| {
                    let cell = cells.iter().find(|c| {
                        c.workload == workload && c.clients == *count && c.system == *system
                    })?;
                    let m = cell.outcome.as_ref().ok()?;
                    let ms = |p: f64| m.percentile(p).map(|d| d.as_secs_f64() * 1e3);
                    Some((m.throughput(), ms(50.0)?, ms(99.0)?))
                })
                .collect();
            points.iter().any(Option::is_some).then(|| Series {
                system: *system,
                colour: PALETTE[index % PALETTE.len()],
                points,
            })
        })
        .collect()
}

/// Throughput (left) and latency (right) of every system at every client count, as grouped bars.
fn cells(
    path: &Path,
    workload: Workload,
    clients: &[usize],
    cells: &[Cell],
) -> Result<(), BoxError> {
    let series = series(workload, clients, cells);
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(SIZE.0 / 2);
    throughput(&left, workload, clients, &series)?;
    latency(&right, workload, clients, &series)?;
    root.present()?;
    Ok(())
}

/// Where bar `index` of `count` in group `group` spans on the x axis.
fn bar_span(group: usize, index: usize, count: usize) -> (f64, f64) {
    let width = 0.8 / count.max(1) as f64;
    let left = group as f64 - 0.4 + width * index as f64;
    (left + width * 0.08, left + width * 0.92)
}

/// The x axis of grouped bars: one group per client count, labelled at its centre.
fn client_label(clients: &[usize]) -> impl Fn(&f64) -> String + '_ {
    move |x: &f64| {
        let index = x.round();
        if (x - index).abs() > 1e-6 || index < 0.0 {
            return String::new();
        }
        clients.get(index as usize).map_or_else(String::new, |n| {
            format!("{n} client{}", if *n == 1 { "" } else { "s" })
        })
    }
}

fn throughput(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    workload: Workload,
    clients: &[usize],
    series: &[Series],
) -> Result<(), BoxError> {
    let top = series
        .iter()
        .flat_map(|s| s.points.iter().flatten().map(|p| p.0))
        .fold(1.0, f64::max)
        * 1.15;
    let groups = clients.len() as f64;
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("{workload}: throughput (req/s)"),
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5..groups - 0.5, 0.0..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(clients.len())
        .x_label_formatter(&client_label(clients))
        .y_label_formatter(&|v| format!("{:.0}k", v / 1e3))
        .draw()?;
    for (index, s) in series.iter().enumerate() {
        let bars = s.points.iter().enumerate().filter_map(|(group, point)| {
            let (x0, x1) = bar_span(group, index, series.len());
            point.map(|(rps, _, _)| Rectangle::new([(x0, 0.0), (x1, rps)], s.colour.filled()))
        });
        chart
            .draw_series(bars)?
            .label(s.system.to_string())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], s.colour.filled()));
        let labels = s.points.iter().enumerate().filter_map(|(group, point)| {
            let (x0, x1) = bar_span(group, index, series.len());
            point.map(|(rps, _, _)| {
                Text::new(
                    format!("{:.1}k", rps / 1e3),
                    ((x0 + x1) / 2.0, rps),
                    ("sans-serif", 11)
                        .into_font()
                        .into_text_style(area)
                        .pos(Pos::new(HPos::Center, VPos::Bottom)),
                )
            })
        });
        chart.draw_series(labels)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK.mix(0.3))
        .draw()?;
    Ok(())
}

fn latency(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    workload: Workload,
    clients: &[usize],
    series: &[Series],
) -> Result<(), BoxError> {
    let values = || series.iter().flat_map(|s| s.points.iter().flatten());
    let high = values().map(|p| p.2).fold(0.1, f64::max) * 2.0;
    let low = values().map(|p| p.1).fold(high, f64::min) / 2.0;
    let groups = clients.len() as f64;
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("{workload}: latency (ms, log scale): bar p50, whisker to p99"),
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5..groups - 0.5, (low..high).log_scale())?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(clients.len())
        .x_label_formatter(&client_label(clients))
        .y_label_formatter(&|v| format!("{v}"))
        .draw()?;
    for (index, s) in series.iter().enumerate() {
        let bars = s.points.iter().enumerate().filter_map(|(group, point)| {
            let (x0, x1) = bar_span(group, index, series.len());
            point.map(|(_, p50, _)| Rectangle::new([(x0, low), (x1, p50)], s.colour.filled()))
        });
        chart.draw_series(bars)?;
        for (group, point) in s.points.iter().enumerate() {
            let Some((_, p50, p99)) = *point else {
                continue;
            };
            let (x0, x1) = bar_span(group, index, series.len());
            let middle = (x0 + x1) / 2.0;
            let quarter = (x1 - x0) / 4.0;
            chart.draw_series([
                PathElement::new(vec![(middle, p50), (middle, p99)], BLACK.stroke_width(1)),
                PathElement::new(
                    vec![(middle - quarter, p99), (middle + quarter, p99)],
                    BLACK.stroke_width(1),
                ),
            ])?;
        }
    }
    Ok(())
}
