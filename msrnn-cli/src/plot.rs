//! Line charts with plotters, as SVG or PNG (chosen by the file's extension).
//!
//! Line charts: the x axis is logarithmic (capacities and context lengths double) with a tick at
//! every measured value, or linear (positions in a stream); the y axis is logarithmic or linear,
//! ticked at round numbers. Heatmaps: a grid of coloured cells per panel, panels in rows.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use plotters::coord::ranged1d::{KeyPointHint, Ranged};
use plotters::coord::Shift;
use plotters::prelude::*;

pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub log_y: bool,
    pub series: Vec<Series>,
    /// Horizontal reference lines (the full cache), dashed.
    pub hlines: Vec<(String, f64)>,
}

#[derive(Clone, Copy)]
enum Format {
    Svg,
    Png,
}

fn format_of(path: &Path) -> Option<Format> {
    match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
        "svg" => Some(Format::Svg),
        "png" => Some(Format::Png),
        _ => None,
    }
}

/// Fails early (before a long run) on a plot path whose format is unknown.
pub fn check_paths(paths: &[PathBuf], flag: &str) -> Result<()> {
    for p in paths {
        if format_of(p).is_none() {
            bail!("{flag} {}: the file must end in .svg or .png", p.display());
        }
    }
    Ok(())
}

pub fn draw(path: &Path, chart: &Chart) -> Result<()> {
    draw_panels(path, std::slice::from_ref(chart))
}

/// Charts side by side in one picture.
pub fn draw_panels(path: &Path, charts: &[Chart]) -> Result<()> {
    draw_panels_scaled(path, charts, true)
}

/// Charts side by side, the x axis linear (positions in a stream) rather than logarithmic.
pub fn draw_panels_linear_x(path: &Path, charts: &[Chart]) -> Result<()> {
    draw_panels_scaled(path, charts, false)
}

fn draw_panels_scaled(path: &Path, charts: &[Chart], log_x: bool) -> Result<()> {
    crate::report::create_parent(path, "--plot")?;
    let size = (900 * charts.len() as u32, 500);
    match format_of(path) {
        Some(Format::Svg) => render(SVGBackend::new(path, size).into_drawing_area(), charts, log_x),
        Some(Format::Png) => render(BitMapBackend::new(path, size).into_drawing_area(), charts, log_x),
        None => bail!("{}: the file must end in .svg or .png", path.display()),
    }
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("cannot draw the chart: {e:?}")
}

fn render<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, charts: &[Chart], log_x: bool) -> Result<()> {
    root.fill(&WHITE).map_err(err)?;
    let panels = root.split_evenly((1, charts.len()));
    for (area, c) in panels.iter().zip(charts) {
        panel(area, c, log_x)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

/// An axis with its ticks chosen here: exactly at the measured x values, at round numbers for y.
#[derive(Clone)]
struct Axis {
    lo: f64,
    hi: f64,
    log: bool,
    ticks: Vec<f64>,
}

impl Axis {
    fn t(&self, v: f64) -> f64 {
        if self.log {
            v.max(f64::MIN_POSITIVE).ln()
        } else {
            v
        }
    }

    /// The x axis: linear from zero, ticked at round numbers.
    fn x_linear(xs: &[f64]) -> Self {
        let hi = xs.iter().copied().filter(|x| x.is_finite()).fold(0.0, f64::max);
        let hi = if hi > 0.0 { hi * 1.04 } else { 1.0 };
        Axis { lo: 0.0, hi, log: false, ticks: linear_ticks(0.0, hi) }
    }

    /// The x axis: logarithmic, ticks at the distinct x values, a margin on both sides.
    fn x(xs: &[f64]) -> Self {
        let mut ticks: Vec<f64> = xs.iter().copied().filter(|x| *x > 0.0 && x.is_finite()).collect();
        ticks.sort_by(f64::total_cmp);
        ticks.dedup();
        let (lo, hi) = match (ticks.first(), ticks.last()) {
            (Some(&a), Some(&b)) if b > a => (a, b),
            (Some(&a), _) => (a / 2.0, a * 2.0),
            _ => (1.0, 2.0),
        };
        let m = (hi / lo).powf(0.06).max(1.15);
        Axis { lo: lo / m, hi: hi * m, log: true, ticks }
    }

    /// The y axis: logarithmic when asked and possible, else linear from zero when the data is
    /// positive.
    fn y(ys: &[f64], log: bool) -> Self {
        let (mut lo, mut hi) = ys
            .iter()
            .filter(|y| y.is_finite())
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &y| (a.min(y), b.max(y)));
        if !lo.is_finite() {
            (lo, hi) = (0.0, 1.0);
        }
        if log && lo > 0.0 {
            let (lo, hi) = if hi / lo < 1.2 { (lo / 1.1, hi * 1.1) } else { (lo / 1.08, hi * 1.08) };
            return Axis { lo, hi, log: true, ticks: log_ticks(lo, hi) };
        }
        let lo = if lo >= 0.0 { 0.0 } else { lo };
        let hi = if hi > lo { hi * 1.08 } else { lo + 1.0 };
        Axis { lo, hi, log: false, ticks: linear_ticks(lo, hi) }
    }
}

impl Ranged for Axis {
    type FormatOption = plotters::coord::ranged1d::DefaultFormatting;
    type ValueType = f64;

    fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
        let (a, b) = (self.t(self.lo), self.t(self.hi));
        let f = (self.t(*v) - a) / (b - a);
        (limit.0 as f64 + f * (limit.1 - limit.0) as f64).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, _hint: Hint) -> Vec<f64> {
        self.ticks.iter().copied().filter(|t| *t >= self.lo && *t <= self.hi).collect()
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.lo..self.hi
    }
}

/// Room right of each plot for the legend.
const LEGEND_W: u32 = 190;

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

fn panel<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, c: &Chart, log_x: bool) -> Result<()> {
    let xs: Vec<f64> = c.series.iter().flat_map(|s| s.points.iter().map(|p| p.0)).collect();
    let ys: Vec<f64> =
        c.series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).chain(c.hlines.iter().map(|h| h.1)).collect();
    let x = if log_x { Axis::x(&xs) } else { Axis::x_linear(&xs) };
    let y = Axis::y(&ys, c.log_y);
    let (x0, x1) = (x.lo, x.hi);

    let (w, _) = area.dim_in_pixel();
    let (left, right) = area.split_horizontally(w.saturating_sub(LEGEND_W));
    let mut chart = ChartBuilder::on(&left)
        .caption(&c.title, ("sans-serif", 18))
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(x, y)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(&c.x_label)
        .y_desc(&c.y_label)
        .x_label_formatter(&|v| significant(*v))
        .y_label_formatter(&|v| significant(*v))
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 15))
        .draw()
        .map_err(err)?;

    for (i, (_, yv)) in c.hlines.iter().enumerate() {
        let color = RGBColor(60, 60, 60).mix(0.9 - 0.2 * i as f64);
        let style = ShapeStyle { color, filled: false, stroke_width: 2 };
        chart.draw_series(DashedLineSeries::new(vec![(x0, *yv), (x1, *yv)], 8, 5, style)).map_err(err)?;
    }
    for (i, s) in c.series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<(f64, f64)> =
            s.points.iter().copied().filter(|p| (p.0 > 0.0 || !log_x) && p.1.is_finite()).collect();
        chart.draw_series(LineSeries::new(pts.clone(), color.stroke_width(2))).map_err(err)?;
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled()))).map_err(err)?;
    }
    // The legend, right of the plot where it hides no data.
    let mut entries: Vec<(String, ShapeStyle, bool)> = Vec::new();
    for (i, (name, _)) in c.hlines.iter().enumerate() {
        entries.push((
            name.clone(),
            ShapeStyle { color: RGBColor(60, 60, 60).mix(0.9 - 0.2 * i as f64), filled: false, stroke_width: 2 },
            true,
        ));
    }
    for (i, s) in c.series.iter().enumerate() {
        entries.push((s.name.clone(), COLORS[i % COLORS.len()].stroke_width(2), false));
    }
    let font = ("sans-serif", 14).into_font().color(&BLACK);
    for (i, (name, style, dashed)) in entries.iter().enumerate() {
        let y = 52 + 24 * i as i32;
        if *dashed {
            for x in [4, 15, 26] {
                right.draw(&PathElement::new(vec![(x, y), (x + 7, y)], *style)).map_err(err)?;
            }
        } else {
            right.draw(&PathElement::new(vec![(4, y), (32, y)], *style)).map_err(err)?;
            right.draw(&Circle::new((18, y), 4, style.color.filled())).map_err(err)?;
        }
        right.draw(&Text::new(name.clone(), (40, y - 8), font.clone())).map_err(err)?;
    }
    Ok(())
}

/// One heatmap panel: `values[row][col]` coloured on a scale from `range.0` (light) to `range.1`
/// (dark); `None` cells stay blank. Row 0 is drawn at the top.
pub struct Heatmap {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// Labels under chosen columns: (column, text).
    pub x_ticks: Vec<(usize, String)>,
    /// Labels left of chosen rows: (row, text).
    pub y_ticks: Vec<(usize, String)>,
    pub values: Vec<Vec<Option<f64>>>,
    pub range: (f64, f64),
    /// Writes each cell's value in it with this format (small grids only).
    pub annotate: Option<fn(f64) -> String>,
}

/// Heatmap panels, `per_row` to a row, each `panel` pixels (width, height).
pub fn draw_heatmaps(path: &Path, maps: &[Heatmap], per_row: usize, panel: (u32, u32)) -> Result<()> {
    crate::report::create_parent(path, "--plot")?;
    let per_row = per_row.clamp(1, maps.len().max(1));
    let rows = maps.len().div_ceil(per_row).max(1);
    let size = (panel.0 * per_row as u32, panel.1 * rows as u32);
    match format_of(path) {
        Some(Format::Svg) => render_heat(SVGBackend::new(path, size).into_drawing_area(), maps, per_row, rows),
        Some(Format::Png) => render_heat(BitMapBackend::new(path, size).into_drawing_area(), maps, per_row, rows),
        None => bail!("{}: the file must end in .svg or .png", path.display()),
    }
}

fn render_heat<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    maps: &[Heatmap],
    per_row: usize,
    rows: usize,
) -> Result<()> {
    root.fill(&WHITE).map_err(err)?;
    let areas = root.split_evenly((rows, per_row));
    for (area, m) in areas.iter().zip(maps) {
        heat_panel(area, m)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

/// Light yellow to dark blue through green (close to viridis, reversed so that 0 is light).
fn heat_color(f: f64) -> RGBColor {
    const STOPS: [(f64, [f64; 3]); 5] = [
        (0.0, [253.0, 231.0, 37.0]),
        (0.25, [94.0, 201.0, 98.0]),
        (0.5, [33.0, 145.0, 140.0]),
        (0.75, [59.0, 82.0, 139.0]),
        (1.0, [68.0, 1.0, 84.0]),
    ];
    let f = if f.is_finite() { f.clamp(0.0, 1.0) } else { 0.0 };
    let i = STOPS.iter().rposition(|s| s.0 <= f).unwrap_or(0).min(STOPS.len() - 2);
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    let t = (f - a.0) / (b.0 - a.0);
    let c = |k: usize| (a.1[k] + t * (b.1[k] - a.1[k])).round() as u8;
    RGBColor(c(0), c(1), c(2))
}

fn heat_panel<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, m: &Heatmap) -> Result<()> {
    let (w, h) = area.dim_in_pixel();
    let (w, h) = (w as i32, h as i32);
    let font = |size: u32| ("sans-serif", size).into_font().color(&BLACK);
    // Margins: title on top, x labels below, y labels left, the colour scale right.
    let (left, right, top, bottom) = (78, 64, 34, 52);
    let (pw, ph) = ((w - left - right).max(10), (h - top - bottom).max(10));
    let nrows = m.values.len().max(1);
    let ncols = m.values.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let x_of = |c: usize| left + (c as f64 * pw as f64 / ncols as f64).round() as i32;
    let y_of = |r: usize| top + (r as f64 * ph as f64 / nrows as f64).round() as i32;
    let (lo, hi) = m.range;
    let span = if hi > lo { hi - lo } else { 1.0 };
    area.draw(&Text::new(m.title.clone(), (left, 8), font(16))).map_err(err)?;
    for (r, row) in m.values.iter().enumerate() {
        for (c, v) in row.iter().enumerate() {
            let Some(v) = v else { continue };
            let (x0, y0, x1, y1) = (x_of(c), y_of(r), x_of(c + 1).max(x_of(c) + 1), y_of(r + 1).max(y_of(r) + 1));
            let color = heat_color((v - lo) / span);
            area.draw(&Rectangle::new([(x0, y0), (x1, y1)], color.filled())).map_err(err)?;
            if let Some(fmt) = m.annotate {
                let text_color = if (v - lo) / span > 0.55 { WHITE } else { BLACK };
                let style =
                    ("sans-serif", 13).into_font().color(&text_color).pos(plotters::style::text_anchor::Pos::new(
                        plotters::style::text_anchor::HPos::Center,
                        plotters::style::text_anchor::VPos::Center,
                    ));
                area.draw(&Text::new(fmt(*v), ((x0 + x1) / 2, (y0 + y1) / 2), style)).map_err(err)?;
            }
        }
    }
    area.draw(&Rectangle::new([(left, top), (left + pw, top + ph)], BLACK.stroke_width(1))).map_err(err)?;
    let centered = |size: u32| {
        ("sans-serif", size).into_font().color(&BLACK).pos(plotters::style::text_anchor::Pos::new(
            plotters::style::text_anchor::HPos::Center,
            plotters::style::text_anchor::VPos::Top,
        ))
    };
    for (c, label) in &m.x_ticks {
        let x = (x_of(*c) + x_of(c + 1)) / 2;
        area.draw(&PathElement::new(vec![(x, top + ph), (x, top + ph + 4)], BLACK)).map_err(err)?;
        area.draw(&Text::new(label.clone(), (x, top + ph + 6), centered(12))).map_err(err)?;
    }
    area.draw(&Text::new(m.x_label.clone(), (left + pw / 2, top + ph + 26), centered(13))).map_err(err)?;
    let right_aligned = ("sans-serif", 12).into_font().color(&BLACK).pos(plotters::style::text_anchor::Pos::new(
        plotters::style::text_anchor::HPos::Right,
        plotters::style::text_anchor::VPos::Center,
    ));
    for (r, label) in &m.y_ticks {
        let y = (y_of(*r) + y_of(r + 1)) / 2;
        area.draw(&PathElement::new(vec![(left - 4, y), (left, y)], BLACK)).map_err(err)?;
        area.draw(&Text::new(label.clone(), (left - 6, y), right_aligned.clone())).map_err(err)?;
    }
    let vertical = ("sans-serif", 13).into_font().color(&BLACK).transform(FontTransform::Rotate270).pos(
        plotters::style::text_anchor::Pos::new(
            plotters::style::text_anchor::HPos::Center,
            plotters::style::text_anchor::VPos::Top,
        ),
    );
    area.draw(&Text::new(m.y_label.clone(), (4, top + ph / 2), vertical)).map_err(err)?;
    // The colour scale, right of the panel, `hi` on top.
    let (sx, steps) = (left + pw + 14, 40);
    for i in 0..steps {
        let f = 1.0 - i as f64 / steps as f64;
        let (y0, y1) = (top + ph * i / steps, top + ph * (i + 1) / steps);
        area.draw(&Rectangle::new([(sx, y0), (sx + 12, y1.max(y0 + 1))], heat_color(f).filled())).map_err(err)?;
    }
    area.draw(&Text::new(significant(hi), (sx + 15, top), font(11))).map_err(err)?;
    area.draw(&Text::new(significant(lo), (sx + 15, top + ph - 11), font(11))).map_err(err)?;
    Ok(())
}

/// Five to eight round ticks (1, 2 or 5 times a power of ten apart) over [lo, hi].
fn linear_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let raw = (hi - lo) / 6.0;
    let p = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * p).find(|s| *s >= raw).unwrap_or(10.0 * p);
    let mut t = Vec::new();
    let mut v = (lo / step).ceil() * step;
    while v <= hi + step * 1e-9 {
        t.push(if v.abs() < step * 1e-9 { 0.0 } else { v });
        v += step;
    }
    t
}

/// Round numbers inside [lo, hi] for a log axis: 1-2-5 steps per decade, finer when the range is
/// narrow, so that at least four ticks show.
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let steps: [&[f64]; 3] = [
        &[1.0, 2.0, 5.0],
        &[1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0],
        &[
            1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8, 1.9, 2.0, 2.2, 2.4, 2.6, 2.8, 3.0, 3.3, 3.6, 4.0, 4.5, 5.0,
            5.5, 6.0, 6.5, 7.0, 7.5, 8.0, 8.5, 9.0, 9.5,
        ],
    ];
    let mut best = Vec::new();
    for ms in steps {
        let mut t = Vec::new();
        let mut e = lo.log10().floor() as i32 - 1;
        while 10f64.powi(e) <= hi * 10.0 {
            for m in ms {
                let v = m * 10f64.powi(e);
                if v >= lo / 1.1 && v <= hi * 1.1 {
                    t.push(v);
                }
            }
            e += 1;
        }
        best = t;
        if best.len() >= 4 {
            break;
        }
    }
    best
}

/// Up to three significant digits, no trailing zeros: 12.5, 40, 0.25, 1200.
fn significant(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let digits = (2 - v.abs().log10().floor() as i32).max(0) as usize;
    let s = format!("{v:.digits$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_and_labels_are_round() {
        assert_eq!(log_ticks(12.0, 600.0), vec![20.0, 50.0, 100.0, 200.0, 500.0]);
        let t = log_ticks(36.0, 80.0);
        assert!(t.len() >= 4 && t.iter().all(|&v| (32.0..=88.0).contains(&v)), "{t:?}");
        assert_eq!(significant(12.5), "12.5");
        assert_eq!(significant(40.0), "40");
        assert_eq!(significant(1234.0), "1234");
        assert_eq!(significant(0.25), "0.25");
        assert_eq!(linear_ticks(0.0, 10.8), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
    }
}
