//! A report as a list of blocks, rendered as Markdown (plots as SVG files beside it) or as one
//! self-contained HTML page (plots inline, styles inline, no scripts, no network assets).

use super::plot::{self, Chart};

#[derive(Debug, Clone)]
pub enum Block {
    Heading(u8, String),
    Para(String),
    List(Vec<String>),
    /// Header cells, then rows.
    Table(Vec<String>, Vec<Vec<String>>),
    /// `name` is the file stem of the SVG beside the Markdown.
    Plot {
        name: String,
        chart: Chart,
    },
    Code(String),
}

/// A report as a document: its title and its blocks in order, before it is rendered as
/// Markdown or HTML.
#[derive(Debug, Clone, Default)]
pub struct ReportDoc {
    pub title: String,
    pub blocks: Vec<Block>,
}

pub const PLOT_W: u32 = 880;
pub const PLOT_H: u32 = 380;

impl ReportDoc {
    pub fn h2(&mut self, t: impl Into<String>) {
        self.blocks.push(Block::Heading(2, t.into()));
    }
    pub fn h3(&mut self, t: impl Into<String>) {
        self.blocks.push(Block::Heading(3, t.into()));
    }
    pub fn para(&mut self, t: impl Into<String>) {
        self.blocks.push(Block::Para(t.into()));
    }
    pub fn list(&mut self, items: Vec<String>) {
        if !items.is_empty() {
            self.blocks.push(Block::List(items));
        }
    }
    pub fn table(&mut self, head: &[&str], rows: Vec<Vec<String>>) {
        self.blocks.push(Block::Table(
            head.iter().map(|s| s.to_string()).collect(),
            rows,
        ));
    }
    /// Adds the chart unless it has nothing to draw; a chart whose points all sit at one x
    /// (a single measurement: no curve to see) becomes a sentence and a short table of them.
    pub fn plot(&mut self, name: &str, chart: Chart) {
        if chart.too_few_points() {
            self.para(format!("{}:", too_few(&chart)));
            self.table(&chart.point_head(), chart.point_rows());
        } else {
            self.plot_listed(name, chart);
        }
    }

    /// As [`ReportDoc::plot`], for a chart whose values the section's table lists: with too
    /// few points, a sentence points there instead of repeating them.
    pub fn plot_listed(&mut self, name: &str, chart: Chart) {
        if chart.too_few_points() {
            self.para(format!(
                "{}; the table below lists the values.",
                too_few(&chart)
            ));
        } else if !chart.is_empty() {
            self.blocks.push(Block::Plot {
                name: name.into(),
                chart,
            });
        }
    }
    pub fn code(&mut self, t: impl Into<String>) {
        self.blocks.push(Block::Code(t.into()));
    }

    pub fn plots(&self) -> impl Iterator<Item = (&str, &Chart)> {
        self.blocks.iter().filter_map(|b| match b {
            Block::Plot { name, chart } => Some((name.as_str(), chart)),
            _ => None,
        })
    }
}

/// What stands for a chart with too few points.
fn too_few(c: &Chart) -> String {
    format!(
        "{}: too few points for a chart (one {} value only)",
        c.title, c.x_label
    )
}

fn md_cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', "<br>")
}

/// Markdown; each plot is `![title](<plots_dir>/<name>.svg)`.
pub fn markdown(d: &ReportDoc, plots_dir: &str) -> String {
    let mut o = format!("# {}\n", d.title);
    for b in &d.blocks {
        o.push('\n');
        match b {
            Block::Heading(l, t) => {
                o.push_str(&"#".repeat(*l as usize));
                o.push(' ');
                o.push_str(t);
                o.push('\n');
            }
            Block::Para(t) => {
                o.push_str(t);
                o.push('\n');
            }
            Block::List(items) => {
                for i in items {
                    o.push_str(&format!("- {i}\n"));
                }
            }
            Block::Table(head, rows) => {
                let line = |cells: &[String]| {
                    format!(
                        "| {} |\n",
                        cells
                            .iter()
                            .map(|c| md_cell(c))
                            .collect::<Vec<_>>()
                            .join(" | ")
                    )
                };
                o.push_str(&line(head));
                o.push_str(&format!("|{}\n", "---|".repeat(head.len())));
                for r in rows {
                    o.push_str(&line(r));
                }
            }
            Block::Plot { name, chart } => {
                o.push_str(&format!("![{}]({plots_dir}/{name}.svg)\n", chart.title));
            }
            Block::Code(t) => {
                o.push_str(&format!("```\n{t}\n```\n"));
            }
        }
    }
    o
}

/// Escapes text for HTML element content and attribute values.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            _ => o.push(c),
        }
    }
    o
}

/// Text as HTML with the Markdown the report's sentences use: `code` and **bold**, each only
/// where its marks pair up (else the marks stay as they are).
fn inline(t: &str) -> String {
    let e = esc(t);
    pair(&pair(&e, "`", "code"), "**", "strong")
}

/// `mark`…`mark` as `<tag>`…`</tag>`, when the marks pair up.
fn pair(s: &str, mark: &str, tag: &str) -> String {
    let parts: Vec<&str> = s.split(mark).collect();
    if parts.len() < 3 || parts.len() % 2 == 0 {
        return s.to_string();
    }
    let mut o = String::with_capacity(s.len());
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            o.push_str(&if i % 2 == 1 {
                format!("<{tag}>")
            } else {
                format!("</{tag}>")
            });
        }
        o.push_str(p);
    }
    o
}

const STYLE: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}\
h1{font-size:1.7em;border-bottom:2px solid #444;padding-bottom:.2em}h2{margin-top:1.8em;border-bottom:1px solid #ddd}\
table{border-collapse:collapse;margin:.8em 0;font-size:.9em}th,td{border:1px solid #ddd;padding:.3em .6em;text-align:left;vertical-align:top}\
th{background:#f3f6fa}tr:nth-child(even) td{background:#fafafa}figure{margin:1em 0}figcaption{font-size:.85em;color:#555}\
pre{background:#f6f8fa;padding:.8em;white-space:pre-wrap;word-break:break-all;font-size:.85em}code{font-size:.9em}";

/// A plot as a standalone SVG file.
pub fn svg_file(c: &Chart) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n{}",
        plot::svg(c, PLOT_W, PLOT_H)
    )
}

/// One self-contained HTML page.
pub fn html(d: &ReportDoc) -> String {
    let mut o = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>{}</h1>\n",
        esc(&d.title),
        esc(&d.title)
    );
    for b in &d.blocks {
        match b {
            Block::Heading(l, t) => o.push_str(&format!("<h{l}>{}</h{l}>\n", esc(t))),
            Block::Para(t) => o.push_str(&format!("<p>{}</p>\n", inline(t))),
            Block::List(items) => {
                o.push_str("<ul>\n");
                for i in items {
                    o.push_str(&format!("<li>{}</li>\n", inline(i)));
                }
                o.push_str("</ul>\n");
            }
            Block::Table(head, rows) => {
                o.push_str("<table>\n");
                // A key–value table has no header worth a row.
                if head.iter().any(|h| !h.is_empty()) {
                    o.push_str("<thead><tr>");
                    for h in head {
                        o.push_str(&format!("<th>{}</th>", esc(h)));
                    }
                    o.push_str("</tr></thead>\n");
                }
                o.push_str("<tbody>\n");
                for r in rows {
                    o.push_str("<tr>");
                    for c in r {
                        o.push_str(&format!("<td>{}</td>", esc(c)));
                    }
                    o.push_str("</tr>\n");
                }
                o.push_str("</tbody>\n</table>\n");
            }
            Block::Plot { name, chart } => {
                o.push_str(&format!(
                    "<figure id=\"plot-{}\">\n{}\n</figure>\n",
                    esc(name),
                    plot::svg(chart, PLOT_W, PLOT_H)
                ));
            }
            Block::Code(t) => o.push_str(&format!("<pre><code>{}</code></pre>\n", esc(t))),
        }
    }
    o.push_str("</body>\n</html>\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::plot::{Series, Style, BLUE};

    fn doc() -> ReportDoc {
        let mut d = ReportDoc {
            title: "Run <a & b>".into(),
            ..ReportDoc::default()
        };
        d.h2("Presets");
        d.table(&["name", "cmd"], vec![vec!["fast".into(), "a | b".into()]]);
        d.list(vec!["x".into()]);
        d.list(vec![]);
        let mut c = Chart::new("Rates", "ctx", "tok/s");
        c.add(Series::new("decode", BLUE, Style::Line).points(vec![(1.0, 2.0), (2.0, 3.0)]));
        d.plot("rates", c);
        d.plot("nothing", Chart::new("Empty", "x", "y"));
        d.code("llama-server --ctx-size 4096");
        d
    }

    #[test]
    fn markdown_links_each_plot_and_escapes_table_pipes() {
        let m = markdown(&doc(), "plots");
        assert!(m.starts_with("# Run <a & b>\n"));
        assert!(m.contains("| fast | a \\| b |"), "{m}");
        assert!(m.contains("![Rates](plots/rates.svg)"));
        assert!(!m.contains("nothing"), "an empty chart is left out");
        assert!(m.contains("```\nllama-server --ctx-size 4096\n```"));
        assert_eq!(doc().plots().count(), 1);
    }

    #[test]
    fn a_chart_of_one_point_is_a_short_table_or_a_pointer_to_the_sections_table() {
        let one = || {
            let mut c = Chart::new("Prefill rate by context", "context (tokens)", "tok/s");
            c.add(Series::new("prefill", BLUE, Style::LinePoints).points(vec![(1536.0, 408.7)]));
            c
        };
        let mut d = ReportDoc::default();
        d.plot("context-prefill", one());
        d.plot_listed("batch", one());
        assert_eq!(d.plots().count(), 0, "no SVG for a single point");
        assert_eq!(
            markdown(&d, "plots"),
            "# \n\nPrefill rate by context: too few points for a chart (one context (tokens) value only):\n\n\
             |  | context (tokens) | tok/s |\n|---|---|---|\n| prefill | 1536 | 408.7 |\n\n\
             Prefill rate by context: too few points for a chart (one context (tokens) value only); \
             the table below lists the values.\n"
        );
    }

    #[test]
    fn html_sentences_render_their_code_and_bold() {
        assert_eq!(
            inline("**Not proven at depth**: run `o3 optimize --resume <dir>`"),
            "<strong>Not proven at depth</strong>: run <code>o3 optimize --resume &lt;dir&gt;</code>"
        );
        assert_eq!(inline("a ` alone and ** too"), "a ` alone and ** too");
    }

    #[test]
    fn html_is_self_contained_and_escaped() {
        let h = html(&doc());
        assert!(h.contains("<title>Run &lt;a &amp; b&gt;</title>"));
        assert!(h.contains("<td>a | b</td>"));
        assert_eq!(h.matches("<svg").count(), 1);
        assert!(!h.contains("<?xml"), "no XML declaration inside HTML");
        for banned in ["<script", "<link", "<img", "src=", "http://", "https://"] {
            let outside_svg_ns = h.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
            assert!(!outside_svg_ns.contains(banned), "{banned} in the page");
        }
    }
}
