//! The running error of predictions: what o3 predicted for each probe before it ran, against
//! what the probe measured, summed up in one line ("last 20 predictions: memory median error
//! +3.1 %, worst −9.0 % …").
//!
//! Errors are relative, (predicted − measured) ÷ measured, signed (negative: predicted too
//! low). Memory: every probe with a measured peak in the prediction's place. Rates: successful
//! single-stream probes with a predicted and a measured rate. P(success): the Brier score,
//! the mean of (P − outcome)² over every prediction (0 is perfect, 0.25 a coin toss).

use serde::Serialize;

use super::store::Checked;

/// Signed relative errors summed up.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Errors {
    pub count: usize,
    /// The median error, with its sign.
    pub median: f64,
    /// The median of the errors' sizes.
    pub median_abs: f64,
    /// The error largest in size, with its sign.
    pub worst: f64,
}

impl Errors {
    /// From (predicted, measured) pairs with a positive measurement; `None` without any.
    pub fn of(pairs: impl IntoIterator<Item = (f64, f64)>) -> Option<Errors> {
        let errs: Vec<f64> = pairs
            .into_iter()
            .filter(|(p, m)| *m > 0.0 && p.is_finite())
            .map(|(p, m)| (p - m) / m)
            .collect();
        let worst = errs
            .iter()
            .copied()
            .max_by(|a, b| a.abs().total_cmp(&b.abs()))?;
        Some(Errors {
            count: errs.len(),
            median: crate::util::order::median(errs.clone())?,
            median_abs: crate::util::order::median(errs.iter().map(|e| e.abs()).collect())?,
            worst,
        })
    }
}

/// The running error of a set of predictions.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunningError {
    pub predictions: usize,
    pub memory: Option<Errors>,
    /// Measured peaks inside the predicted range.
    pub memory_in_range: usize,
    pub prefill: Option<Errors>,
    pub decode: Option<Errors>,
    /// Mean of (P(success) − outcome)².
    pub brier: Option<f64>,
    /// All of it in one line, for people.
    pub summary: String,
}

impl RunningError {
    /// `None` without predictions.
    pub fn of(rows: &[Checked]) -> Option<RunningError> {
        if rows.is_empty() {
            return None;
        }
        let peaks: Vec<(&Checked, f64)> = rows
            .iter()
            .filter_map(|c| Some((c, c.measured_peak_bytes? as f64)))
            .collect();
        let memory = Errors::of(
            peaks
                .iter()
                .map(|(c, m)| (c.predicted.peak_bytes as f64, *m)),
        );
        let memory_in_range = peaks
            .iter()
            .filter(|(c, m)| {
                c.predicted.peak_low_bytes as f64 <= *m && *m <= c.predicted.peak_high_bytes as f64
            })
            .count();
        let single = || rows.iter().filter(|c| c.success && c.concurrency <= 1);
        let rate = |f: fn(&Checked) -> (Option<f64>, Option<f64>)| {
            Errors::of(single().filter_map(|c| {
                let (p, m) = f(c);
                Some((p?, m?))
            }))
        };
        let prefill = rate(|c| (c.predicted.prefill_tokens_per_s, c.prefill_tokens_per_s));
        let decode = rate(|c| (c.predicted.decode_tokens_per_s, c.decode_tokens_per_s));
        let brier = rows
            .iter()
            .map(|c| (c.predicted.p_success - f64::from(u8::from(c.success))).powi(2))
            .sum::<f64>()
            / rows.len() as f64;
        let mut r = RunningError {
            predictions: rows.len(),
            memory,
            memory_in_range,
            prefill,
            decode,
            brier: Some(brier),
            summary: String::new(),
        };
        r.summary = r.line();
        Some(r)
    }

    fn line(&self) -> String {
        let n = self.predictions;
        let mut parts = Vec::new();
        match &self.memory {
            Some(m) => parts.push(format!(
                "memory median error {}, worst {} ({} of {} peaks in the predicted range)",
                pct(m.median),
                pct(m.worst),
                self.memory_in_range,
                m.count
            )),
            None => parts.push("no measured peak to compare".into()),
        }
        for (name, e) in [("prefill", &self.prefill), ("decode", &self.decode)] {
            if let Some(e) = e {
                parts.push(format!(
                    "{name} median {}, worst {} ({} single-stream)",
                    pct(e.median),
                    pct(e.worst),
                    e.count
                ));
            }
        }
        if let Some(b) = self.brier {
            parts.push(format!("P(success) Brier score {b:.3}"));
        }
        format!(
            "{} prediction{}: {}",
            if n == 1 {
                "the last".to_string()
            } else {
                format!("last {n}")
            },
            if n == 1 { "" } else { "s" },
            parts.join("; ")
        )
    }
}

/// A signed percentage with one decimal, the minus sign typeset.
fn pct(x: f64) -> String {
    let s = format!("{:+.1} %", x * 100.0);
    s.replacen('-', "−", 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::ProbeConfig;
    use crate::learn::memory::Place;
    use crate::learn::store::PredictionRow;

    fn row(peak: u64, measured: Option<u64>, p: f64, success: bool) -> Checked {
        Checked {
            predicted: PredictionRow {
                place: Place::Ram,
                peak_bytes: peak,
                peak_low_bytes: peak * 95 / 100,
                peak_high_bytes: peak * 105 / 100,
                fitted_points: 5,
                p_success: p,
                prefill_tokens_per_s: Some(100.0),
                decode_tokens_per_s: Some(10.0),
                basis: "b".into(),
            },
            stage: "context".into(),
            config: ProbeConfig::default(),
            concurrency: 1,
            success,
            measured_peak_bytes: measured,
            prefill_tokens_per_s: success.then_some(125.0),
            decode_tokens_per_s: success.then_some(10.0),
            unix_s: 0,
        }
    }

    #[test]
    fn errors_are_signed_relative_to_the_measurement() {
        let e = Errors::of([(103.0, 100.0), (91.0, 100.0), (100.0, 100.0), (1.0, 0.0)]).unwrap();
        assert_eq!(e.count, 3);
        assert!((e.median - 0.0).abs() < 1e-12);
        assert!((e.median_abs - 0.03).abs() < 1e-12);
        assert!((e.worst + 0.09).abs() < 1e-12);
        assert_eq!(Errors::of([]), None);
    }

    #[test]
    fn the_running_error_in_one_line() {
        let rows = vec![
            row(103, Some(100), 0.9, true),
            row(90, Some(100), 0.8, true),
            row(200, None, 0.3, false),
        ];
        let r = RunningError::of(&rows).unwrap();
        assert_eq!(r.predictions, 3);
        let m = r.memory.unwrap();
        assert_eq!(m.count, 2);
        // 103 of 100 is in [97, 108]; 90 of 100 is not in [85, 94].
        assert_eq!(r.memory_in_range, 1);
        // Rates: predicted 100 prefill against 125 measured (−20 %), decode exact.
        assert!((r.prefill.unwrap().median + 0.2).abs() < 1e-12);
        assert_eq!(r.decode.unwrap().worst, 0.0);
        let brier = ((0.1f64).powi(2) + 0.2f64.powi(2) + 0.3f64.powi(2)) / 3.0;
        assert!((r.brier.unwrap() - brier).abs() < 1e-12);
        assert_eq!(
            r.summary,
            "last 3 predictions: memory median error −3.5 %, worst −10.0 % (1 of 2 peaks in \
             the predicted range); prefill median −20.0 %, worst −20.0 % (2 single-stream); \
             decode median +0.0 %, worst +0.0 % (2 single-stream); P(success) Brier score 0.047"
        );
        assert_eq!(RunningError::of(&[]), None);
        let one = RunningError::of(&rows[2..]).unwrap();
        assert!(
            one.summary
                .starts_with("the last prediction: no measured peak to compare; P(success)"),
            "{}",
            one.summary
        );
    }
}
