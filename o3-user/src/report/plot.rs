//! Charts as SVG text (plotters' SVG backend: no fonts loaded, no bitmaps). A chart is plain
//! data — series of points, threshold lines, labelled markers — so what the report draws can be
//! tested without parsing SVG.

use plotters::chart::SeriesAnno;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

/// An RGB colour.
pub type Rgb = (u8, u8, u8);

pub const BLUE: Rgb = (31, 119, 180);
pub const ORANGE: Rgb = (255, 127, 14);
pub const GREEN: Rgb = (44, 160, 44);
pub const RED: Rgb = (214, 39, 40);
pub const PURPLE: Rgb = (148, 103, 189);
pub const GREY: Rgb = (127, 127, 127);
/// Colours for series in order.
pub const PALETTE: [Rgb; 5] = [BLUE, ORANGE, GREEN, PURPLE, (140, 86, 75)];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Lines through each segment's points.
    Line,
    /// Markers only.
    Points,
    /// Lines with markers.
    LinePoints,
    /// A dashed line through the points (a path, e.g. the order probes ran in).
    Dashed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker {
    Circle,
    /// A failure.
    Cross,
    /// A peak.
    Triangle,
}

#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub color: Rgb,
    pub style: Style,
    pub marker: Marker,
    /// Unconnected runs of points (a gap between probes breaks a timeline).
    pub segments: Vec<Vec<(f64, f64)>>,
    /// Text drawn next to a point.
    pub labels: Vec<(f64, f64, String)>,
}

impl Series {
    pub fn new(name: impl Into<String>, color: Rgb, style: Style) -> Series {
        Series {
            name: name.into(),
            color,
            style,
            marker: Marker::Circle,
            segments: Vec::new(),
            labels: Vec::new(),
        }
    }

    pub fn points(mut self, pts: Vec<(f64, f64)>) -> Series {
        if !pts.is_empty() {
            self.segments.push(pts);
        }
        self
    }

    pub fn marker(mut self, m: Marker) -> Series {
        self.marker = m;
        self
    }

    pub fn is_empty(&self) -> bool {
        self.segments.iter().all(Vec::is_empty)
    }

    fn all(&self) -> impl Iterator<Item = (f64, f64)> + '_ {
        self.segments.iter().flatten().copied()
    }
}

/// The x range and the y range of a chart, low to high.
type Ranges = ((f64, f64), (f64, f64));

/// A horizontal or vertical reference line (a safety threshold, the validated maximum).
#[derive(Debug, Clone)]
pub struct Rule {
    pub label: String,
    pub at: f64,
    pub color: Rgb,
}

#[derive(Debug, Clone, Default)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    pub hrules: Vec<Rule>,
    pub vrules: Vec<Rule>,
    /// x values are log2 of the quantity; ticks show the quantity (batch sizes).
    pub x_log2: bool,
}

impl Chart {
    pub fn new(title: &str, x_label: &str, y_label: &str) -> Chart {
        Chart {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            ..Chart::default()
        }
    }

    /// Adds a series unless it has no points.
    pub fn add(&mut self, s: Series) {
        if !s.is_empty() {
            self.series.push(s);
        }
    }

    /// Whether there is anything to draw.
    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    /// More points in the upper-right corner, where the legend goes, than in the upper-left.
    fn crowded_upper_right(&self) -> bool {
        let ((x0, x1), (_, y1)) = self.ranges();
        let (mut left, mut right) = (0, 0);
        for (x, y) in self.series.iter().flat_map(Series::all) {
            if y > y1 * 0.6 {
                if x > x0 + (x1 - x0) * 0.65 {
                    right += 1;
                } else if x < x0 + (x1 - x0) * 0.35 {
                    left += 1;
                }
            }
        }
        right > left
    }

    /// The drawn ranges: every point and rule inside, y from 0, 5 % headroom.
    fn ranges(&self) -> Ranges {
        let pts = self.series.iter().flat_map(Series::all);
        let (mut x0, mut x1, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, 0.0f64);
        for (x, y) in pts {
            x0 = x0.min(x);
            x1 = x1.max(x);
            y1 = y1.max(y);
        }
        for r in &self.vrules {
            x0 = x0.min(r.at);
            x1 = x1.max(r.at);
        }
        for r in &self.hrules {
            y1 = y1.max(r.at);
        }
        if !x0.is_finite() {
            (x0, x1) = (0.0, 1.0);
        }
        if x1 - x0 < 1e-9 {
            (x0, x1) = (x0 - 0.5, x1 + 0.5);
        }
        let pad = (x1 - x0) * 0.04;
        if y1 <= 0.0 {
            y1 = 1.0;
        }
        ((x0 - pad, x1 + pad), (0.0, y1 * 1.12))
    }
}

fn color(c: Rgb) -> RGBColor {
    RGBColor(c.0, c.1, c.2)
}

/// Short tick labels: 1.5k, 2M.
pub fn short(v: f64) -> String {
    let a = v.abs();
    let (n, unit) = if a >= 1e9 {
        (v / 1e9, "G")
    } else if a >= 1e6 {
        (v / 1e6, "M")
    } else if a >= 1e4 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    // No "-0" for a tick a rounding error put below zero.
    let n = if n.abs() < 5e-3 { 0.0 } else { n };
    let s = if n.fract().abs() < 1e-9 || n.abs() >= 100.0 {
        format!("{n:.0}")
    } else if n.abs() >= 10.0 {
        format!("{n:.1}")
    } else {
        format!("{n:.2}")
    };
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    };
    format!("{s}{unit}")
}

/// Renders the chart as an `<svg>` element of `w`×`h` pixels.
pub fn svg(c: &Chart, w: u32, h: u32) -> String {
    let mut out = String::new();
    // Drawing into a String cannot fail for I/O reasons; a plotters error is a bug here.
    draw(c, w, h, &mut out).expect("drawing an SVG chart into memory");
    // The XML declaration is not allowed inside HTML; the <svg> element is all that is needed.
    match out.find("<svg") {
        Some(i) => out[i..].to_string(),
        None => out,
    }
}

/// A linear x axis with ticks where the chart wants them (plotters' own choice cannot be told
/// to keep to powers of two).
struct Axis {
    lo: f64,
    hi: f64,
    ticks: Vec<f64>,
}

impl plotters::coord::ranged1d::Ranged for Axis {
    type FormatOption = plotters::coord::ranged1d::DefaultFormatting;
    type ValueType = f64;

    fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
        let f = (v - self.lo) / (self.hi - self.lo);
        limit.0 + (f * f64::from(limit.1 - limit.0)).round() as i32
    }

    fn key_points<H: plotters::coord::ranged1d::KeyPointHint>(&self, _hint: H) -> Vec<f64> {
        self.ticks.clone()
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.lo..self.hi
    }
}

/// Tick positions: whole powers of two on a log2 axis, else 1-2-5 steps, about 8 of them.
fn x_ticks(c: &Chart, x0: f64, x1: f64) -> Vec<f64> {
    let step = if c.x_log2 {
        ((x1 - x0) / 10.0).ceil().max(1.0)
    } else {
        let raw = (x1 - x0) / 8.0;
        let mag = 10f64.powf(raw.log10().floor());
        [1.0, 2.0, 2.5, 5.0, 10.0]
            .iter()
            .map(|m| m * mag)
            .find(|s| *s >= raw)
            .unwrap_or(10.0 * mag)
    };
    let mut v = Vec::new();
    let mut t = (x0 / step).ceil() * step;
    while t <= x1 + 1e-9 && v.len() < 64 {
        v.push(t);
        t += step;
    }
    v
}

/// What plotters reports (an SVG in memory has no I/O to fail: a plotters bug).
type DrawError = plotters::drawing::DrawingAreaErrorKind<std::io::Error>;
type DrawResult = Result<(), DrawError>;

/// The plotting area of a chart, in data coordinates.
type Plot<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<Axis, RangedCoordf64>>;

/// The chart into `out`: axes, threshold lines, series, legend, in that order (later ones are
/// drawn over earlier ones).
fn draw(c: &Chart, w: u32, h: u32, out: &mut String) -> DrawResult {
    let root = SVGBackend::with_string(out, (w, h)).into_drawing_area();
    root.fill(&WHITE)?;
    let ranges = c.ranges();
    let mut chart = axes(c, &root, ranges)?;
    for r in &c.hrules {
        draw_hrule(&mut chart, r, ranges)?;
    }
    for r in &c.vrules {
        draw_vrule(&mut chart, r, ranges)?;
    }
    for s in &c.series {
        draw_series(&mut chart, s)?;
    }
    draw_legend(&mut chart, c)?;
    root.present()?;
    Ok(())
}

/// The caption, the axes with their ticks and labels, and the grid.
fn axes<'a, 'b>(
    c: &Chart,
    root: &DrawingArea<SVGBackend<'b>, plotters::coord::Shift>,
    ((x0, x1), (y0, y1)): Ranges,
) -> Result<Plot<'a, 'b>, DrawError> {
    let mut chart = ChartBuilder::on(root)
        .caption(&c.title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(42)
        .y_label_area_size(64)
        .build_cartesian_2d(
            Axis {
                lo: x0,
                hi: x1,
                ticks: x_ticks(c, x0, x1),
            },
            y0..y1,
        )?;
    let log2 = c.x_log2;
    let fmt_x = move |v: &f64| {
        if log2 {
            short(2f64.powf(*v).round())
        } else {
            short(*v)
        }
    };
    let fmt_y = |v: &f64| short(*v);
    let mut mesh = chart.configure_mesh();
    mesh.x_desc(c.x_label.as_str())
        .y_desc(c.y_label.as_str())
        .x_label_formatter(&fmt_x)
        .y_label_formatter(&fmt_y)
        .light_line_style(TRANSPARENT)
        .bold_line_style(RGBColor(215, 215, 215))
        .label_style(("sans-serif", 12));
    mesh.draw()?;
    Ok(chart)
}

/// A dashed horizontal line across the chart, labelled at its left end.
fn draw_hrule(chart: &mut Plot, r: &Rule, ((x0, x1), _): Ranges) -> DrawResult {
    let style = color(r.color).stroke_width(1);
    chart.draw_series(DashedLineSeries::new(
        vec![(x0, r.at), (x1, r.at)],
        6,
        4,
        style,
    ))?;
    chart.draw_series(std::iter::once(Text::new(
        r.label.clone(),
        (x0 + (x1 - x0) * 0.01, r.at),
        ("sans-serif", 12).into_font().color(&color(r.color)),
    )))?;
    Ok(())
}

/// A dashed vertical line up the chart, labelled near its foot.
fn draw_vrule(chart: &mut Plot, r: &Rule, ((x0, x1), (y0, y1)): Ranges) -> DrawResult {
    let style = color(r.color).stroke_width(1);
    chart.draw_series(DashedLineSeries::new(
        vec![(r.at, y0), (r.at, y1)],
        6,
        4,
        style,
    ))?;
    chart.draw_series(std::iter::once(Text::new(
        r.label.clone(),
        (vrule_label_x(r, x0, x1), y1 * 0.05),
        ("sans-serif", 12).into_font().color(&color(r.color)),
    )))?;
    Ok(())
}

/// Where a vertical rule's label starts: right of the line, or left of it near the right edge,
/// so the text stays inside.
fn vrule_label_x(r: &Rule, x0: f64, x1: f64) -> f64 {
    let right_half = r.at > x0 + (x1 - x0) * 0.6;
    if right_half {
        r.at - (x1 - x0) * (0.012 * r.label.chars().count() as f64 + 0.01)
    } else {
        r.at + (x1 - x0) * 0.01
    }
}

/// Each segment of the series as its style says, the legend entry once (on the first segment
/// drawn), then the series' text labels.
fn draw_series(chart: &mut Plot, s: &Series) -> DrawResult {
    let col = color(s.color);
    let mut legend_drawn = false;
    for seg in &s.segments {
        let line = draw_line(chart, s.style, col, seg)?;
        let anno = if matches!(s.style, Style::Points | Style::LinePoints) {
            Some(draw_markers(chart, s.marker, col, seg)?)
        } else {
            line
        };
        if let (Some(a), false) = (anno, legend_drawn) {
            legend_drawn = true;
            let name = s.name.clone();
            a.label(name).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], col.stroke_width(2))
            });
        }
    }
    chart.draw_series(s.labels.iter().map(|(x, y, t)| {
        Text::new(
            t.clone(),
            (*x, *y),
            ("sans-serif", 11).into_font().color(&col),
        )
    }))?;
    Ok(())
}

/// The line through a segment (none for a `Points` series), as an annotation for the legend.
fn draw_line<'c, 'a, 'b>(
    chart: &'c mut Plot<'a, 'b>,
    style: Style,
    col: RGBColor,
    seg: &[(f64, f64)],
) -> Result<Option<&'c mut SeriesAnno<'a, SVGBackend<'b>>>, DrawError> {
    Ok(match style {
        Style::Line | Style::LinePoints => {
            Some(chart.draw_series(LineSeries::new(seg.iter().copied(), col.stroke_width(2)))?)
        }
        Style::Dashed => Some(chart.draw_series(DashedLineSeries::new(
            seg.iter().copied(),
            5,
            4,
            col.stroke_width(1),
        ))?),
        Style::Points => None,
    })
}

/// A marker on each point of a segment, as an annotation for the legend.
fn draw_markers<'c, 'a, 'b>(
    chart: &'c mut Plot<'a, 'b>,
    marker: Marker,
    col: RGBColor,
    seg: &[(f64, f64)],
) -> Result<&'c mut SeriesAnno<'a, SVGBackend<'b>>, DrawError> {
    Ok(match marker {
        Marker::Circle => chart.draw_series(
            seg.iter()
                .map(|p| Circle::new(*p, 3, col.filled()).into_dyn()),
        )?,
        Marker::Cross => chart.draw_series(
            seg.iter()
                .map(|p| Cross::new(*p, 5, col.stroke_width(2)).into_dyn()),
        )?,
        Marker::Triangle => chart.draw_series(
            seg.iter()
                .map(|p| TriangleMarker::new(*p, 6, col.filled()).into_dyn()),
        )?,
    })
}

/// The legend, in the upper corner with fewer points under it.
fn draw_legend<'a, 'b: 'a>(chart: &mut Plot<'a, 'b>, c: &Chart) -> DrawResult {
    let corner = if c.crowded_upper_right() {
        SeriesLabelPosition::UpperLeft
    } else {
        SeriesLabelPosition::UpperRight
    };
    chart
        .configure_series_labels()
        .position(corner)
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(200, 200, 200))
        .label_font(("sans-serif", 12))
        .draw()?;
    Ok(())
}

/// At most `max` points per segment: each bucket of consecutive points keeps its lowest and
/// highest, in time order, so peaks survive the thinning.
pub fn thin(pts: &[(f64, f64)], max: usize) -> Vec<(f64, f64)> {
    if pts.len() <= max || max < 4 {
        return pts.to_vec();
    }
    let buckets = max / 2;
    let per = pts.len().div_ceil(buckets);
    let mut out = Vec::with_capacity(max);
    for b in pts.chunks(per) {
        let lo = b
            .iter()
            .enumerate()
            .min_by(|a, c| a.1 .1.total_cmp(&c.1 .1))
            .map(|(i, _)| i)
            .unwrap_or(0);
        let hi = b
            .iter()
            .enumerate()
            .max_by(|a, c| a.1 .1.total_cmp(&c.1 .1))
            .map(|(i, _)| i)
            .unwrap_or(0);
        let (i, j) = (lo.min(hi), lo.max(hi));
        out.push(b[i]);
        if j != i {
            out.push(b[j]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_labels() {
        assert_eq!(short(0.0), "0");
        assert_eq!(short(512.0), "512");
        assert_eq!(short(2.5), "2.5");
        assert_eq!(short(32768.0), "32.8k");
        assert_eq!(short(131072.0), "131k");
        assert_eq!(short(1_500_000.0), "1.5M");
        assert_eq!(short(-0.0001), "0");
    }

    #[test]
    fn thinning_keeps_the_peak_and_the_order() {
        let pts: Vec<(f64, f64)> = (0..10_000)
            .map(|i| {
                (
                    f64::from(i),
                    if i == 7777 { 1e6 } else { f64::from(i % 13) },
                )
            })
            .collect();
        let t = thin(&pts, 500);
        assert!(t.len() <= 500, "{}", t.len());
        assert!(t.contains(&(7777.0, 1e6)));
        assert!(t.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(thin(&pts[..10], 500).len(), 10);
    }

    #[test]
    fn a_chart_renders_its_series_rules_and_labels() {
        let mut c = Chart::new("Rates <by> context", "context (tokens)", "tokens/s");
        c.add(
            Series::new("decode", BLUE, Style::LinePoints)
                .points(vec![(512.0, 900.0), (4096.0, 800.0)]),
        );
        let mut fails = Series::new("failed", RED, Style::Points)
            .marker(Marker::Cross)
            .points(vec![(8192.0, 0.0)]);
        fails.labels.push((8192.0, 0.0, "3".into()));
        c.add(fails);
        c.add(Series::new("empty", GREEN, Style::Line));
        c.hrules.push(Rule {
            label: "limit".into(),
            at: 1000.0,
            color: RED,
        });
        c.vrules.push(Rule {
            label: "validated 4096".into(),
            at: 4096.0,
            color: GREEN,
        });
        let s = svg(&c, 640, 360);
        assert!(s.starts_with("<svg"), "{}", &s[..80]);
        assert!(s.trim_end().ends_with("</svg>"));
        assert!(
            s.contains("Rates &lt;by&gt; context"),
            "the title is escaped"
        );
        for t in ["decode", "failed", "limit", "validated 4096", "\n3\n"] {
            assert!(s.contains(t), "{t} missing");
        }
        assert!(!s.contains("empty"), "an empty series is not drawn");
        assert_eq!(c.series.len(), 2);
    }

    #[test]
    fn a_vertical_rules_label_stays_inside_the_chart() {
        let rule = |at: f64| Rule {
            label: "validated 4096".into(),
            at,
            color: GREEN,
        };
        // Left of 60 % of the width: the label starts just right of the line.
        assert_eq!(vrule_label_x(&rule(20.0), 0.0, 100.0), 21.0);
        // Right of it: the label ends before the line (14 characters × 1.2 % + 1 %).
        assert!((vrule_label_x(&rule(90.0), 0.0, 100.0) - (90.0 - 17.8)).abs() < 1e-9);
    }

    #[test]
    fn log2_axis_labels_show_the_quantity() {
        let mut c = Chart::new("Batch", "batch", "tokens/s");
        c.x_log2 = true;
        c.add(Series::new("prefill", BLUE, Style::LinePoints).points(vec![(4.0, 1.0), (8.0, 2.0)]));
        let s = svg(&c, 640, 360);
        assert!(s.contains("\n16\n") && s.contains("\n256\n"), "{s}");
        assert!(!s.contains("\n18\n"), "ticks only at powers of two");
    }
}
