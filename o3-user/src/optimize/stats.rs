//! Statistics of one validated serving configuration: outlier removal, summaries with
//! confidence intervals, a bound on the success rate, and the stability verdict with its
//! evidence. Pure functions over measured requests; every method is cited where it is
//! implemented.
//!
//! - Outliers: modified z-score with the median absolute deviation (Iglewicz & Hoaglin 1993,
//!   "How to Detect and Handle Outliers", ASQC Basic References in Quality Control vol. 16),
//!   with the mean-absolute-deviation fallback when the MAD is 0 (IBM SPSS, same source).
//! - Interval of a positive quantity: Student's t interval (Student 1908, "The probable error
//!   of a mean") on the logarithms, transformed back: the geometric mean times or divided by a
//!   factor (Limpert, Stahel & Abbt 2001, "Log-normal distributions across the sciences: keys
//!   and clues", BioScience 51(5)). It cannot go below 0, unlike the interval of the
//!   arithmetic mean of a skewed sample.
//! - Interval of the coefficient of variation: Vangel's modified McKay interval (Vangel 1996,
//!   "Confidence intervals for a normal coefficient of variation", The American Statistician
//!   50(1); McKay 1932, JRSS 95).
//! - Success rate: Wilson score interval, lower bound (Wilson 1927, "Probable inference, the
//!   law of succession, and statistical inference", JASA 22).
//! - p95: nearest-rank percentile (NIST/SEMATECH e-Handbook §7.2.6.2, rank ⌈p·n⌉).

use serde::{Deserialize, Serialize};
use statrs::distribution::{ChiSquared, ContinuousCDF, Normal, StudentsT};

/// TTFTs whose mean is under this are not judged by their CV, ms: at a few milliseconds (a
/// cached prefix on a small model) scheduler jitter, not the server, makes the spread.
pub const TTFT_CV_FLOOR_MS: f64 = 50.0;

/// z of a two-sided 95% interval, as used for the Wilson bound reported by [`validate`].
pub const Z_95: f64 = 1.96;

/// Modified z-scores above this (in absolute value) are outliers (Iglewicz & Hoaglin 1993).
pub const OUTLIER_Z: f64 = 3.5;

/// 0.6745 = Φ⁻¹(0.75): makes the MAD a consistent estimator of σ for normal data
/// (Iglewicz & Hoaglin 1993).
const MAD_SCALE: f64 = 0.6745;

/// 1.253314 = √(π/2): makes the mean absolute deviation a consistent estimator of σ for normal
/// data (the MAD = 0 fallback of Iglewicz & Hoaglin 1993 as implemented by IBM SPSS).
const MEAN_AD_SCALE: f64 = 1.253314;

/// One measured request.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Observation {
    pub ok: bool,
    pub ttft_ms: Option<f64>,
    pub prefill_tokens_per_s: Option<f64>,
    pub decode_tokens_per_s: Option<f64>,
    /// The request repeated a filled prefix with a fresh suffix (its TTFT is the cached
    /// one); false: it read its whole prompt.
    #[serde(default)]
    pub cached: bool,
}

/// Summary of one metric over the values kept after outlier removal.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Describe {
    /// Values kept (after outlier removal).
    pub n: usize,
    pub outliers_removed: usize,
    pub mean: f64,
    pub median: f64,
    /// Sample standard deviation (n − 1 denominator); 0 when n == 1.
    pub stddev: f64,
    /// Coefficient of variation, stddev / |mean|; 0 when the mean is 0 or n == 1.
    pub cv: f64,
    /// Vangel's 95% interval of the CV; `None` when n < 2 or the mean is not positive. The
    /// upper end is `None` where the interval is unbounded (few values, a large CV).
    pub cv_ci95_low: Option<f64>,
    pub cv_ci95_high: Option<f64>,
    pub min: f64,
    pub max: f64,
    /// Nearest-rank 95th percentile of the kept values.
    pub p95: f64,
    /// Geometric mean, exp(mean of ln x); `None` when a kept value is 0 or negative.
    pub gmean: Option<f64>,
    /// 95% interval of the geometric mean (Student's t on the logarithms); `None` when n < 2
    /// or there is no geometric mean. Always positive.
    pub gmean_ci95_low: Option<f64>,
    pub gmean_ci95_high: Option<f64>,
}

/// Median of a non-empty slice.
fn median(values: &[f64]) -> f64 {
    crate::util::order::median(values.to_vec()).expect("median of a non-empty slice")
}

/// Removes outliers by the modified z-score (Iglewicz & Hoaglin 1993):
/// `z = 0.6745 (x − median) / MAD`, dropping `|z| > 3.5`.
///
/// When the MAD is 0 (at least half the values equal the median) the mean absolute deviation
/// around the median is used instead, `z = (x − median) / (1.253314 · MeanAD)` (IBM SPSS); when
/// that is 0 too every value equals the median and all are kept. Fewer than 3 values: nothing
/// is removed. At most half the values (rounded down) are removed, the most extreme first.
///
/// Returns the kept values in their original order and how many were removed. Non-finite
/// values are not expected here ([`describe`] filters them).
pub fn remove_outliers(values: &[f64]) -> (Vec<f64>, usize) {
    let n = values.len();
    if n < 3 {
        return (values.to_vec(), 0);
    }
    let med = median(values);
    let deviations: Vec<f64> = values.iter().map(|x| (x - med).abs()).collect();
    let mad = median(&deviations);
    let z: Vec<f64> = if mad > 0.0 {
        deviations.iter().map(|d| MAD_SCALE * d / mad).collect()
    } else {
        let mean_ad = deviations.iter().sum::<f64>() / n as f64;
        if mean_ad <= 0.0 {
            return (values.to_vec(), 0);
        }
        deviations
            .iter()
            .map(|d| d / (MEAN_AD_SCALE * mean_ad))
            .collect()
    };
    let mut candidates: Vec<usize> = (0..n).filter(|&i| z[i] > OUTLIER_Z).collect();
    if candidates.len() > n / 2 {
        // Most extreme first; ties keep index order so the result is deterministic.
        candidates.sort_by(|&a, &b| z[b].total_cmp(&z[a]).then(a.cmp(&b)));
        candidates.truncate(n / 2);
    }
    let mut drop = vec![false; n];
    for i in &candidates {
        drop[*i] = true;
    }
    let kept: Vec<f64> = values
        .iter()
        .zip(&drop)
        .filter(|(_, d)| !**d)
        .map(|(x, _)| *x)
        .collect();
    (kept, candidates.len())
}

/// Two-sided 95% quantile of Student's t with `df` degrees of freedom, t(0.975, df).
fn t_975(df: f64) -> f64 {
    match StudentsT::new(0.0, 1.0, df) {
        Ok(t) => t.inverse_cdf(0.975),
        // df > 0 always here (n ≥ 2); fall back to the normal quantile rather than panic.
        Err(_) => Z_95,
    }
}

/// Quantile `p` of the chi-square distribution with `df` degrees of freedom (df > 0); `None`
/// where it cannot be computed. One degree of freedom is the square of a standard normal,
/// `Φ⁻¹((1 + p)/2)²`, computed so (statrs' gamma inversion gives NaN at small p there).
fn chi2(p: f64, df: f64) -> Option<f64> {
    let q = if df == 1.0 {
        let z = Normal::standard().inverse_cdf((1.0 + p) / 2.0);
        z * z
    } else {
        ChiSquared::new(df).ok()?.inverse_cdf(p)
    };
    q.is_finite().then_some(q)
}

/// Sample mean and standard deviation (n − 1 denominator; 0 when n == 1) of a non-empty slice.
fn mean_sd(values: &[f64]) -> (f64, f64) {
    let nf = values.len() as f64;
    let mean = values.iter().sum::<f64>() / nf;
    let sd = if values.len() > 1 {
        (values.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (nf - 1.0)).sqrt()
    } else {
        0.0
    };
    (mean, sd)
}

/// Geometric mean of `values` and its 95% interval: Student's t interval of the mean of the
/// logarithms, transformed back (Limpert, Stahel & Abbt 2001):
/// `exp(m) ×/ exp(t(0.975, n−1) · s / √n)`, where m and s are the mean and standard deviation
/// of ln x. The ends are products of positive numbers, so a rate or a time never gets a
/// negative bound. `None` when `values` is empty or holds a value ≤ 0 (or not finite); the
/// interval is `None` when n < 2.
pub fn geometric_mean_ci95(values: &[f64]) -> Option<(f64, Option<(f64, f64)>)> {
    if values.is_empty() || values.iter().any(|x| !(x.is_finite() && *x > 0.0)) {
        return None;
    }
    let logs: Vec<f64> = values.iter().map(|x| x.ln()).collect();
    let (m, s) = mean_sd(&logs);
    let n = logs.len() as f64;
    let ci = (logs.len() >= 2).then(|| {
        let half = t_975(n - 1.0) * s / n.sqrt();
        ((m - half).exp(), (m + half).exp())
    });
    Some((m.exp(), ci))
}

/// Vangel's modified McKay 95% interval of a coefficient of variation `k` estimated from `n`
/// normal values (Vangel 1996, eq. 16), with ν = n − 1, u₁ = χ²(0.975, ν), u₂ = χ²(0.025, ν):
/// `k / √(((u₁ + 2)/n − 1) k² + u₁/ν)` to `k / √(((u₂ + 2)/n − 1) k² + u₂/ν)`.
///
/// `None` when n < 2 or `k` is negative or not finite; the upper end is `None` (unbounded)
/// where its denominator is not positive. Vangel shows it close to exact for k up to about
/// 0.33; above that it is an approximation, which the CV tests only report.
pub fn cv_ci95(k: f64, n: usize) -> Option<(f64, Option<f64>)> {
    if n < 2 || !(k.is_finite() && k >= 0.0) {
        return None;
    }
    let nf = n as f64;
    let nu = nf - 1.0;
    let (u1, u2) = (chi2(0.975, nu)?, chi2(0.025, nu)?);
    let end = |u: f64| {
        let d = ((u + 2.0) / nf - 1.0) * k * k + u / nu;
        (d > 0.0).then(|| k / d.sqrt())
    };
    Some((end(u1)?, end(u2)))
}

/// Summary of `values` after [`remove_outliers`]; non-finite values are ignored. `None` when no
/// finite value is left. Every interval is over the kept values: the geometric mean's from
/// [`geometric_mean_ci95`], the CV's from [`cv_ci95`].
pub fn describe(values: &[f64]) -> Option<Describe> {
    let finite: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if finite.is_empty() {
        return None;
    }
    let (mut kept, outliers_removed) = remove_outliers(&finite);
    kept.sort_by(f64::total_cmp);
    let n = kept.len();
    let (mean, stddev) = mean_sd(&kept);
    let cv = if n > 1 && mean != 0.0 {
        stddev / mean.abs()
    } else {
        0.0
    };
    let cv_ci = if mean > 0.0 { cv_ci95(cv, n) } else { None };
    let geo = geometric_mean_ci95(&kept);
    let geo_ci = geo.and_then(|g| g.1);
    // Nearest rank: the ⌈0.95 n⌉-th smallest value (1-based).
    let rank = ((0.95 * n as f64).ceil() as usize).clamp(1, n);
    Some(Describe {
        n,
        outliers_removed,
        mean,
        median: crate::util::order::median_sorted(&kept),
        stddev,
        cv,
        cv_ci95_low: cv_ci.map(|c| c.0),
        cv_ci95_high: cv_ci.and_then(|c| c.1),
        min: kept[0],
        max: kept[n - 1],
        p95: kept[rank - 1],
        gmean: geo.map(|g| g.0),
        gmean_ci95_low: geo_ci.map(|c| c.0),
        gmean_ci95_high: geo_ci.map(|c| c.1),
    })
}

/// Lower bound of the Wilson score interval for `successes` out of `n` (Wilson 1927):
/// `(p + z²/2n − z √(p(1−p)/n + z²/4n²)) / (1 + z²/n)`. 0 when `n` is 0.
pub fn wilson_lower_bound(successes: u32, n: u32, z: f64) -> f64 {
    if n == 0 {
        return 0.0;
    }
    let nf = f64::from(n);
    let p = f64::from(successes.min(n)) / nf;
    let z2 = z * z;
    let centre = p + z2 / (2.0 * nf);
    let spread = z * (p * (1.0 - p) / nf + z2 / (4.0 * nf * nf)).sqrt();
    ((centre - spread) / (1.0 + z2 / nf)).clamp(0.0, 1.0)
}

/// What a configuration must show to be stable (`validation.*`, `concurrency.max_timeouts`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Criteria {
    /// Smallest success rate among the requests that did not time out.
    pub min_success_rate: f64,
    /// Largest CV of every metric judged.
    pub max_cv: f64,
    /// Timeouts tolerated, counted apart from other failures (0 for a single stream).
    pub max_timeouts: u32,
}

/// The success part of the verdict from final counts: at least one success, timeouts within
/// the allowance and successes / (successes + failures) ≥ the minimum (timeouts are not in
/// the rate: they are judged by their allowance).
fn success_passes(successes: u32, failures: u32, timeouts: u32, k: &Criteria) -> bool {
    successes > 0
        && timeouts <= k.max_timeouts
        && f64::from(successes) / f64::from(successes + failures) >= k.min_success_rate
}

/// Whether the success part of the verdict (see [`validate`]) is already decided after
/// `successes`, `failures` (other than timeouts) and `timeouts` of `planned` requests:
/// `Some(false)` when no outcome of the requests left can pass it (too many timeouts, or the
/// rate unreachable even if every one left succeeds), `Some(true)` when none can fail it (every
/// one left failing, or timing out within the allowance, still passes), `None` otherwise.
/// When nothing is left it is the verdict's success part itself.
///
/// A probe could stop as soon as this is `Some(false)`; `Some(true)` settles only the success
/// part, the CV still needs the samples.
pub fn settled(
    successes: u32,
    failures: u32,
    timeouts: u32,
    planned: u32,
    k: &Criteria,
) -> Option<bool> {
    let left = planned.saturating_sub(successes + failures + timeouts);
    // Best case: every request left succeeds (a timeout only uses up the allowance).
    if !success_passes(successes + left, failures, timeouts, k) {
        return Some(false);
    }
    // Worst case: every request left fails, or times out where that breaks the allowance.
    if timeouts + left <= k.max_timeouts && success_passes(successes, failures + left, timeouts, k)
    {
        return Some(true);
    }
    None
}

/// One CV test of the verdict: the CV of a metric as [`describe`] computed it, against the
/// maximum.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CvCheck {
    /// The field of [`Validation`] whose CV it is: `ttft_ms`, `cached_ttft_ms`,
    /// `decode_tokens_per_s` or `round_tokens_per_s`.
    pub metric: &'static str,
    pub n: usize,
    pub cv: f64,
    pub cv_ci95_low: Option<f64>,
    /// `None`: unbounded.
    pub cv_ci95_high: Option<f64>,
    pub max_cv: f64,
    /// cv ≤ max_cv.
    pub passed: bool,
}

impl CvCheck {
    fn of(metric: &'static str, d: &Describe, max_cv: f64) -> CvCheck {
        CvCheck {
            metric,
            n: d.n,
            cv: d.cv,
            cv_ci95_low: d.cv_ci95_low,
            cv_ci95_high: d.cv_ci95_high,
            max_cv,
            passed: d.cv <= max_cv,
        }
    }

    /// `0.041 (95% interval 0.025–0.118)`.
    fn describe(&self) -> String {
        match (self.cv_ci95_low, self.cv_ci95_high) {
            (Some(lo), Some(hi)) => format!("{:.3} (95% interval {lo:.3}–{hi:.3})", self.cv),
            (Some(lo), None) => format!("{:.3} (95% interval {lo:.3}–unbounded)", self.cv),
            _ => format!("{:.3}", self.cv),
        }
    }
}

/// Verdict on one configuration's repeated measurements, with its evidence.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Validation {
    /// Requests measured.
    pub n: u32,
    pub successes: u32,
    /// Requests that timed out: failures, but judged by `concurrency.max_timeouts`, not by the
    /// success rate.
    pub timeouts: u32,
    /// successes / (n − timeouts); 0 when that is 0.
    pub success_rate: f64,
    /// Wilson score 95% lower bound (z = 1.96) of the success rate, over n − timeouts.
    pub success_rate_wilson_low: f64,
    /// The minimum success rate judged against (`validation.min_success_rate`).
    pub min_success_rate: f64,
    /// The timeouts allowed (`concurrency.max_timeouts`; 0 for a single stream).
    pub max_timeouts: u32,
    /// TTFT of the requests that read their whole prompt (a fill, or fresh prompts).
    pub ttft_ms: Option<Describe>,
    /// TTFT of the requests that reused a filled prefix.
    pub cached_ttft_ms: Option<Describe>,
    /// Prefill rate over whole prompts.
    pub prefill_tokens_per_s: Option<Describe>,
    pub decode_tokens_per_s: Option<Describe>,
    /// Aggregate decode throughput of each round of simultaneous streams (`None`: one stream).
    pub round_tokens_per_s: Option<Describe>,
    /// The CV tests made, with the very numbers the verdict used.
    pub cv_checks: Vec<CvCheck>,
    pub stable: bool,
    /// Why not stable (empty when stable), human-readable, one reason per entry, with the
    /// numbers.
    pub reasons: Vec<String>,
    /// What the verdict rests on, one line, stable or not: successes of n, the rate against
    /// the minimum, its Wilson bound (and whether n can show the minimum at 95%), timeouts
    /// against the allowance, each CV with its interval against the maximum.
    pub evidence: String,
}

/// The name of a metric in reasons and evidence.
fn label(metric: &str) -> &'static str {
    match metric {
        "ttft_ms" => "TTFT",
        "cached_ttft_ms" => "TTFT (cached prefix)",
        "decode_tokens_per_s" => "decode rate",
        _ => "aggregate decode throughput per round",
    }
}

/// The reason a failed CV test gives.
fn cv_reason(c: &CvCheck, d: &Describe, unit: &str) -> String {
    let removed = match d.outliers_removed {
        0 => String::new(),
        k => format!(", {k} outlier(s) removed"),
    };
    let name = match c.metric {
        "ttft_ms" | "cached_ttft_ms" => "TTFT",
        m => label(m),
    };
    format!(
        "{name} varies too much: CV {} > {:.3} (mean {:.1} {unit}, stddev {:.1} {unit}, \
         n = {}{removed})",
        c.describe(),
        c.max_cv,
        d.mean,
        d.stddev,
        d.n
    )
}

/// Statistics and the stability verdict of one configuration's observations, `timeouts` of
/// which timed out. `rounds`: the aggregate decode throughput of each round of simultaneous
/// streams (`None` for one stream).
///
/// TTFT and rates use only successful observations; TTFT and prefill of whole prompts and of
/// requests that reused a filled prefix are apart (the first is seconds to an hour at depth,
/// the second a suffix's worth). Stable means all of:
/// - at least one request succeeded;
/// - timeouts ≤ `max_timeouts`;
/// - success rate ≥ `min_success_rate`, the rate over the requests that did not time out
///   (the rate itself decides; its Wilson 95% lower bound is reported, and said to be below
///   the minimum where n is too small to show it);
/// - every CV judged ≤ `max_cv`. One stream: the TTFT (the cached TTFT where there are two or
///   more, else the whole-prompt TTFT; not judged under [`TTFT_CV_FLOOR_MS`]) and the decode
///   rate. Simultaneous streams start together and overlap only partly, so per-request TTFT
///   and decode rates spread by design: the aggregate throughput of each round is judged
///   instead. A metric with fewer than 2 values is not judged.
///
/// The CVs judged are in `cv_checks`, copied from the summaries shown, so "stable" and the CV
/// shown are one computation.
pub fn validate(
    obs: &[Observation],
    timeouts: u32,
    rounds: Option<&[f64]>,
    k: &Criteria,
) -> Validation {
    let c = Counts::of(obs, timeouts);
    let ok: Vec<&Observation> = obs.iter().filter(|o| o.ok).collect();
    let m = Metrics::of(&ok, rounds);
    let judged = m.judged(rounds.is_none());
    let cv_checks: Vec<CvCheck> = judged
        .iter()
        .map(|(name, d, _)| CvCheck::of(name, d, k.max_cv))
        .collect();
    let reasons = reasons(&c, k, &cv_checks, &judged);
    let stable = reasons.is_empty();
    debug_assert_eq!(
        stable,
        c.n > 0
            && success_passes(c.successes, c.failures, c.timeouts, k)
            && cv_checks.iter().all(|c| c.passed)
    );
    let evidence = evidence(&c, k, &cv_checks);
    Validation {
        n: c.n,
        successes: c.successes,
        timeouts: c.timeouts,
        success_rate: c.success_rate,
        success_rate_wilson_low: c.wilson_low,
        min_success_rate: k.min_success_rate,
        max_timeouts: k.max_timeouts,
        ttft_ms: m.ttft_ms,
        cached_ttft_ms: m.cached_ttft_ms,
        prefill_tokens_per_s: m.prefill_tokens_per_s,
        decode_tokens_per_s: m.decode_tokens_per_s,
        round_tokens_per_s: m.round_tokens_per_s,
        cv_checks,
        stable,
        reasons,
        evidence,
    }
}

/// The requests of a verdict counted: timeouts apart from the other failures.
struct Counts {
    n: u32,
    successes: u32,
    timeouts: u32,
    /// Requests that did not time out (the success rate's denominator).
    judged: u32,
    failures: u32,
    success_rate: f64,
    wilson_low: f64,
}

impl Counts {
    fn of(obs: &[Observation], timeouts: u32) -> Counts {
        let n = u32::try_from(obs.len()).unwrap_or(u32::MAX);
        let successes = u32::try_from(obs.iter().filter(|o| o.ok).count())
            .unwrap_or(u32::MAX)
            .min(n);
        let timeouts = timeouts.min(n - successes);
        let judged = n - timeouts;
        Counts {
            n,
            successes,
            timeouts,
            judged,
            failures: judged - successes,
            success_rate: if judged == 0 {
                0.0
            } else {
                f64::from(successes) / f64::from(judged)
            },
            wilson_low: wilson_lower_bound(successes, judged, Z_95),
        }
    }

    /// `, 2 timed out` where any did.
    fn apart(&self) -> String {
        match self.timeouts {
            0 => String::new(),
            t => format!(", {t} timed out"),
        }
    }
}

/// The summaries of a verdict's successful requests.
struct Metrics {
    ttft_ms: Option<Describe>,
    cached_ttft_ms: Option<Describe>,
    prefill_tokens_per_s: Option<Describe>,
    decode_tokens_per_s: Option<Describe>,
    round_tokens_per_s: Option<Describe>,
}

impl Metrics {
    fn of(ok: &[&Observation], rounds: Option<&[f64]>) -> Metrics {
        let metric = |keep: fn(&Observation) -> bool, f: fn(&Observation) -> Option<f64>| {
            let values: Vec<f64> = ok.iter().filter(|o| keep(o)).filter_map(|o| f(o)).collect();
            describe(&values)
        };
        Metrics {
            ttft_ms: metric(|o| !o.cached, |o| o.ttft_ms),
            cached_ttft_ms: metric(|o| o.cached, |o| o.ttft_ms),
            prefill_tokens_per_s: metric(|o| !o.cached, |o| o.prefill_tokens_per_s),
            decode_tokens_per_s: metric(|_| true, |o| o.decode_tokens_per_s),
            round_tokens_per_s: rounds.and_then(describe),
        }
    }

    /// The metrics judged by their CV, with their units (see [`validate`]); `one_stream`: no
    /// rounds of simultaneous streams were given.
    fn judged(&self, one_stream: bool) -> Vec<(&'static str, &Describe, &'static str)> {
        let mut v: Vec<(&'static str, &Describe, &'static str)> = Vec::new();
        if let Some(r) = &self.round_tokens_per_s {
            v.push(("round_tokens_per_s", r, "tokens/s"));
        } else if one_stream {
            let steady_ttft = match &self.cached_ttft_ms {
                Some(d) if d.n >= 2 => Some(("cached_ttft_ms", d)),
                _ => self.ttft_ms.as_ref().map(|d| ("ttft_ms", d)),
            }
            .filter(|(_, d)| d.mean >= TTFT_CV_FLOOR_MS);
            if let Some((m, d)) = steady_ttft {
                v.push((m, d, "ms"));
            }
            if let Some(d) = &self.decode_tokens_per_s {
                v.push(("decode_tokens_per_s", d, "tokens/s"));
            }
        }
        v.retain(|(_, d, _)| d.n >= 2);
        v
    }
}

/// Why not stable, one reason per entry (empty: stable).
fn reasons(
    c: &Counts,
    k: &Criteria,
    cv_checks: &[CvCheck],
    judged: &[(&'static str, &Describe, &'static str)],
) -> Vec<String> {
    let mut reasons = Vec::new();
    if c.n == 0 {
        reasons.push("no requests were measured".to_string());
    } else if c.successes == 0 {
        reasons.push(format!("all {} requests failed{}", c.n, c.apart()));
    } else if c.success_rate < k.min_success_rate {
        reasons.push(format!(
            "success rate {:.1}% ({}/{}{}) is below the minimum {:.1}% \
             (Wilson 95% lower bound {:.1}%)",
            c.success_rate * 100.0,
            c.successes,
            c.judged,
            c.apart(),
            k.min_success_rate * 100.0,
            c.wilson_low * 100.0
        ));
    }
    if c.timeouts > k.max_timeouts {
        reasons.push(format!(
            "{} timeout{}, more than the {} allowed",
            c.timeouts,
            if c.timeouts == 1 { "" } else { "s" },
            k.max_timeouts
        ));
    }
    for (check, (_, d, unit)) in cv_checks.iter().zip(judged) {
        if !check.passed {
            reasons.push(cv_reason(check, d, unit));
        }
    }
    reasons
}

/// What the verdict rests on, one line (see [`Validation::evidence`]).
fn evidence(c: &Counts, k: &Criteria, cv_checks: &[CvCheck]) -> String {
    let mut evidence = vec![format!(
        "{}/{} succeeded{}: rate {:.1}% {} {:.1}%, Wilson 95% lower bound {:.1}%{}",
        c.successes,
        c.judged,
        c.apart(),
        c.success_rate * 100.0,
        if c.success_rate >= k.min_success_rate {
            "≥"
        } else {
            "<"
        },
        k.min_success_rate * 100.0,
        c.wilson_low * 100.0,
        if c.wilson_low < k.min_success_rate {
            " (below the minimum: too few requests to show it at 95%)"
        } else {
            ""
        }
    )];
    if c.timeouts > 0 || k.max_timeouts > 0 {
        evidence.push(format!(
            "timeouts {} {} {} allowed",
            c.timeouts,
            if c.timeouts <= k.max_timeouts {
                "≤"
            } else {
                ">"
            },
            k.max_timeouts
        ));
    }
    for check in cv_checks {
        evidence.push(format!(
            "{} CV {} {} {:.3}",
            label(check.metric),
            check.describe(),
            if check.passed { "≤" } else { ">" },
            check.max_cv
        ));
    }
    if cv_checks.is_empty() && c.successes > 0 {
        evidence.push("no CV judged (fewer than 2 values)".into());
    }
    evidence.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    fn ok(ttft: f64, decode: f64) -> Observation {
        Observation {
            ok: true,
            ttft_ms: Some(ttft),
            prefill_tokens_per_s: Some(1000.0),
            decode_tokens_per_s: Some(decode),
            cached: false,
        }
    }

    fn failed() -> Observation {
        Observation::default()
    }

    /// `validation` defaults: 0.85 and 0.15; a single stream tolerates no timeout.
    const ONE: Criteria = Criteria {
        min_success_rate: 0.85,
        max_cv: 0.15,
        max_timeouts: 0,
    };

    fn crit(min_success_rate: f64, max_cv: f64) -> Criteria {
        Criteria {
            min_success_rate,
            max_cv,
            max_timeouts: 0,
        }
    }

    #[test]
    fn a_single_value() {
        let d = describe(&[42.0]).unwrap();
        assert_eq!(d.n, 1);
        assert_eq!(d.outliers_removed, 0);
        assert_eq!(
            (d.mean, d.median, d.min, d.max, d.p95),
            (42.0, 42.0, 42.0, 42.0, 42.0)
        );
        assert_eq!((d.stddev, d.cv), (0.0, 0.0));
        assert!(close(d.gmean.unwrap(), 42.0, 1e-9));
        assert_eq!((d.gmean_ci95_low, d.gmean_ci95_high), (None, None));
        assert_eq!((d.cv_ci95_low, d.cv_ci95_high), (None, None));
    }

    #[test]
    fn empty_and_non_finite_inputs() {
        assert_eq!(describe(&[]), None);
        assert_eq!(describe(&[f64::NAN, f64::INFINITY]), None);
        let d = describe(&[1.0, f64::NAN, 3.0]).unwrap();
        assert_eq!((d.n, d.mean), (2, 2.0));
    }

    #[test]
    fn all_equal_values_keep_everything_with_zero_cv() {
        let v = [7.5; 6];
        assert_eq!(remove_outliers(&v), (v.to_vec(), 0));
        let d = describe(&v).unwrap();
        assert_eq!((d.n, d.outliers_removed), (6, 0));
        assert_eq!((d.stddev, d.cv), (0.0, 0.0));
        assert!(close(d.gmean_ci95_low.unwrap(), 7.5, 1e-9));
        assert!(close(d.gmean_ci95_high.unwrap(), 7.5, 1e-9));
        assert_eq!((d.cv_ci95_low, d.cv_ci95_high), (Some(0.0), Some(0.0)));
    }

    #[test]
    fn one_outlier_among_five_is_removed_and_the_cv_drops() {
        let v = [100.0, 101.0, 99.0, 102.0, 500.0];
        let (kept, removed) = remove_outliers(&v);
        assert_eq!((kept, removed), (vec![100.0, 101.0, 99.0, 102.0], 1));
        let d = describe(&v).unwrap();
        assert_eq!((d.n, d.outliers_removed, d.max), (4, 1, 102.0));
        let raw_mean = v.iter().sum::<f64>() / 5.0;
        let raw_sd = (v.iter().map(|x| (x - raw_mean).powi(2)).sum::<f64>() / 4.0).sqrt();
        assert!(d.cv < 0.02 && raw_sd / raw_mean > 0.5, "{d:?}");
    }

    #[test]
    fn zero_mad_falls_back_to_the_mean_absolute_deviation() {
        // MAD = 0 (four equal values); MeanAD = 10 / 5 = 2, z = 10 / (1.253314 · 2) ≈ 3.99.
        let v = [10.0, 10.0, 20.0, 10.0, 10.0];
        assert_eq!(remove_outliers(&v), (vec![10.0; 4], 1));
        // Three values: z = 10 / (1.253314 · 10/3) ≈ 2.39, kept.
        assert_eq!(remove_outliers(&[10.0, 10.0, 20.0]).1, 0);
    }

    #[test]
    fn small_samples_are_never_trimmed() {
        assert_eq!(remove_outliers(&[1.0, 1000.0]), (vec![1.0, 1000.0], 0));
        assert_eq!(remove_outliers(&[]), (vec![], 0));
    }

    #[test]
    fn t_quantiles_match_the_tables() {
        assert!(close(t_975(4.0), 2.776445, 1e-5));
        assert!(close(t_975(2.0), 4.302653, 1e-5));
        // χ² tables (NIST/SEMATECH e-Handbook §1.3.6.7.4), 4 degrees of freedom.
        assert!(close(chi2(0.975, 4.0).unwrap(), 11.143, 1e-3));
        assert!(close(chi2(0.025, 4.0).unwrap(), 0.484, 1e-3));
        // One degree of freedom, from the normal: 0.000982 and 5.024.
        assert!(close(chi2(0.025, 1.0).unwrap(), 0.000982, 1e-6));
        assert!(close(chi2(0.975, 1.0).unwrap(), 5.024, 1e-3));
        for df in 1..200 {
            let (lo, hi) = (
                chi2(0.025, df.into()).unwrap(),
                chi2(0.975, df.into()).unwrap(),
            );
            assert!(0.0 < lo && lo < f64::from(df) && f64::from(df) < hi, "{df}");
        }
    }

    #[test]
    fn geometric_interval_matches_a_hand_computation() {
        // ln 1, ln 10, ln 100: mean ln 10, sd ln 10; t(0.975, 2) = 4.302653.
        let (g, ci) = geometric_mean_ci95(&[1.0, 10.0, 100.0]).unwrap();
        let f = (4.302653 * 10f64.ln() / 3f64.sqrt()).exp();
        let (lo, hi) = ci.unwrap();
        assert!(close(g, 10.0, 1e-9));
        // t rounded to 7 digits: each end equal to 1 in 10⁵.
        assert!(close(lo * f / 10.0, 1.0, 1e-5), "{lo}");
        assert!(close(hi / f / 10.0, 1.0, 1e-5), "{hi}");
        assert!(close(lo, 0.032799, 1e-6));
        // The interval is multiplicative: the geometric mean is its geometric centre.
        assert!(close((lo * hi).sqrt(), g, 1e-9));
    }

    #[test]
    fn a_log_interval_stays_positive_where_the_t_interval_would_not() {
        // CV 0.805 over 3 values: mean ± t·s/√n would reach −30.65.
        let v = [10.0, 24.0, 58.0];
        let d = describe(&v).unwrap();
        assert!(close(d.cv, 0.804935, 1e-5), "{d:?}");
        let t_low = d.mean - t_975(2.0) * d.stddev / 3f64.sqrt();
        assert!(t_low < -30.0, "{t_low}");
        assert!(close(d.gmean.unwrap(), 24.055427, 1e-5));
        assert!(close(d.gmean_ci95_low.unwrap(), 2.710070, 1e-5), "{d:?}");
        assert!(close(d.gmean_ci95_high.unwrap(), 213.5235, 1e-3), "{d:?}");
        // The same for five values with CV 0.92 (t interval from −35.6).
        let d = describe(&[50.0, 100.0, 150.0, 300.0, 600.0]).unwrap();
        assert!(d.cv > 0.9 && d.gmean_ci95_low.unwrap() > 50.0, "{d:?}");
    }

    #[test]
    fn no_geometric_mean_for_values_at_or_below_zero() {
        assert_eq!(geometric_mean_ci95(&[]), None);
        assert_eq!(geometric_mean_ci95(&[0.0, 5.0]), None);
        assert_eq!(geometric_mean_ci95(&[-1.0, 5.0]), None);
        let d = describe(&[0.0, 5.0, 6.0]).unwrap();
        assert_eq!((d.gmean, d.gmean_ci95_low), (None, None));
        assert!(d.cv > 0.0);
    }

    #[test]
    fn cv_interval_matches_vangel() {
        // Vangel's modified McKay on x = 326, 302, 307, 299, 329 (k = 0.044591), computed by
        // hand with χ²(0.975, 4) = 11.143287 and χ²(0.025, 4) = 0.484419.
        let d = describe(&[326.0, 302.0, 307.0, 299.0, 329.0]).unwrap();
        assert!(close(d.cv, 0.044591, 1e-6), "{d:?}");
        assert!(close(d.cv_ci95_low.unwrap(), 0.026700, 1e-5), "{d:?}");
        assert!(close(d.cv_ci95_high.unwrap(), 0.128667, 1e-4), "{d:?}");
        assert_eq!(cv_ci95(0.1, 1), None);
        assert_eq!(cv_ci95(f64::NAN, 5), None);
        // Two values with a small CV: bounded.
        let (lo, hi) = cv_ci95(0.018, 2).unwrap();
        assert!(
            close(lo, 0.00803, 1e-5) && close(hi.unwrap(), 0.5743, 1e-4),
            "{lo} {hi:?}"
        );
        // Three values: (χ²(0.025, 2) + 2)/3 − 1 = −0.3165, so from k = √(0.0253 / 0.3165) =
        // 0.283 the upper end is unbounded.
        let (lo, hi) = cv_ci95(0.9, 3).unwrap();
        assert!(lo > 0.0 && lo < 0.9 && hi.is_none(), "{lo} {hi:?}");
        assert!(cv_ci95(0.28, 3).unwrap().1.is_some());
        assert!(cv_ci95(0.29, 3).unwrap().1.is_none());
    }

    #[test]
    fn nearest_rank_p95_and_even_median() {
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        let d = describe(&v).unwrap();
        assert_eq!((d.p95, d.median), (19.0, 10.5));
    }

    #[test]
    fn wilson_bounds_for_known_values() {
        assert!(close(wilson_lower_bound(5, 5, Z_95), 0.5655, 5e-5));
        assert!(close(wilson_lower_bound(9, 10, Z_95), 0.595844, 1e-6));
        assert_eq!(wilson_lower_bound(0, 5, Z_95), 0.0);
        assert_eq!(wilson_lower_bound(0, 0, Z_95), 0.0);
        // 8/10 at 1.96: 0.4902 (Wilson score interval tables).
        assert!(close(wilson_lower_bound(8, 10, Z_95), 0.4902, 1e-4));
    }

    #[test]
    fn a_steady_configuration_is_stable_and_says_why() {
        let obs: Vec<Observation> = (0..5)
            .map(|i| ok(100.0 + f64::from(i), 50.0 - f64::from(i) * 0.2))
            .collect();
        let v = validate(&obs, 0, None, &crit(0.95, 0.2));
        assert!(v.stable, "{:?}", v.reasons);
        assert!(v.reasons.is_empty());
        assert_eq!((v.n, v.successes, v.success_rate), (5, 5, 1.0));
        assert!(close(v.success_rate_wilson_low, 0.5655, 5e-5));
        assert_eq!(v.prefill_tokens_per_s.as_ref().unwrap().mean, 1000.0);
        let metrics: Vec<&str> = v.cv_checks.iter().map(|c| c.metric).collect();
        assert_eq!(metrics, ["ttft_ms", "decode_tokens_per_s"]);
        assert_eq!(
            v.cv_checks[1].cv,
            v.decode_tokens_per_s.as_ref().unwrap().cv
        );
        assert!(
            v.evidence.starts_with(
                "5/5 succeeded: rate 100.0% ≥ 95.0%, Wilson 95% lower bound 56.6% \
                 (below the minimum: too few requests to show it at 95%); TTFT CV 0.016 \
                 (95% interval "
            ),
            "{}",
            v.evidence
        );
        assert!(
            v.evidence.contains("decode rate CV 0.006"),
            "{}",
            v.evidence
        );
    }

    #[test]
    fn all_failures_are_not_stable() {
        let v = validate(&[failed(); 4], 0, None, &crit(0.5, 0.2));
        assert!(!v.stable);
        assert_eq!(v.reasons, ["all 4 requests failed"]);
        assert_eq!(
            (v.successes, v.success_rate, v.success_rate_wilson_low),
            (0, 0.0, 0.0)
        );
        assert_eq!(v.ttft_ms, None);
        assert_eq!(v.decode_tokens_per_s, None);
        assert!(v.cv_checks.is_empty());
        let none = validate(&[], 0, None, &crit(0.5, 0.2));
        assert!(!none.stable && none.reasons[0].contains("no requests"));
    }

    #[test]
    fn a_low_success_rate_is_not_stable() {
        let obs = [
            ok(100.0, 50.0),
            ok(101.0, 50.0),
            ok(99.0, 50.0),
            failed(),
            failed(),
        ];
        let v = validate(&obs, 0, None, &crit(0.9, 0.2));
        assert!(!v.stable);
        assert_eq!(v.reasons.len(), 1, "{:?}", v.reasons);
        assert!(v.reasons[0].contains("60.0% (3/5)"), "{}", v.reasons[0]);
        assert!(v.reasons[0].contains("90.0%"), "{}", v.reasons[0]);
        assert!(v.evidence.starts_with("3/5 succeeded: rate 60.0% < 90.0%"));
        // Statistics use the successful requests only.
        assert_eq!(v.ttft_ms.unwrap().n, 3);
    }

    #[test]
    fn a_high_cv_is_not_stable() {
        let obs = [
            ok(100.0, 20.0),
            ok(200.0, 50.0),
            ok(300.0, 80.0),
            ok(150.0, 35.0),
            ok(250.0, 65.0),
        ];
        let v = validate(&obs, 0, None, &crit(0.9, 0.2));
        assert!(!v.stable);
        assert_eq!(v.reasons.len(), 2, "{:?}", v.reasons);
        assert!(
            v.reasons[0].starts_with("TTFT varies too much: CV 0.395 (95% interval "),
            "{}",
            v.reasons[0]
        );
        assert!(v.reasons[0].contains(") > 0.200 (mean 200.0 ms"));
        assert!(v.reasons[1].starts_with("decode rate varies too much"));
        assert!(v.cv_checks.iter().all(|c| !c.passed));
    }

    #[test]
    fn one_successful_value_passes_the_cv_test() {
        let obs = [ok(100.0, 50.0), failed()];
        let v = validate(&obs, 0, None, &crit(0.5, 0.1));
        assert!(v.stable, "{:?}", v.reasons);
        assert!(v.cv_checks.is_empty());
        assert!(v.evidence.ends_with("no CV judged (fewer than 2 values)"));
    }

    #[test]
    fn timeouts_are_judged_by_their_allowance_not_the_success_rate() {
        // 4 streams, 2 rounds, one late per round: 6 of the 6 that did not time out succeed.
        let mut obs = vec![ok(1000.0, 20.0); 8];
        obs[3] = failed();
        obs[7] = failed();
        let rounds = [60.0, 61.0];
        let allow = |max_timeouts| Criteria {
            max_timeouts,
            ..ONE
        };
        let v = validate(&obs, 2, Some(&rounds), &allow(2));
        assert!(v.stable, "{:?}", v.reasons);
        assert_eq!((v.timeouts, v.success_rate), (2, 1.0));
        assert!(v
            .evidence
            .starts_with("6/6 succeeded, 2 timed out: rate 100.0% ≥ 85.0%"));
        assert!(
            v.evidence.contains("; timeouts 2 ≤ 2 allowed;"),
            "{}",
            v.evidence
        );
        let v = validate(&obs, 2, Some(&rounds), &allow(1));
        assert_eq!(v.reasons, ["2 timeouts, more than the 1 allowed"]);
        // Other failures still count against the rate: 5/6 < 0.85.
        obs[0] = failed();
        let v = validate(&obs, 2, Some(&rounds), &allow(2));
        assert!(v.reasons[0].starts_with("success rate 83.3% (5/6, 2 timed out)"));
        // A single stream tolerates none.
        let v = validate(&[ok(100.0, 50.0), failed()], 1, None, &ONE);
        assert_eq!(v.reasons, ["1 timeout, more than the 0 allowed"]);
        assert_eq!(v.success_rate, 1.0);
        // Every request timed out.
        let v = validate(&[failed(); 4], 4, Some(&[]), &allow(8));
        assert_eq!(v.reasons, ["all 4 requests failed, 4 timed out"]);
    }

    #[test]
    fn simultaneous_streams_are_judged_by_the_rounds_only() {
        // Per-request decode rates spread (CV 0.8) but every round's sum is steady.
        let obs: Vec<Observation> = [10.0, 50.0, 12.0, 48.0, 11.0, 49.0]
            .iter()
            .map(|d| ok(1000.0, *d))
            .collect();
        let v = validate(&obs, 0, Some(&[60.0, 60.0, 60.0]), &ONE);
        assert!(v.stable, "{:?}", v.reasons);
        assert!(v.decode_tokens_per_s.as_ref().unwrap().cv > 0.5);
        assert_eq!(v.cv_checks.len(), 1);
        assert_eq!(v.cv_checks[0].metric, "round_tokens_per_s");
        assert!(v
            .evidence
            .contains("aggregate decode throughput per round CV 0.000"));
        let v = validate(&obs, 0, Some(&[30.0, 60.0, 90.0]), &ONE);
        assert!(!v.stable);
        assert!(v.reasons[0]
            .starts_with("aggregate decode throughput per round varies too much: CV 0.500"));
    }

    /// A small deterministic generator (64-bit LCG, Knuth's MMIX constants).
    fn lcg(state: &mut u64) -> f64 {
        *state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (*state >> 11) as f64 / (1u64 << 53) as f64
    }

    #[test]
    fn a_cv_above_the_maximum_is_never_stable() {
        let mut s = 7;
        for case in 0..2000 {
            let n = 1 + (lcg(&mut s) * 12.0) as usize;
            let spread = lcg(&mut s) * 1.5;
            let obs: Vec<Observation> = (0..n)
                .map(|_| Observation {
                    ok: lcg(&mut s) > 0.05,
                    ttft_ms: Some(10.0 + 500.0 * (1.0 + spread * (lcg(&mut s) - 0.5))),
                    prefill_tokens_per_s: Some(1000.0),
                    decode_tokens_per_s: Some(40.0 * (1.0 + spread * (lcg(&mut s) - 0.5))),
                    cached: lcg(&mut s) > 0.5,
                })
                .collect();
            let rounds: Vec<f64> = (0..n.div_ceil(2))
                .map(|_| 80.0 * (1.0 + spread * (lcg(&mut s) - 0.5)))
                .collect();
            let k = Criteria {
                min_success_rate: lcg(&mut s),
                max_cv: 0.05 + lcg(&mut s) * 0.5,
                max_timeouts: 1,
            };
            for r in [None, Some(rounds.as_slice())] {
                let v = validate(&obs, 0, r, &k);
                for c in &v.cv_checks {
                    assert_eq!(c.passed, c.cv <= k.max_cv, "case {case}");
                    let shown = match c.metric {
                        "ttft_ms" => &v.ttft_ms,
                        "cached_ttft_ms" => &v.cached_ttft_ms,
                        "decode_tokens_per_s" => &v.decode_tokens_per_s,
                        _ => &v.round_tokens_per_s,
                    };
                    assert_eq!(shown.as_ref().unwrap().cv, c.cv, "case {case}");
                    assert!(!(v.stable && c.cv > k.max_cv), "case {case}: {v:?}");
                }
                // A judged metric's summary above the maximum always shows in the checks.
                let judged = |d: &Option<Describe>, m: &str| {
                    d.as_ref().is_some_and(|d| d.n >= 2 && d.cv > k.max_cv)
                        && v.cv_checks.iter().any(|c| c.metric == m)
                };
                let over = judged(&v.decode_tokens_per_s, "decode_tokens_per_s")
                    || judged(&v.round_tokens_per_s, "round_tokens_per_s");
                assert!(!(v.stable && over), "case {case}");
                if r.is_some() {
                    let d = v.round_tokens_per_s.as_ref().unwrap();
                    assert!(!(v.stable && d.n >= 2 && d.cv > k.max_cv), "case {case}");
                } else if let Some(d) = &v.decode_tokens_per_s {
                    assert!(!(v.stable && d.n >= 2 && d.cv > k.max_cv), "case {case}");
                }
            }
        }
    }

    #[test]
    fn settled_agrees_with_every_completion() {
        // For every partial tally of up to 8 requests, `Some(x)` means every way the rest can
        // end gives the verdict x, and with nothing left it is the verdict.
        for planned in 1..=8u32 {
            for min in [0.0, 0.5, 0.85, 1.0] {
                for max_timeouts in [0, 1, 2] {
                    let k = Criteria {
                        min_success_rate: min,
                        max_cv: 0.15,
                        max_timeouts,
                    };
                    for s in 0..=planned {
                        for f in 0..=planned - s {
                            for t in 0..=planned - s - f {
                                let left = planned - s - f - t;
                                let mut outcomes = Vec::new();
                                for a in 0..=left {
                                    for b in 0..=left - a {
                                        let c = left - a - b;
                                        outcomes.push(success_passes(s + a, f + b, t + c, &k));
                                    }
                                }
                                let all = outcomes.iter().all(|x| *x);
                                let none = outcomes.iter().all(|x| !*x);
                                let expect = if all {
                                    Some(true)
                                } else if none {
                                    Some(false)
                                } else {
                                    None
                                };
                                assert_eq!(
                                    settled(s, f, t, planned, &k),
                                    expect,
                                    "{s}/{f}/{t} of {planned}, {k:?}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn settled_for_known_tallies() {
        // 10 planned at 0.85: two failures already make 9/10 the best → fails (8/10 = 0.8).
        let k = Criteria {
            max_timeouts: 2,
            ..ONE
        };
        assert_eq!(settled(0, 2, 0, 10, &k), Some(false));
        assert_eq!(settled(0, 1, 0, 10, &k), None);
        // Three timeouts are over the allowance whatever follows.
        assert_eq!(settled(1, 0, 3, 10, &k), Some(false));
        // 9 successes, one left: failing it gives 9/10 ≥ 0.85; a timeout stays within 2.
        assert_eq!(settled(9, 0, 0, 10, &k), Some(true));
        assert_eq!(settled(9, 0, 2, 12, &k), None);
        // The verdict itself when nothing is left, as validate decides it.
        let obs = [ok(100.0, 50.0); 9]
            .into_iter()
            .chain([failed()])
            .collect::<Vec<_>>();
        assert_eq!(
            settled(9, 1, 0, 10, &k),
            Some(validate(&obs, 0, None, &k).stable)
        );
    }
}
