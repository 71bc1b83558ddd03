//! Charts as SVG text (plotters' SVG backend: no fonts loaded, no bitmaps). A chart is plain
//! data — series of points, threshold lines, labelled markers — so what the report draws can be
//! tested without parsing SVG.

use plotters::chart::SeriesAnno;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

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
    /// x is a count (streams, tokens): ticks only at whole numbers.
    pub x_count: bool,
}

/// Fewest distinct x positions worth a chart: with fewer there is no curve to see, and the
/// points are given as a short table instead (see [`Chart::point_rows`]).
pub const MIN_X_POSITIONS: usize = 2;

/// The least share of the height the data keeps under a horizontal rule: a rule more than
/// `1 / MIN_DATA_SHARE` times the data's highest value is named at the top edge instead of
/// stretching the axis to it (the data would be squashed flat at the bottom).
pub const MIN_DATA_SHARE: f64 = 0.25;

/// Whether a horizontal rule at `at` is drawn on the y axis with data up to `data_max`: yes
/// unless it would leave the data less than [`MIN_DATA_SHARE`] of the height. Without data the
/// rule sets the scale.
pub fn rule_on_scale(data_max: f64, at: f64) -> bool {
    data_max <= 0.0 || data_max >= at * MIN_DATA_SHARE
}

/// The note at the top edge for a rule above the plot's scale.
pub fn off_scale_note(r: &Rule) -> String {
    format!("↑ {} is above the plot", r.label)
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

    /// How many distinct x positions the series' points take.
    pub fn x_positions(&self) -> usize {
        let mut xs: Vec<f64> = self
            .series
            .iter()
            .flat_map(Series::all)
            .map(|p| p.0)
            .collect();
        xs.sort_by(f64::total_cmp);
        xs.dedup();
        xs.len()
    }

    /// Too few positions for a chart (but something to say): the report gives the points as a
    /// table instead.
    pub fn too_few_points(&self) -> bool {
        !self.is_empty() && self.x_positions() < MIN_X_POSITIONS
    }

    /// The points as table rows under [`Chart::point_head`]: series, x as the axis shows it, y
    /// ("–" for a failure, which is drawn at 0).
    pub fn point_rows(&self) -> Vec<Vec<String>> {
        let mut rows = Vec::new();
        for s in &self.series {
            for (x, y) in s.all() {
                let x = if self.x_log2 { 2f64.powf(x).round() } else { x };
                let y = if s.marker == Marker::Cross {
                    "–".to_string()
                } else {
                    cell(y)
                };
                rows.push(vec![s.name.clone(), cell(x), y]);
            }
        }
        rows
    }

    /// The header of [`Chart::point_rows`].
    pub fn point_head(&self) -> [&str; 3] {
        ["", &self.x_label, &self.y_label]
    }

    /// `ranges` with the y range raised, where needed, so the points under the legend's corner
    /// stay below its box (about 17 px per entry hung from the top of the plot area of a
    /// `w`×`h` chart, as wide as its longest name), and the legend hides no data.
    fn legend_room(&self, ((x0, x1), (y0, y1)): Ranges, w: u32, h: u32) -> Ranges {
        // The plot area: the chart less the caption, margins and axis label areas.
        let (plot_w, plot_h) = (
            f64::from(w.saturating_sub(90).max(100)),
            f64::from(h.saturating_sub(100).max(100)),
        );
        let share = (self.series.len() as f64 * 17.0 + 16.0) / plot_h;
        let longest = self.series.iter().map(|s| s.name.chars().count()).max();
        let span = (longest.unwrap_or(0) as f64 * 7.0 + 50.0) / plot_w * (x1 - x0);
        if share >= 0.5 {
            return ((x0, x1), (y0, y1));
        }
        let left = self.crowded_upper_right();
        let under = self
            .series
            .iter()
            .flat_map(Series::all)
            .filter(|(x, _)| if left { *x < x0 + span } else { *x > x1 - span })
            .map(|p| p.1)
            .fold(0.0, f64::max);
        ((x0, x1), (y0, y1.max(under / (1.0 - share))))
    }

    /// The series' highest y value (0 without points).
    fn data_y_max(&self) -> f64 {
        self.series
            .iter()
            .flat_map(Series::all)
            .map(|p| p.1)
            .fold(0.0, f64::max)
    }

    /// Horizontal rules drawn on the scale, and those only named at the top edge.
    pub fn split_hrules(&self) -> (Vec<&Rule>, Vec<&Rule>) {
        let top = self.data_y_max();
        self.hrules.iter().partition(|r| rule_on_scale(top, r.at))
    }

    /// More points in the upper-right corner, where the legend goes, than in the upper-left;
    /// as many: the higher point there (the legend box hangs from the top).
    fn crowded_upper_right(&self) -> bool {
        let ((x0, x1), (_, y1)) = self.ranges();
        let (mut left, mut right) = ((0, 0.0f64), (0, 0.0f64));
        for (x, y) in self.series.iter().flat_map(Series::all) {
            if y > y1 * 0.6 {
                let corner = if x > x0 + (x1 - x0) * 0.65 {
                    &mut right
                } else if x < x0 + (x1 - x0) * 0.35 {
                    &mut left
                } else {
                    continue;
                };
                *corner = (corner.0 + 1, corner.1.max(y));
            }
        }
        right.0 > left.0 || (right.0 == left.0 && right.1 > left.1)
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
        for r in self.split_hrules().0 {
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

/// A value in a table cell: whole numbers as they are, others to one decimal.
fn cell(v: f64) -> String {
    if v.fract().abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// Short tick labels: 1.5k, 2M.
pub fn short(v: f64) -> String {
    short_on(v, v)
}

/// A tick label in the unit that suits the axis' largest value `top`, so one axis does not read
/// "8000, 9000, 10k".
pub fn short_on(v: f64, top: f64) -> String {
    let a = top.abs();
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
    // Zero needs no unit.
    let unit = if n == 0.0 { "" } else { unit };
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

/// Tick positions: whole powers of two on a log2 axis, else 1-2-5 steps, about 8 of them;
/// whole numbers only on a count axis (no 1.5 streams).
fn x_ticks(c: &Chart, x0: f64, x1: f64) -> Vec<f64> {
    let step = if c.x_log2 {
        ((x1 - x0) / 10.0).ceil().max(1.0)
    } else {
        let raw = (x1 - x0) / 8.0;
        let mut mag = 10f64.powf(raw.log10().floor());
        let steps: &[f64] = if c.x_count {
            mag = mag.max(1.0);
            &[1.0, 2.0, 5.0, 10.0]
        } else {
            &[1.0, 2.0, 2.5, 5.0, 10.0]
        };
        steps
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
    let ranges = c.legend_room(c.ranges(), w, h);
    let mut chart = axes(c, &root, ranges)?;
    let (on_scale, above) = c.split_hrules();
    for r in &on_scale {
        draw_hrule(&mut chart, r, ranges)?;
    }
    for r in &c.vrules {
        draw_vrule(&mut chart, r, ranges)?;
    }
    for s in &c.series {
        draw_series(&mut chart, s)?;
    }
    // The rules' names over the data, so a series along a rule does not hide its name.
    for r in &on_scale {
        draw_hrule_label(&mut chart, r, ranges)?;
    }
    draw_above(&mut chart, c, &above, ranges)?;
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
    let x_top = x0.abs().max(x1.abs());
    let fmt_x = move |v: &f64| {
        if log2 {
            // Powers of two each in their own unit: 2048, not 2.05k.
            short(2f64.powf(*v).round())
        } else {
            short_on(*v, x_top)
        }
    };
    let fmt_y = move |v: &f64| short_on(*v, y1);
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

/// A dashed horizontal line across the chart (its name comes after the series).
fn draw_hrule(chart: &mut Plot, r: &Rule, ((x0, x1), _): Ranges) -> DrawResult {
    let style = color(r.color).stroke_width(1);
    chart.draw_series(DashedLineSeries::new(
        vec![(x0, r.at), (x1, r.at)],
        6,
        4,
        style,
    ))?;
    Ok(())
}

/// A horizontal rule's name, at its left end, just above the line (the headroom above the
/// highest rule holds it).
fn draw_hrule_label(chart: &mut Plot, r: &Rule, ((x0, x1), _): Ranges) -> DrawResult {
    chart.draw_series(std::iter::once(Text::new(
        r.label.clone(),
        (x0 + (x1 - x0) * 0.01, r.at),
        ("sans-serif", 12)
            .into_font()
            .color(&color(r.color))
            .pos(Pos::new(HPos::Left, VPos::Bottom)),
    )))?;
    Ok(())
}

/// The rules above the plot's scale, named at its top edge, one line each, in the corner the
/// legend leaves free.
fn draw_above(
    chart: &mut Plot,
    c: &Chart,
    above: &[&Rule],
    ((x0, x1), (_, y1)): Ranges,
) -> DrawResult {
    let right = c.crowded_upper_right();
    let (x, h) = if right {
        (x1 - (x1 - x0) * 0.01, HPos::Right)
    } else {
        (x0 + (x1 - x0) * 0.01, HPos::Left)
    };
    for (i, r) in above.iter().enumerate() {
        let font = ("sans-serif", 12)
            .into_font()
            .color(&color(r.color))
            .pos(Pos::new(h, VPos::Top));
        let y = y1 * (0.99 - 0.05 * i as f64);
        chart.draw_series(std::iter::once(Text::new(off_scale_note(r), (x, y), font)))?;
    }
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

/// Each segment of the series as its style says (a segment of one point as its marker), the
/// legend entry once (on the first segment drawn), then the series' text labels.
fn draw_series<'a, 'b: 'a>(chart: &mut Plot<'a, 'b>, s: &Series) -> DrawResult {
    let col = color(s.color);
    let mut legend_drawn = false;
    for seg in &s.segments {
        let line = draw_line(chart, s.style, col, seg)?;
        // A line through one point draws nothing: its marker shows where it is.
        let anno = if matches!(s.style, Style::Points | Style::LinePoints) || seg.len() == 1 {
            Some(draw_markers(chart, s.marker, col, seg)?)
        } else {
            line
        };
        if let (Some(a), false) = (anno, legend_drawn) {
            legend_drawn = true;
            legend_entry(a, s, col);
        }
    }
    chart.draw_series(s.labels.iter().map(|(x, y, t)| {
        Text::new(
            t.clone(),
            (*x, *y),
            ("sans-serif", 11)
                .into_font()
                .color(&col)
                .pos(label_anchor(*y)),
        )
    }))?;
    Ok(())
}

/// Where a point's text hangs: below the point, except on the x axis (y = 0: a probe's start, a
/// failure), where the tick labels would hide it: there above.
fn label_anchor(y: f64) -> Pos {
    let v = if y <= 0.0 { VPos::Bottom } else { VPos::Top };
    Pos::new(HPos::Left, v)
}

/// A series' legend entry: its marker for a series of markers only (a failure is a cross
/// there too), else a short line.
fn legend_entry<'a, 'b: 'a>(a: &mut SeriesAnno<'a, SVGBackend<'b>>, s: &Series, col: RGBColor) {
    let e = a.label(s.name.clone());
    match (s.style, s.marker) {
        (Style::Points, Marker::Cross) => {
            e.legend(move |(x, y)| Cross::new((x + 9, y), 5, col.stroke_width(2)))
        }
        (Style::Points, Marker::Triangle) => {
            e.legend(move |(x, y)| TriangleMarker::new((x + 9, y), 6, col.filled()))
        }
        (Style::Points, Marker::Circle) => {
            e.legend(move |(x, y)| Circle::new((x + 9, y), 3, col.filled()))
        }
        _ => {
            e.legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], col.stroke_width(2)))
        }
    };
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
        // One unit along an axis that reaches 10k.
        assert_eq!(short_on(9000.0, 10_500.0), "9k");
        assert_eq!(short_on(2500.0, 10_500.0), "2.5k");
        assert_eq!(short_on(0.0, 10_500.0), "0");
        assert_eq!(short_on(9000.0, 9_500.0), "9000");
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

    /// The tick labels of the x axis: the text elements of the SVG just above its bottom edge.
    fn numbers_in(svg: &str) -> Vec<String> {
        svg.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_digit() || c == '.'))
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn a_count_axis_ticks_only_whole_numbers() {
        let mut c = Chart::new("Streams", "simultaneous streams", "tokens/s");
        c.x_count = true;
        // Levels 1 and 2: a linear axis would tick every 0.1 (1.1, 1.2, ...).
        assert_eq!(x_ticks(&c, 0.96, 2.04), vec![1.0, 2.0]);
        // A single level: one tick, at it.
        assert_eq!(x_ticks(&c, 1.5, 2.5), vec![2.0]);
        // Wide ranges keep 1-2-5 steps of whole numbers.
        assert_eq!(
            x_ticks(&c, 0.0, 40.0),
            (0..=8).map(|i| f64::from(i) * 5.0).collect::<Vec<_>>()
        );
        c.x_count = false;
        assert!(x_ticks(&c, 0.96, 2.04).iter().any(|t| t.fract() != 0.0));
        // Drawn: the labels under the axis are whole numbers.
        c.x_count = true;
        c.add(
            Series::new("ctx 1536", BLUE, Style::LinePoints)
                .points(vec![(1.0, 157.0), (2.0, 30.0)]),
        );
        let s = svg(&c, 640, 360);
        assert!(
            !numbers_in(&s).iter().any(|n| n.contains('.')),
            "{:?}",
            numbers_in(&s)
        );
    }

    #[test]
    fn one_x_position_is_too_few_for_a_chart() {
        let mut c = Chart::new("Streams", "simultaneous streams", "tokens/s");
        assert!(
            !c.too_few_points(),
            "an empty chart is left out, not tabulated"
        );
        c.add(Series::new("ctx 4096", BLUE, Style::LinePoints).points(vec![(2.0, 96.1)]));
        c.add(
            Series::new("failed", RED, Style::Points)
                .marker(Marker::Cross)
                .points(vec![(2.0, 0.0)]),
        );
        assert_eq!(c.x_positions(), 1);
        assert!(c.too_few_points());
        assert_eq!(c.point_head(), ["", "simultaneous streams", "tokens/s"]);
        assert_eq!(
            c.point_rows(),
            vec![
                vec!["ctx 4096".to_string(), "2".into(), "96.1".into()],
                vec!["failed".to_string(), "2".into(), "–".into()],
            ]
        );
        c.add(Series::new("ctx 8192", GREEN, Style::LinePoints).points(vec![(1.0, 50.0)]));
        assert!(!c.too_few_points(), "two levels make a curve");
        // A log2 axis gives the quantity.
        let mut b = Chart::new("Batch", "batch", "tokens/s");
        b.x_log2 = true;
        b.add(Series::new("ctx 512", BLUE, Style::LinePoints).points(vec![(6.0, 307.5)]));
        assert_eq!(b.point_rows()[0][1], "64");
    }

    #[test]
    fn a_limit_far_above_the_data_is_named_at_the_top_instead_of_drawn() {
        // The data keeps at least a quarter of the height under a rule.
        assert!(rule_on_scale(2.4, 9.6));
        assert!(!rule_on_scale(2.4, 9.7));
        assert!(
            rule_on_scale(0.0, 20.0),
            "without data the rule sets the scale"
        );
        let chart = |at: f64| {
            let mut c = Chart::new("System RAM in use", "time (s)", "RAM used (GiB)");
            c.add(
                Series::new("system RAM used", ORANGE, Style::Line)
                    .points(vec![(0.0, 1.5), (9.0, 2.4)]),
            );
            c.hrules.push(Rule {
                label: "RAM safety limit 85 % (20.0 GiB)".into(),
                at,
                color: RED,
            });
            c
        };
        // 20 GiB over 2.4 GiB of data: the axis stops at the data, the limit is named.
        let far = chart(20.0);
        assert_eq!(far.ranges().1, (0.0, 2.4 * 1.12));
        let s = svg(&far, 640, 360);
        assert!(
            s.contains("↑ RAM safety limit 85 % (20.0 GiB) is above the plot"),
            "{s}"
        );
        let ticks = numbers_in(&s);
        assert!(
            !ticks
                .iter()
                .any(|n| ["10", "15", "20"].contains(&n.as_str())),
            "the y axis stops near 2.4: {ticks:?}"
        );
        // 3 GiB: drawn on the scale, named at its line.
        let near = chart(3.0);
        assert_eq!(near.ranges().1, (0.0, 3.0 * 1.12));
        let s = svg(&near, 640, 360);
        assert!(s.contains("RAM safety limit 85 % (20.0 GiB)") && !s.contains("above the plot"));
    }

    #[test]
    fn the_legend_gets_room_above_the_data_it_would_hide() {
        // A timeline at its top across the whole width: no free corner.
        let mut c = Chart::new("Server memory", "time (s)", "RSS (MiB)");
        let flat: Vec<(f64, f64)> = (0..=90).map(|t| (f64::from(t), 38.0)).collect();
        c.add(Series::new("server RSS", BLUE, Style::Line).points(flat));
        c.add(Series::new("probe start (number)", GREY, Style::Points).points(vec![(0.0, 0.0)]));
        let base = c.ranges();
        let ((_, _), (_, y1)) = c.legend_room(base, 880, 380);
        // Two entries hang (2 × 17 + 16) px from the top of a 280 px plot area.
        let share = 50.0 / 280.0;
        assert!((y1 - 38.0 / (1.0 - share)).abs() < 1e-9, "{y1}");
        assert!(y1 > base.1 .1);
        // Data low under the legend's corner: the range stays as it was.
        let mut low = Chart::new("Falling", "time (s)", "tok/s");
        low.add(Series::new("rate", BLUE, Style::Line).points(vec![(0.0, 100.0), (90.0, 10.0)]));
        assert_eq!(low.legend_room(low.ranges(), 880, 380), low.ranges());
    }

    #[test]
    fn a_line_of_one_point_shows_its_marker() {
        let circles = |s: &str| s.matches("<circle").count();
        let mut c = Chart::new(
            "Decode rate by context, and the search path",
            "ctx",
            "tok/s",
        );
        c.add(
            Series::new("decode", BLUE, Style::Line).points(vec![(512.0, 760.0), (4096.0, 40.0)]),
        );
        let none = circles(&svg(&c, 640, 360));
        c.add(Series::new("search path", GREY, Style::Dashed).points(vec![(4096.0, 602.0)]));
        assert_eq!(
            circles(&svg(&c, 640, 360)),
            none + 1,
            "the one-probe path is marked"
        );
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
