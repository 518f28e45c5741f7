//! `chart.svg`: every row that has a native number, as speed relative to native PostgreSQL
//! on a log scale (bars grow right of the 1x line when faster, left when slower), grouped by
//! workload with one bar per system.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::report::Report;

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];
const BAR_PX: u32 = 13;
const WIDTH_PX: u32 = 1200;
const LABEL_AREA_PX: u32 = 360;
const MARGIN_PX: i32 = 15;
/// Room for the title and the legend above the bars.
const HEADER_PX: i32 = 80;

/// One workload: its label and one bar (series, relative speed) per measured system.
struct Group {
    label: String,
    bars: Vec<(usize, f64)>,
}

pub(crate) fn draw(report: &Report, path: &Path) -> anyhow::Result<()> {
    let (series, groups) = collect(report);
    let n_slots: usize = groups.iter().map(|group| group.bars.len() + 1).sum();
    let height = (n_slots as u32 * BAR_PX + 200).max(300);
    let root = SVGBackend::new(path, (WIDTH_PX, height)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    if groups.is_empty() {
        root.draw(&Text::new("no rows with a native baseline were measured", (20, 40), ("sans-serif", 16)))
            .map_err(plot_err)?;
        root.present().map_err(plot_err)?;
        return Ok(());
    }
    // Bars are drawn in log10 space: 0 is native, ±1 is ten times faster or slower.
    let values = groups.iter().flat_map(|group| group.bars.iter().map(|(_, value)| value.log10()));
    let (lo, hi) = values.fold((-0.5f64, 0.5f64), |(lo, hi), value| (lo.min(value - 0.15), hi.max(value + 0.15)));
    let mut chart = ChartBuilder::on(&root)
        .margin(MARGIN_PX)
        .margin_top(HEADER_PX)
        .set_label_area_size(LabelAreaPosition::Left, LABEL_AREA_PX)
        .set_label_area_size(LabelAreaPosition::Bottom, 40)
        .build_cartesian_2d(lo..hi, n_slots as f64..0.0)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(0)
        .y_labels(0)
        .x_desc("× native PostgreSQL (same run); bars right of the line are faster, left slower")
        .draw()
        .map_err(plot_err)?;
    let ticks: [f64; 13] = [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0];
    let tick_style = TextStyle::from(("sans-serif", 11)).pos(Pos::new(HPos::Center, VPos::Top));
    for tick in ticks.into_iter().filter(|tick| (lo..=hi).contains(&tick.log10())) {
        let x = tick.log10();
        let style = if tick == 1.0 { BLACK.stroke_width(1) } else { BLACK.mix(0.15).stroke_width(1) };
        chart
            .draw_series(std::iter::once(PathElement::new([(x, 0.0), (x, n_slots as f64)], style)))
            .map_err(plot_err)?;
        let (px, py) = chart.backend_coord(&(x, n_slots as f64));
        root.draw(&Text::new(format!("{tick}x"), (px, py + 4), tick_style.clone())).map_err(plot_err)?;
    }

    // Each group takes one slot per bar plus one slot of space.
    let mut slot = 0.0;
    let label_style = TextStyle::from(("sans-serif", 12)).pos(Pos::new(HPos::Right, VPos::Center));
    let right = TextStyle::from(("sans-serif", 10)).pos(Pos::new(HPos::Left, VPos::Center));
    let left = TextStyle::from(("sans-serif", 10)).pos(Pos::new(HPos::Right, VPos::Center));
    for group in &groups {
        let center = slot + 0.5 + group.bars.len() as f64 / 2.0;
        let (_, y) = chart.backend_coord(&(0.0, center));
        root.draw(&Text::new(group.label.clone(), (MARGIN_PX + LABEL_AREA_PX as i32 - 8, y), label_style.clone()))
            .map_err(plot_err)?;
        for (index, (series, value)) in group.bars.iter().enumerate() {
            let (y, x) = (slot + 0.5 + index as f64, value.log10());
            let color = COLORS[series % COLORS.len()];
            let bar = Rectangle::new([(x.min(0.0), y + 0.1), (x.max(0.0), y + 0.9)], color.filled());
            let (text, style) = (format!(" {value:.2}x "), if x >= 0.0 { &right } else { &left });
            let label = Text::new(text, (x, y + 0.5), style.clone());
            chart.draw_series(std::iter::once(bar)).map_err(plot_err)?;
            chart.draw_series(std::iter::once(label)).map_err(plot_err)?;
        }
        slot += group.bars.len() as f64 + 1.0;
    }

    // The title, and the legend in a row under it.
    let title = "Speed relative to native PostgreSQL (log scale, higher is better)";
    let title_style = TextStyle::from(("sans-serif", 20)).pos(Pos::new(HPos::Center, VPos::Top));
    root.draw(&Text::new(title, (WIDTH_PX as i32 / 2, MARGIN_PX), title_style)).map_err(plot_err)?;
    let mut x = MARGIN_PX + LABEL_AREA_PX as i32;
    for (index, name) in series.iter().enumerate() {
        let color = COLORS[index % COLORS.len()];
        let y = MARGIN_PX + 35;
        root.draw(&Rectangle::new([(x, y), (x + 12, y + 12)], color.filled())).map_err(plot_err)?;
        let style = TextStyle::from(("sans-serif", 12)).pos(Pos::new(HPos::Left, VPos::Center));
        root.draw(&Text::new(name.clone(), (x + 16, y + 6), style)).map_err(plot_err)?;
        x += 16 + 7 * name.len() as i32 + 24;
    }
    root.present().map_err(plot_err)?;
    Ok(())
}

/// The series (system names, in first-seen order) and the groups, from every table with a
/// base column; times are inverted so that higher is faster everywhere.
fn collect(report: &Report) -> (Vec<String>, Vec<Group>) {
    let mut series: Vec<String> = Vec::new();
    let mut groups = Vec::new();
    for table in &report.tables {
        if table.base.is_none() {
            continue;
        }
        for row in &table.rows {
            let mut bars = Vec::new();
            for (column, name) in table.columns.iter().enumerate() {
                let Some(ratio) = table.ratio(row, column) else { continue };
                let speed = if row.unit.higher_is_better() { ratio } else { 1.0 / ratio };
                if !speed.is_finite() || speed <= 0.0 {
                    continue;
                }
                let index = series.iter().position(|existing| existing == name).unwrap_or_else(|| {
                    series.push(name.clone());
                    series.len() - 1
                });
                bars.push((index, speed));
            }
            if !bars.is_empty() {
                let label =
                    if table.tag.is_empty() { row.name.clone() } else { format!("{}: {}", table.tag, row.name) };
                groups.push(Group { label, bars });
            }
        }
    }
    (series, groups)
}

fn plot_err<E: std::fmt::Debug>(err: E) -> anyhow::Error {
    anyhow::anyhow!("drawing the chart: {err:?}")
}
