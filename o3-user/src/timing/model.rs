//! The server's time model: how long a load, a prefill from depth C to depth D, and n output
//! tokens at depth d take, fitted from the server's own answers as a run goes.
//!
//! - Prefill: the marginal cost of one prompt token landing at depth d is `a + b·d` seconds
//!   (attention reads every earlier token), i.e. a rate r(d) = r0 / (1 + d/h) with r0 = 1/a and
//!   h = a/b, the depth at which the rate has halved. Filling from C to D costs
//!   `a·(D − C) + b·(D² − C²)/2`. Published Strix Halo curves follow this shape
//!   (docs/optimizer.md has the calibration).
//! - Decode: one output token at depth d costs `c + e·d` seconds.
//! - Load: seconds, independent of the context (weights dominate).
//!
//! Each part is fitted by least squares on relative errors (times span five orders of
//! magnitude). A part measured at one depth only cannot tell `a` from `b`: the depth term then
//! comes from a prior half-rate depth, a pessimistic one for the upper bound. Every estimate
//! carries an expected and an upper value; deadlines use the upper one, plans the expected.

use serde::{Deserialize, Serialize};

/// One measured span of a server's work.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Obs {
    /// Prompt tokens `from..to` (the first `from` were served from a cache) took `s` seconds,
    /// read in batches of `batch` tokens (`None`: the server's default).
    Prefill {
        from: u64,
        to: u64,
        s: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        batch: Option<u32>,
    },
    /// `tokens` output tokens generated after a prompt of `depth` tokens took `s` seconds.
    Decode { depth: u64, tokens: u64, s: f64 },
    /// Starting the server and loading the model took `s` seconds.
    Load { s: f64 },
}

/// What the model assumes before it has measured a part.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prior {
    /// Prefill rate at depth 0, tokens/s.
    pub prefill_tps: f64,
    /// Depth at which the prefill rate halves, tokens: central and pessimistic (smaller).
    pub prefill_half_depth: f64,
    pub prefill_half_depth_low: f64,
    /// Decode rate at depth 0, tokens/s.
    pub decode_tps: f64,
    /// Depth at which the decode rate halves, tokens: central and pessimistic.
    pub decode_half_depth: f64,
    pub decode_half_depth_low: f64,
    /// Load time, s.
    pub load_s: f64,
    /// Where the prior comes from, for the plan's wording.
    pub source: String,
}

impl Prior {
    /// A slow guess from the model's size, used until the first measurement: prefill ≈
    /// 6·10¹² / parameters tokens/s (a dense 70B on Strix Halo reads 79 tok/s at depth 0;
    /// mixtures of experts are much faster than their size says), decode ≈ 10¹¹ / weight
    /// bytes tokens/s, load at 0.5 GB/s plus 10 s. The half-rate depths bracket the published curves: 16384 central,
    /// 4096 pessimistic for prefill (a dense 70B on Vulkan halves its rate within ~4.4K
    /// tokens); 32768 and 8192 for decode.
    pub fn from_size(parameters: Option<u64>, weights_bytes: Option<u64>) -> Prior {
        let params = parameters.unwrap_or(8_000_000_000).max(1) as f64;
        let bytes = weights_bytes.unwrap_or(5_000_000_000).max(1) as f64;
        Prior {
            prefill_tps: (6e12 / params).clamp(5.0, 20_000.0),
            prefill_half_depth: 16_384.0,
            prefill_half_depth_low: 4_096.0,
            decode_tps: (1e11 / bytes).clamp(0.5, 2_000.0),
            decode_half_depth: 32_768.0,
            decode_half_depth_low: 8_192.0,
            load_s: 10.0 + bytes / 5e8,
            source: "a prior from the model's size (nothing measured yet)".into(),
        }
    }
}

/// A fitted linear cost per token, `per_token_s + per_depth_s · depth`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Fit {
    pub per_token_s: f64,
    pub per_depth_s: f64,
    /// Measurements behind it.
    pub points: usize,
    /// Both terms measured (depths far enough apart); otherwise the depth term is the prior's.
    pub depth_measured: bool,
    /// Root mean square of the relative residuals (with 3 points or more).
    pub rel_rms: Option<f64>,
    /// Deepest token measured.
    pub max_depth: u64,
}

/// An expected duration and a pessimistic one, seconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    pub expected_s: f64,
    pub upper_s: f64,
}

impl Estimate {
    pub const ZERO: Estimate = Estimate {
        expected_s: 0.0,
        upper_s: 0.0,
    };

    pub fn plus(self, o: Estimate) -> Estimate {
        Estimate {
            expected_s: self.expected_s + o.expected_s,
            upper_s: self.upper_s + o.upper_s,
        }
    }

    pub fn times(self, k: f64) -> Estimate {
        Estimate {
            expected_s: self.expected_s * k,
            upper_s: self.upper_s * k,
        }
    }
}

/// The time model of one server and model on this machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimeModel {
    pub prior: Prior,
    pub prefill: Option<Fit>,
    pub decode: Option<Fit>,
    /// Loads measured: median and largest, s.
    pub load_median_s: Option<f64>,
    pub load_max_s: Option<f64>,
    /// Whether a cached prefix is reused (`None`: not seen yet); a model with sliding-window or
    /// recurrent attention may force a full re-prefill.
    pub prefix_reuse: Option<bool>,
    /// The batch predictions are for: prefill is fitted on the spans read at it when there are
    /// any (the batch changes the prefill rate), else on all.
    pub batch: Option<u32>,
    #[serde(skip)]
    obs: Vec<Obs>,
}

/// Relative uncertainty never assumed smaller than this (run-to-run noise on a shared box).
const MIN_REL: f64 = 0.25;
/// Most observations kept, of all parts together (the latest win; progress events can be
/// many).
const MAX_OBS: usize = 12_288;

impl TimeModel {
    pub fn new(prior: Prior) -> TimeModel {
        TimeModel {
            prior,
            prefill: None,
            decode: None,
            load_median_s: None,
            load_max_s: None,
            prefix_reuse: None,
            batch: None,
            obs: Vec::new(),
        }
    }

    /// Predictions for prompts read in batches of `batch` from now on.
    pub fn use_batch(&mut self, batch: Option<u32>) {
        if self.batch != batch {
            self.batch = batch;
            self.refit();
        }
    }

    /// Adds measurements and refits.
    pub fn observe(&mut self, obs: &[Obs]) {
        let valid = obs.iter().filter(|o| match **o {
            Obs::Prefill { from, to, s, .. } => to > from && s.is_finite() && s > 0.0,
            Obs::Decode { tokens, s, .. } => tokens > 0 && s.is_finite() && s > 0.0,
            Obs::Load { s } => s.is_finite() && s >= 0.0,
        });
        self.obs.extend(valid);
        if self.obs.len() > MAX_OBS {
            let cut = self.obs.len() - MAX_OBS;
            self.obs.drain(..cut);
        }
        self.refit();
    }

    /// Records whether a cached prefix was reused (a miss wins over earlier hits).
    pub fn observe_reuse(&mut self, reused: bool) {
        self.prefix_reuse = Some(self.prefix_reuse.unwrap_or(true) && reused);
    }

    fn refit(&mut self) {
        let at = |want: Option<Option<u32>>| -> Vec<(f64, f64, f64, u64)> {
            self.obs
                .iter()
                .filter_map(|o| match *o {
                    Obs::Prefill { from, to, s, batch }
                        if want.is_none_or(|b| batch.is_none() || batch == b) =>
                    {
                        let (c, d) = (from as f64, to as f64);
                        Some((d - c, (d * d - c * c) / 2.0, s, to))
                    }
                    _ => None,
                })
                .collect()
        };
        let mut pre = at(Some(self.batch));
        if pre.is_empty() {
            pre = at(None);
        }
        self.prefill = fit(&pre, self.prior.prefill_half_depth);
        let dec: Vec<(f64, f64, f64, u64)> = self
            .obs
            .iter()
            .filter_map(|o| match *o {
                // n tokens starting at depth D: n·c + e·(n·D + n²/2).
                Obs::Decode { depth, tokens, s } => {
                    let (d, n) = (depth as f64, tokens as f64);
                    Some((n, n * d + n * n / 2.0, s, depth + tokens))
                }
                _ => None,
            })
            .collect();
        self.decode = fit(&dec, self.prior.decode_half_depth);
        let mut loads: Vec<f64> = self
            .obs
            .iter()
            .filter_map(|o| match *o {
                Obs::Load { s } => Some(s),
                _ => None,
            })
            .collect();
        loads.sort_by(f64::total_cmp);
        self.load_median_s = crate::util::order::median(loads.clone());
        self.load_max_s = loads.last().copied();
    }

    /// Prefill of prompt tokens `from..to`.
    pub fn fill(&self, from: u64, to: u64) -> Estimate {
        if to <= from {
            return Estimate::ZERO;
        }
        let (c, d) = (from as f64, to as f64);
        let (x1, x2) = (d - c, (d * d - c * c) / 2.0);
        let p = &self.prior;
        match &self.prefill {
            Some(f) => estimate(f, x1, x2, to, p.prefill_half_depth_low),
            None => {
                let a = 1.0 / p.prefill_tps;
                Estimate {
                    expected_s: a * x1 + a / p.prefill_half_depth * x2,
                    // Nothing measured: the rate itself may be several times slower.
                    upper_s: 4.0 * (a * x1 + a / p.prefill_half_depth_low * x2),
                }
            }
        }
    }

    /// `tokens` output tokens after a prompt of `depth` tokens.
    pub fn decode(&self, depth: u64, tokens: u64) -> Estimate {
        if tokens == 0 {
            return Estimate::ZERO;
        }
        let (d, n) = (depth as f64, tokens as f64);
        let (x1, x2) = (n, n * d + n * n / 2.0);
        let p = &self.prior;
        match &self.decode {
            Some(f) => estimate(f, x1, x2, depth + tokens, p.decode_half_depth_low),
            None => {
                let c = 1.0 / p.decode_tps;
                Estimate {
                    expected_s: c * x1 + c / p.decode_half_depth * x2,
                    upper_s: 4.0 * (c * x1 + c / p.decode_half_depth_low * x2),
                }
            }
        }
    }

    /// Starting the server and loading the model.
    pub fn load(&self) -> Estimate {
        match (self.load_median_s, self.load_max_s) {
            (Some(m), Some(x)) => Estimate {
                expected_s: m,
                upper_s: x * (1.0 + MIN_REL) + 5.0,
            },
            _ => Estimate {
                expected_s: self.prior.load_s,
                upper_s: 4.0 * self.prior.load_s,
            },
        }
    }

    /// One request: a prompt of `to` tokens of which `from` are cached, then `out` tokens.
    pub fn request(&self, from: u64, to: u64, out: u64) -> Estimate {
        self.fill(from, to).plus(self.decode(to, out))
    }

    /// Decode rate at depth `d`, tokens/s (expected).
    pub fn decode_rate_at(&self, d: u64) -> f64 {
        let e = self.decode(d, 1).expected_s;
        if e > 0.0 {
            1.0 / e
        } else {
            f64::INFINITY
        }
    }

    /// The deepest prompt any measured span reached (prefill or decode), tokens.
    pub fn deepest_measured(&self) -> Option<u64> {
        self.obs
            .iter()
            .filter_map(|o| match *o {
                Obs::Prefill { to, .. } => Some(to),
                Obs::Decode { depth, tokens, .. } => Some(depth + tokens),
                Obs::Load { .. } => None,
            })
            .max()
    }

    /// The half-rate depth of prefill (`h`), when measured.
    pub fn prefill_half_depth(&self) -> Option<f64> {
        let f = self.prefill.as_ref().filter(|f| f.depth_measured)?;
        (f.per_depth_s > 0.0).then(|| f.per_token_s / f.per_depth_s)
    }

    /// One line on what the model rests on, for plans and summaries.
    pub fn describe(&self) -> String {
        let part = |name: &str, f: &Option<Fit>, prior_tps: f64| match f {
            None => format!("{name} {prior_tps:.0} tok/s (prior)"),
            Some(f) => {
                let r0 = 1.0 / f.per_token_s;
                let h = if f.per_depth_s > 0.0 {
                    format!(", halves by depth {:.0}", f.per_token_s / f.per_depth_s)
                } else {
                    ", flat with depth".into()
                };
                format!(
                    "{name} {r0:.0} tok/s at depth 0{h}{} ({} measurements to depth {})",
                    if f.depth_measured {
                        ""
                    } else {
                        " (depth term from the prior)"
                    },
                    f.points,
                    f.max_depth
                )
            }
        };
        let load = match self.load_median_s {
            Some(m) => format!("load {m:.1} s"),
            None => format!("load {:.0} s (prior)", self.prior.load_s),
        };
        format!(
            "{}; {}; {load}",
            part("prefill", &self.prefill, self.prior.prefill_tps),
            part("decode", &self.decode, self.prior.decode_tps)
        )
    }
}

/// Least squares of `s ≈ a·x1 + b·x2` on relative residuals. Points: (x1, x2, s, deepest
/// token). The depth term is fitted only when the points reach depths at least twice apart and
/// beyond 1024 tokens; otherwise `b = a / half_depth`.
fn fit(points: &[(f64, f64, f64, u64)], half_depth: f64) -> Option<Fit> {
    let pts: Vec<&(f64, f64, f64, u64)> =
        points.iter().filter(|p| p.0 > 0.0 && p.2 > 0.0).collect();
    if pts.is_empty() {
        return None;
    }
    let lo = pts.iter().map(|p| p.3).min().unwrap_or(0);
    let hi = pts.iter().map(|p| p.3).max().unwrap_or(0);
    let spread = hi >= 1024 && hi >= 2 * lo.max(1) && pts.len() >= 2;
    let one = |half: f64| -> f64 {
        // s ≈ a·(x1 + x2/half): a = Σ(z/s) / Σ(z/s)².
        let (mut num, mut den) = (0.0, 0.0);
        for p in &pts {
            let z = (p.0 + p.1 / half) / p.2;
            num += z;
            den += z * z;
        }
        num / den
    };
    let (mut a, mut b, mut measured) = (0.0, 0.0, false);
    if spread {
        let (mut suu, mut suv, mut svv, mut su, mut sv) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for p in &pts {
            let (u, v) = (p.0 / p.2, p.1 / p.2);
            suu += u * u;
            suv += u * v;
            svv += v * v;
            su += u;
            sv += v;
        }
        let det = suu * svv - suv * suv;
        if det.abs() > f64::EPSILON * suu * svv {
            a = (su * svv - sv * suv) / det;
            b = (sv * suu - su * suv) / det;
            measured = true;
        }
        if measured && b < 0.0 {
            // Flat (or noise making it look faster with depth): no depth term.
            a = su / suu;
            b = 0.0;
        }
        if a <= 0.0 {
            measured = false;
        }
    }
    if !measured {
        a = one(half_depth);
        b = a / half_depth;
    }
    let rel_rms = (pts.len() >= 3).then(|| {
        let ss: f64 = pts
            .iter()
            .map(|p| ((a * p.0 + b * p.1) / p.2 - 1.0).powi(2))
            .sum();
        (ss / pts.len() as f64).sqrt()
    });
    Some(Fit {
        per_token_s: a,
        per_depth_s: b,
        points: pts.len(),
        depth_measured: measured,
        rel_rms,
        max_depth: hi,
    })
}

/// Expected and upper time of `a·x1 + b·x2` for work reaching `to`. The upper bound widens by
/// the residual scatter (at least [`MIN_REL`]), uses the pessimistic half-rate depth where the
/// depth term is not measured, and grows with extrapolation beyond the deepest measurement.
fn estimate(f: &Fit, x1: f64, x2: f64, to: u64, half_low: f64) -> Estimate {
    let expected = f.per_token_s * x1 + f.per_depth_s * x2;
    let b_up = if f.depth_measured {
        f.per_depth_s
    } else {
        f.per_depth_s.max(f.per_token_s / half_low)
    };
    let rel = f.rel_rms.map_or(2.0 * MIN_REL, |r| (3.0 * r).max(MIN_REL));
    let extrapolation = if to > f.max_depth && f.max_depth > 0 {
        1.0 + (to as f64 / f.max_depth as f64).ln() / 4.0
    } else {
        1.0
    };
    Estimate {
        expected_s: expected,
        upper_s: (f.per_token_s * x1 + b_up * x2) * (1.0 + rel) * extrapolation,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server with a known law: prefill r(d) = r0 / (1 + d/h), decode g(d) = g0 / (1 + d/k).
    fn truth_fill(r0: f64, h: f64, from: f64, to: f64) -> f64 {
        ((to - from) + (to * to - from * from) / (2.0 * h)) / r0
    }

    fn prior() -> Prior {
        Prior::from_size(Some(30_000_000_000), Some(18_000_000_000))
    }

    #[test]
    fn recovers_a_known_prefill_law_from_fills_at_several_depths() {
        // The 30B-A3B Vulkan calibration: r0 = 1065 tok/s, h = 5455 tokens.
        let (r0, h) = (1065.0, 5455.0);
        let mut m = TimeModel::new(prior());
        for d in [512.0, 4096.0, 16384.0, 32768.0] {
            m.observe(&[Obs::Prefill {
                from: 0,
                to: d as u64,
                s: truth_fill(r0, h, 0.0, d),
                batch: None,
            }]);
        }
        let f = m.prefill.unwrap();
        assert!(f.depth_measured);
        assert!((1.0 / f.per_token_s - r0).abs() < 1.0, "{f:?}");
        assert!((m.prefill_half_depth().unwrap() - h).abs() < 5.0, "{f:?}");
        // Extrapolation to 236K stays within a few percent of the law, upper above it.
        let want = truth_fill(r0, h, 0.0, 235_929.0);
        let e = m.fill(0, 235_929);
        assert!((e.expected_s / want - 1.0).abs() < 0.01, "{e:?} vs {want}");
        assert!(e.upper_s > want * 1.2);
        // A cached prefix costs only the suffix, at the marginal rate of its depth.
        let suffix = m.fill(235_865, 235_929);
        let want = truth_fill(r0, h, 235_865.0, 235_929.0);
        assert!((suffix.expected_s / want - 1.0).abs() < 0.01);
    }

    #[test]
    fn increments_of_one_request_fit_like_separate_requests() {
        // Progress events of one fill: cumulative points 0..k·2048.
        let (r0, h) = (300.0, 11_000.0);
        let mut m = TimeModel::new(prior());
        let mut prev = 0.0;
        for k in 1..=20u64 {
            let d = (k * 2048) as f64;
            m.observe(&[Obs::Prefill {
                from: ((k - 1) * 2048),
                to: k * 2048,
                s: truth_fill(r0, h, prev, d),
                batch: None,
            }]);
            prev = d;
        }
        let f = m.prefill.unwrap();
        assert_eq!(f.points, 20);
        assert!(f.rel_rms.unwrap() < 1e-9);
        assert!((m.prefill_half_depth().unwrap() - h).abs() < 1.0);
    }

    #[test]
    fn one_depth_leaves_the_depth_term_to_the_prior_and_widens_the_bound() {
        let mut m = TimeModel::new(prior());
        m.observe(&[Obs::Prefill {
            from: 0,
            to: 80,
            s: 0.08,
            batch: None,
        }]);
        let f = m.prefill.unwrap();
        assert!(!f.depth_measured);
        assert!((1.0 / f.per_token_s - 1000.0).abs() < 10.0, "{f:?}");
        // The pessimistic prior halves the rate by 4096 tokens: at 32K the upper bound is
        // well above the central estimate.
        let e = m.fill(0, 32_768);
        assert!(e.upper_s > 2.0 * e.expected_s, "{e:?}");
    }

    #[test]
    fn nothing_measured_uses_the_prior_pessimistically() {
        let m = TimeModel::new(prior());
        let e = m.fill(0, 1000);
        assert!(e.expected_s > 0.0 && e.upper_s >= 4.0 * e.expected_s);
        assert_eq!(m.load().expected_s, m.prior.load_s);
        assert!(m.describe().contains("prior"));
    }

    #[test]
    fn decode_falls_with_depth_as_measured() {
        // Qwen3-30B-A3B on Vulkan: 69 tok/s at depth 0, 34 at 32K: k = 31 800.
        let (g0, k) = (69.0, 31_800.0);
        let mut m = TimeModel::new(prior());
        for d in [100u64, 8192, 32_768] {
            let n = 64.0;
            let df = d as f64;
            let s = (n + (n * df + n * n / 2.0) / k) / g0;
            m.observe(&[Obs::Decode {
                depth: d,
                tokens: 64,
                s,
            }]);
        }
        assert!((m.decode_rate_at(0) - g0).abs() < 0.5);
        assert!((m.decode_rate_at(32_768) - 34.0).abs() < 0.5);
    }

    #[test]
    fn noise_widens_the_upper_bound_and_negative_slopes_are_flat() {
        let mut m = TimeModel::new(prior());
        // Faster with depth (noise): the fit keeps no depth term rather than a negative one.
        m.observe(&[
            Obs::Prefill {
                from: 0,
                to: 1000,
                s: 1.0,
                batch: None,
            },
            Obs::Prefill {
                from: 0,
                to: 4000,
                s: 3.5,
                batch: None,
            },
            Obs::Prefill {
                from: 0,
                to: 8000,
                s: 6.5,
                batch: None,
            },
        ]);
        let f = m.prefill.unwrap();
        assert_eq!(f.per_depth_s, 0.0);
        assert!(f.rel_rms.unwrap() > 0.0);
        let e = m.fill(0, 8000);
        assert!(e.upper_s >= e.expected_s * (1.0 + MIN_REL));
    }

    #[test]
    fn invalid_observations_are_ignored_and_loads_summarised() {
        let mut m = TimeModel::new(prior());
        m.observe(&[
            Obs::Prefill {
                from: 10,
                to: 10,
                s: 1.0,
                batch: None,
            },
            Obs::Decode {
                depth: 0,
                tokens: 5,
                s: f64::NAN,
            },
            Obs::Load { s: 12.0 },
            Obs::Load { s: 20.0 },
            Obs::Load { s: 14.0 },
        ]);
        assert!(m.prefill.is_none() && m.decode.is_none());
        assert_eq!(m.load_median_s, Some(14.0));
        assert_eq!(m.load().upper_s, 20.0 * 1.25 + 5.0);
    }

    #[test]
    fn reuse_is_sticky_once_missed() {
        let mut m = TimeModel::new(prior());
        m.observe_reuse(true);
        assert_eq!(m.prefix_reuse, Some(true));
        m.observe_reuse(false);
        m.observe_reuse(true);
        assert_eq!(m.prefix_reuse, Some(false));
    }
}
