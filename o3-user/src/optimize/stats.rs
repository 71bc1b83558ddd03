//! Statistics of one validated serving configuration: outlier removal, summaries with a
//! confidence interval, a bound on the success rate, and the stability verdict. Pure functions
//! over measured requests; every method is cited where it is implemented.
//!
//! - Outliers: modified z-score with the median absolute deviation (Iglewicz & Hoaglin 1993,
//!   "How to Detect and Handle Outliers", ASQC Basic References in Quality Control vol. 16),
//!   with the mean-absolute-deviation fallback when the MAD is 0 (IBM SPSS, same source).
//! - Mean interval: Student's t interval (Student 1908, "The probable error of a mean").
//! - Success rate: Wilson score interval, lower bound (Wilson 1927, "Probable inference, the
//!   law of succession, and statistical inference", JASA 22).
//! - p95: nearest-rank percentile (NIST/SEMATECH e-Handbook §7.2.6.2, rank ⌈p·n⌉).

use serde::{Deserialize, Serialize};
use statrs::distribution::{ContinuousCDF, StudentsT};

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
    pub min: f64,
    pub max: f64,
    /// Nearest-rank 95th percentile of the kept values.
    pub p95: f64,
    /// Student's t 95% interval of the mean; `None` when n < 2.
    pub ci95_low: Option<f64>,
    pub ci95_high: Option<f64>,
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

/// Summary of `values` after [`remove_outliers`]; non-finite values are ignored. `None` when no
/// finite value is left.
///
/// The interval is Student's t interval of the mean, `mean ± t(0.975, n−1) · s / √n`.
pub fn describe(values: &[f64]) -> Option<Describe> {
    let finite: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if finite.is_empty() {
        return None;
    }
    let (mut kept, outliers_removed) = remove_outliers(&finite);
    kept.sort_by(f64::total_cmp);
    let n = kept.len();
    let nf = n as f64;
    let mean = kept.iter().sum::<f64>() / nf;
    let stddev = if n > 1 {
        (kept.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (nf - 1.0)).sqrt()
    } else {
        0.0
    };
    let cv = if n > 1 && mean != 0.0 {
        stddev / mean.abs()
    } else {
        0.0
    };
    // Nearest rank: the ⌈0.95 n⌉-th smallest value (1-based).
    let rank = ((0.95 * nf).ceil() as usize).clamp(1, n);
    let (ci95_low, ci95_high) = if n >= 2 {
        let half = t_975(nf - 1.0) * stddev / nf.sqrt();
        (Some(mean - half), Some(mean + half))
    } else {
        (None, None)
    };
    Some(Describe {
        n,
        outliers_removed,
        mean,
        median: crate::util::order::median_sorted(&kept),
        stddev,
        cv,
        min: kept[0],
        max: kept[n - 1],
        p95: kept[rank - 1],
        ci95_low,
        ci95_high,
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

/// Verdict on one configuration's repeated measurements.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Validation {
    pub n: u32,
    pub successes: u32,
    pub success_rate: f64,
    /// Wilson score lower bound of the success rate at z = 1.96.
    pub success_rate_wilson_low: f64,
    /// TTFT of the requests that read their whole prompt (a fill, or fresh prompts).
    pub ttft_ms: Option<Describe>,
    /// TTFT of the requests that reused a filled prefix.
    pub cached_ttft_ms: Option<Describe>,
    /// Prefill rate over whole prompts.
    pub prefill_tokens_per_s: Option<Describe>,
    pub decode_tokens_per_s: Option<Describe>,
    pub stable: bool,
    /// Why not stable (empty when stable), human-readable, one reason per entry, with the
    /// numbers.
    pub reasons: Vec<String>,
}

/// The CV test of one metric: a metric with fewer than 2 kept values cannot fail it.
fn cv_reason(name: &str, unit: &str, d: Option<&Describe>, max_cv: f64) -> Option<String> {
    let d = d?;
    if d.n < 2 || d.cv <= max_cv {
        return None;
    }
    let removed = match d.outliers_removed {
        0 => String::new(),
        k => format!(", {k} outlier(s) removed"),
    };
    Some(format!(
        "{name} varies too much: CV {:.3} > {max_cv:.3} (mean {:.1} {unit}, stddev {:.1} {unit}, \
         n = {}{removed})",
        d.cv, d.mean, d.stddev, d.n
    ))
}

/// Statistics and the stability verdict of one configuration's observations.
///
/// TTFT and rates use only successful observations; TTFT and prefill of whole prompts and of
/// requests that reused a filled prefix are apart (the first is seconds to an hour at depth,
/// the second a suffix's worth). Stable means: success rate ≥ `min_success_rate` (the rate
/// itself; its Wilson lower bound at z = 1.96 is reported), CV of TTFT ≤ `max_cv` (the cached
/// TTFT where there are two or more, else the whole-prompt TTFT; not judged under
/// [`TTFT_CV_FLOOR_MS`]) and CV of decode tokens/s ≤ `max_cv`. A metric with fewer than 2 values passes the CV test; no successful observation
/// at all is not stable.
pub fn validate(obs: &[Observation], min_success_rate: f64, max_cv: f64) -> Validation {
    let n = u32::try_from(obs.len()).unwrap_or(u32::MAX);
    let ok: Vec<&Observation> = obs.iter().filter(|o| o.ok).collect();
    let successes = u32::try_from(ok.len()).unwrap_or(u32::MAX).min(n);
    let success_rate = if n == 0 {
        0.0
    } else {
        f64::from(successes) / f64::from(n)
    };
    let success_rate_wilson_low = wilson_lower_bound(successes, n, Z_95);
    let metric = |keep: fn(&Observation) -> bool, f: fn(&Observation) -> Option<f64>| {
        let values: Vec<f64> = ok.iter().filter(|o| keep(o)).filter_map(|o| f(o)).collect();
        describe(&values)
    };
    let ttft_ms = metric(|o| !o.cached, |o| o.ttft_ms);
    let cached_ttft_ms = metric(|o| o.cached, |o| o.ttft_ms);
    let prefill_tokens_per_s = metric(|o| !o.cached, |o| o.prefill_tokens_per_s);
    let decode_tokens_per_s = metric(|_| true, |o| o.decode_tokens_per_s);
    let steady_ttft = match &cached_ttft_ms {
        Some(d) if d.n >= 2 => Some(d),
        _ => ttft_ms.as_ref(),
    }
    .filter(|d| d.mean >= TTFT_CV_FLOOR_MS);

    let mut reasons = Vec::new();
    if n == 0 {
        reasons.push("no requests were measured".to_string());
    } else if successes == 0 {
        reasons.push(format!("all {n} requests failed"));
    } else if success_rate < min_success_rate {
        reasons.push(format!(
            "success rate {:.1}% ({successes}/{n}) is below the minimum {:.1}% \
             (Wilson 95% lower bound {:.1}%)",
            success_rate * 100.0,
            min_success_rate * 100.0,
            success_rate_wilson_low * 100.0
        ));
    }
    reasons.extend(cv_reason("TTFT", "ms", steady_ttft, max_cv));
    reasons.extend(cv_reason(
        "decode rate",
        "tokens/s",
        decode_tokens_per_s.as_ref(),
        max_cv,
    ));

    Validation {
        n,
        successes,
        success_rate,
        success_rate_wilson_low,
        ttft_ms,
        cached_ttft_ms,
        prefill_tokens_per_s,
        decode_tokens_per_s,
        stable: reasons.is_empty(),
        reasons,
    }
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
        assert_eq!((d.ci95_low, d.ci95_high), (None, None));
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
        assert_eq!((d.ci95_low, d.ci95_high), (Some(7.5), Some(7.5)));
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
    fn t_interval_matches_a_hand_computation() {
        // n = 5, mean 12, s² = (4+1+0+1+4)/4 = 2.5, t(0.975, 4) = 2.776445.
        let v = [10.0, 11.0, 12.0, 13.0, 14.0];
        let d = describe(&v).unwrap();
        assert_eq!((d.n, d.mean, d.median, d.p95), (5, 12.0, 12.0, 14.0));
        assert!(close(d.stddev, 2.5f64.sqrt(), 1e-12));
        let half = 2.776445 * 2.5f64.sqrt() / 5f64.sqrt();
        assert!(close(d.ci95_low.unwrap(), 12.0 - half, 1e-5), "{d:?}");
        assert!(close(d.ci95_high.unwrap(), 12.0 + half, 1e-5), "{d:?}");
        assert!(d.ci95_low.unwrap() < d.mean && d.mean < d.ci95_high.unwrap());
        assert!(close(t_975(4.0), 2.776445, 1e-5));
    }

    #[test]
    fn nearest_rank_p95_and_even_median() {
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        let d = describe(&v).unwrap();
        assert_eq!((d.p95, d.median), (19.0, 10.5));
    }

    #[test]
    fn wilson_bounds_for_known_values() {
        assert!(close(wilson_lower_bound(5, 5, 1.96), 0.5655, 5e-5));
        assert_eq!(wilson_lower_bound(0, 5, 1.96), 0.0);
        assert_eq!(wilson_lower_bound(0, 0, 1.96), 0.0);
        // 8/10 at 1.96: 0.4902 (Wilson score interval tables).
        assert!(close(wilson_lower_bound(8, 10, 1.96), 0.4902, 1e-4));
    }

    #[test]
    fn a_steady_configuration_is_stable() {
        let obs: Vec<Observation> = (0..5)
            .map(|i| ok(100.0 + f64::from(i), 50.0 - f64::from(i) * 0.2))
            .collect();
        let v = validate(&obs, 0.95, 0.2);
        assert!(v.stable, "{:?}", v.reasons);
        assert!(v.reasons.is_empty());
        assert_eq!((v.n, v.successes, v.success_rate), (5, 5, 1.0));
        assert!(close(v.success_rate_wilson_low, 0.5655, 5e-5));
        assert_eq!(v.prefill_tokens_per_s.unwrap().mean, 1000.0);
    }

    #[test]
    fn all_failures_are_not_stable() {
        let v = validate(&[failed(); 4], 0.5, 0.2);
        assert!(!v.stable);
        assert_eq!(v.reasons, ["all 4 requests failed"]);
        assert_eq!(
            (v.successes, v.success_rate, v.success_rate_wilson_low),
            (0, 0.0, 0.0)
        );
        assert_eq!(v.ttft_ms, None);
        assert_eq!(v.decode_tokens_per_s, None);
        let none = validate(&[], 0.5, 0.2);
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
        let v = validate(&obs, 0.9, 0.2);
        assert!(!v.stable);
        assert_eq!(v.reasons.len(), 1, "{:?}", v.reasons);
        assert!(v.reasons[0].contains("60.0% (3/5)"), "{}", v.reasons[0]);
        assert!(v.reasons[0].contains("90.0%"), "{}", v.reasons[0]);
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
        let v = validate(&obs, 0.9, 0.2);
        assert!(!v.stable);
        assert_eq!(v.reasons.len(), 2, "{:?}", v.reasons);
        assert!(v.reasons[0].starts_with("TTFT varies too much: CV 0.395 > 0.200"));
        assert!(v.reasons[1].starts_with("decode rate varies too much"));
    }

    #[test]
    fn one_successful_value_passes_the_cv_test() {
        let obs = [ok(100.0, 50.0), failed()];
        let v = validate(&obs, 0.5, 0.1);
        assert!(v.stable, "{:?}", v.reasons);
    }
}
