//! One configuration's result as a table row, the way llama-bench users read them: as a
//! Markdown table (`-o md`) or CSV (`-o csv`) with one row per configuration of a sweep.
//! Rates and TTFTs are medians over the successful samples: prefill and the fill's TTFT over
//! requests that read their whole prompt, the cached TTFT over those that reused a prefix.

use crate::backend::OutcomeClass;

use super::{ProbeResult, SampleKind, SampleResult};

/// The figures of one probe a table shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub ctx: u32,
    pub batch: Option<u32>,
    pub ubatch: Option<u32>,
    pub parallel: u32,
    pub outcome: &'static str,
    pub prompt_tokens: u64,
    pub prefill_tokens_per_s: Option<f64>,
    pub decode_tokens_per_s: Option<f64>,
    pub ttft_ms: Option<f64>,
    pub cached_ttft_ms: Option<f64>,
    pub rss_peak_bytes: Option<u64>,
    pub samples_ok: usize,
    pub samples: usize,
}

const WHOLE: [SampleKind; 3] = [SampleKind::Fill, SampleKind::Fresh, SampleKind::Short];

impl Row {
    pub fn of(r: &ProbeResult) -> Row {
        let ok: Vec<&SampleResult> = r
            .samples
            .iter()
            .filter(|s| s.outcome == OutcomeClass::Ok)
            .collect();
        let med = |kinds: &[SampleKind], f: fn(&SampleResult) -> Option<f64>| {
            let mut v: Vec<f64> = ok
                .iter()
                .filter(|s| kinds.contains(&s.kind))
                .filter_map(|s| f(s))
                .collect();
            v.sort_by(f64::total_cmp);
            (!v.is_empty()).then(|| v[v.len() / 2])
        };
        let all = [WHOLE[0], WHOLE[1], WHOLE[2], SampleKind::Cached];
        let c = &r.config;
        Row {
            ctx: c.ctx,
            batch: c.batch,
            ubatch: c.ubatch,
            parallel: c.parallel.unwrap_or(1),
            outcome: r.outcome.name(),
            prompt_tokens: r.prompt_tokens_target,
            prefill_tokens_per_s: med(&WHOLE, |s| s.prefill_tokens_per_s),
            decode_tokens_per_s: med(&all, |s| s.decode_tokens_per_s),
            ttft_ms: med(&WHOLE, |s| s.ttft_ms),
            cached_ttft_ms: med(&[SampleKind::Cached], |s| s.ttft_ms),
            rss_peak_bytes: r.rss_peak_bytes,
            samples_ok: ok.len(),
            samples: r.samples.len(),
        }
    }
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or(String::new(), |v| v.to_string())
}

fn one(v: Option<f64>) -> Option<String> {
    v.map(|v| format!("{v:.1}"))
}

/// The Markdown table's header and its rule.
pub fn md_header() -> String {
    "| ctx | batch | ubatch | slots | outcome | prompt tokens | pp tok/s | tg tok/s | TTFT ms | cached TTFT ms | peak RSS | samples ok |\n\
     | ---: | ---: | ---: | ---: | :--- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        .to_string()
}

/// A row of the Markdown table (`-` where there is no figure).
pub fn md_row(r: &Row) -> String {
    let dash = |s: String| if s.is_empty() { "-".to_string() } else { s };
    format!(
        "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {}/{} |",
        r.ctx,
        dash(opt(r.batch)),
        dash(opt(r.ubatch)),
        r.parallel,
        r.outcome,
        r.prompt_tokens,
        dash(opt(one(r.prefill_tokens_per_s))),
        dash(opt(one(r.decode_tokens_per_s))),
        dash(opt(one(r.ttft_ms))),
        dash(opt(one(r.cached_ttft_ms))),
        dash(opt(r.rss_peak_bytes.map(crate::util::units::bytes))),
        r.samples_ok,
        r.samples
    )
}

/// The CSV header: snake_case names with their units.
pub fn csv_header() -> &'static str {
    "ctx,batch,ubatch,parallel,outcome,prompt_tokens,prefill_tokens_per_s,decode_tokens_per_s,ttft_ms,cached_ttft_ms,rss_peak_bytes,samples_ok,samples"
}

/// A CSV row: raw numbers, empty where there is no figure.
pub fn csv_row(r: &Row) -> String {
    format!(
        "{},{},{},{},{},{},{},{},{},{},{},{},{}",
        r.ctx,
        opt(r.batch),
        opt(r.ubatch),
        r.parallel,
        r.outcome,
        r.prompt_tokens,
        opt(r.prefill_tokens_per_s),
        opt(r.decode_tokens_per_s),
        opt(r.ttft_ms),
        opt(r.cached_ttft_ms),
        opt(r.rss_peak_bytes),
        r.samples_ok,
        r.samples
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> Row {
        Row {
            ctx: 8192,
            batch: Some(512),
            ubatch: None,
            parallel: 1,
            outcome: "ok",
            prompt_tokens: 7340,
            prefill_tokens_per_s: Some(812.25),
            decode_tokens_per_s: Some(41.0),
            ttft_ms: Some(9036.5),
            cached_ttft_ms: None,
            rss_peak_bytes: Some(5 << 30),
            samples_ok: 3,
            samples: 3,
        }
    }

    #[test]
    fn a_markdown_row_has_a_cell_per_header_column() {
        let h = md_header();
        let r = md_row(&row());
        assert_eq!(
            r,
            "| 8192 | 512 | - | 1 | ok | 7340 | 812.2 | 41.0 | 9036.5 | - | 5.0 GiB | 3/3 |"
        );
        let cells = |l: &str| l.matches('|').count();
        for l in h.lines() {
            assert_eq!(cells(l), cells(&r), "{l}");
        }
    }

    #[test]
    fn a_csv_row_is_raw_numbers_under_named_units() {
        let r = csv_row(&row());
        assert_eq!(r, "8192,512,,1,ok,7340,812.25,41,9036.5,,5368709120,3,3");
        assert_eq!(r.split(',').count(), csv_header().split(',').count());
    }
}
