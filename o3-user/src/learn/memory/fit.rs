//! The law fitted to measured peaks: Bayesian least squares with the [`Prior`] as its prior
//! (each term pulled towards its central value in proportion to how little its bounds allow),
//! how well the fit reproduces its own points, and how well it predicts each one left out.

use serde::Serialize;

use super::law::{Law, Place, Prior, TERMS};
use super::{parts, Fill, Parts};
use crate::learn::Record;

/// Fewest measured peaks a fit uses; below this the prior stands alone.
pub const MIN_FIT_SAMPLES: usize = 3;

/// The smallest measurement noise assumed for a peak (bytes): run-to-run differences of the
/// same configuration's RSS on llama-server were ±0.3 MB.
const MIN_NOISE_BYTES: f64 = 512.0 * 1024.0;
/// Measurement noise relative to the peaks' median: allocations at load are deterministic,
/// so what varies is heap growth between requests.
const NOISE_FRACTION: f64 = 0.001;

/// The fit's error on points: (estimated − measured) ÷ measured of each whole peak.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Residual {
    /// Median of the absolute relative errors.
    pub median_abs: f64,
    /// The relative error largest in size, with its sign (negative: underestimated).
    pub worst: f64,
    /// The most negative and the most positive relative errors (0 when none is on that side).
    pub lowest: f64,
    pub highest: f64,
    pub points: usize,
}

impl Residual {
    /// From each point's (estimated, measured) peak; `None` without points.
    pub fn of(points: &[(f64, f64)]) -> Option<Residual> {
        let errs: Vec<f64> = points
            .iter()
            .filter(|(_, m)| *m > 0.0)
            .map(|(e, m)| (e - m) / m)
            .collect();
        let worst = errs
            .iter()
            .copied()
            .max_by(|a, b| a.abs().total_cmp(&b.abs()))?;
        let abs: Vec<f64> = errs.iter().map(|e| e.abs()).collect();
        Some(Residual {
            median_abs: crate::util::order::median(abs)?,
            worst,
            lowest: errs.iter().copied().fold(0.0, f64::min),
            highest: errs.iter().copied().fold(0.0, f64::max),
            points: errs.len(),
        })
    }
}

/// The law measured peaks determine, and how well it does.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fitted {
    pub law: Law,
    /// Peaks fitted.
    pub samples: usize,
    /// On the points fitted.
    pub residual: Residual,
    /// Each point predicted by the fit to the others (leave-one-out); `None` below
    /// [`MIN_FIT_SAMPLES`] + 1 points.
    pub held_out: Option<Residual>,
}

/// The memory law of one place: fitted to measured peaks where there are enough, else the
/// prior.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemoryFit {
    pub place: Place,
    pub fitted: Option<Fitted>,
    /// Usable peaks seen (trusted, successful, of this place), fitted or not.
    pub usable: usize,
}

impl MemoryFit {
    /// No measurement: the prior alone.
    pub fn prior(place: Place) -> MemoryFit {
        MemoryFit {
            place,
            fitted: None,
            usable: 0,
        }
    }

    /// A fit standing for a known law, exact on its points (a simulator's or a test's truth).
    pub fn known(place: Place, law: Law) -> MemoryFit {
        let zero = Residual::of(&[(1.0, 1.0)]).expect("one point");
        MemoryFit {
            place,
            fitted: Some(Fitted {
                law,
                samples: 99,
                residual: zero,
                held_out: Some(zero),
            }),
            usable: 99,
        }
    }

    /// The law an estimate for a model of this shape uses.
    pub fn law(&self, prior: &Prior) -> Law {
        self.fitted.as_ref().map_or(prior.central, |f| f.law)
    }
}

/// One measured peak as the fit sees it.
struct Point {
    x: [f64; TERMS],
    /// The peak less the terms not fitted (weights, attention scores).
    y: f64,
    fixed: f64,
    peak: f64,
}

/// The peak of `place` a record measured.
pub fn peak_of(r: &Record, place: Place) -> Option<u64> {
    match place {
        Place::Gpu => r.gpu_used_peak_bytes,
        Place::Ram => r.rss_peak_bytes,
    }
}

/// The context tokens a record's requests held over all slots: each stream's prompt (at most
/// one stream per slot), capped at the context; the whole context when not recorded.
pub fn fill_of(r: &Record) -> Fill {
    match r.prompt_tokens {
        Some(t) => {
            let slots = u64::from(super::slots(&r.config));
            let streams = u64::from(r.concurrency.max(1)).min(slots);
            let cap = u64::from(r.config.ctx) * slots;
            Fill::Tokens((t * streams).min(cap) as f64)
        }
        None => Fill::Full,
    }
}

fn point(r: &Record, place: Place) -> Option<Point> {
    let peak = peak_of(r, place)? as f64;
    let p: Parts = parts(&r.model, &r.config, place, fill_of(r));
    let fixed = p.weights + p.scores;
    Some(Point {
        x: Law::columns(p.kv_exact, p.ubatch, p.tokens),
        y: peak - fixed,
        fixed,
        peak,
    })
}

/// Fits the law of `place` to the trusted, successful records with a peak there; the prior is
/// the one of the first such record's model (every record is expected to be of one model).
pub fn fit(records: &[Record], place: Place) -> MemoryFit {
    let usable: Vec<&Record> = records
        .iter()
        .filter(|r| r.trusted && r.success && peak_of(r, place).is_some())
        .collect();
    let points: Vec<Point> = usable.iter().filter_map(|r| point(r, place)).collect();
    let mut out = MemoryFit {
        place,
        fitted: None,
        usable: points.len(),
    };
    if points.len() < MIN_FIT_SAMPLES {
        return out;
    }
    let prior = Prior::of(place, &usable[0].model);
    let normal = Normal::of(&points, &prior);
    let law = Law::from_coefficients(normal.solve(None));
    let estimate = |law: &Law, p: &Point| p.fixed + law.bytes(p.x[1], p.x[2], p.x[3]);
    let on_points: Vec<(f64, f64)> = points.iter().map(|p| (estimate(&law, p), p.peak)).collect();
    let held_out = (points.len() > MIN_FIT_SAMPLES).then(|| {
        let loo: Vec<(f64, f64)> = points
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let l = Law::from_coefficients(normal.solve(Some(i)));
                (estimate(&l, p), p.peak)
            })
            .collect();
        Residual::of(&loo)
    });
    out.fitted = Residual::of(&on_points).map(|residual| Fitted {
        law,
        samples: points.len(),
        residual,
        held_out: held_out.flatten(),
    });
    out
}

/// The normal equations of the posterior in prior-normalised coordinates (each coefficient
/// divided by its prior sd, so the prior's part is the identity and the system is well
/// conditioned whatever the terms' units), with each point's contribution kept so one can be
/// left out.
struct Normal {
    a: [[f64; TERMS]; TERMS],
    b: [f64; TERMS],
    /// Each point's scaled regressors and target ÷ noise.
    rows: Vec<([f64; TERMS], f64)>,
    sd: [f64; TERMS],
}

impl Normal {
    fn of(points: &[Point], prior: &Prior) -> Normal {
        let sd = prior.sd();
        let mean = prior.central.coefficients();
        let mut peaks: Vec<f64> = points.iter().map(|p| p.peak).collect();
        peaks.sort_by(f64::total_cmp);
        let noise =
            (crate::util::order::median_sorted(&peaks) * NOISE_FRACTION).max(MIN_NOISE_BYTES);
        let mut a = [[0.0; TERMS]; TERMS];
        let mut b = [0.0; TERMS];
        for i in 0..TERMS {
            a[i][i] = 1.0;
            b[i] = mean[i] / sd[i];
        }
        let rows: Vec<([f64; TERMS], f64)> = points
            .iter()
            .map(|p| {
                let mut z = [0.0; TERMS];
                for j in 0..TERMS {
                    z[j] = p.x[j] * sd[j] / noise;
                }
                (z, p.y / noise)
            })
            .collect();
        for (z, y) in &rows {
            add(&mut a, &mut b, z, *y, 1.0);
        }
        Normal { a, b, rows, sd }
    }

    /// The posterior mean, without point `leave` when given.
    fn solve(&self, leave: Option<usize>) -> [f64; TERMS] {
        let (mut a, mut b) = (self.a, self.b);
        if let Some((z, y)) = leave.and_then(|i| self.rows.get(i)) {
            add(&mut a, &mut b, z, *y, -1.0);
        }
        let t = solve(a, b);
        let mut out = [0.0; TERMS];
        for j in 0..TERMS {
            out[j] = t[j] * self.sd[j];
        }
        out
    }
}

fn add(a: &mut [[f64; TERMS]; TERMS], b: &mut [f64; TERMS], z: &[f64; TERMS], y: f64, sign: f64) {
    for i in 0..TERMS {
        for j in 0..TERMS {
            a[i][j] += sign * z[i] * z[j];
        }
        b[i] += sign * z[i] * y;
    }
}

/// Gaussian elimination with partial pivoting (the matrix is the identity plus a positive
/// semi-definite part: never singular).
fn solve(mut a: [[f64; TERMS]; TERMS], mut b: [f64; TERMS]) -> [f64; TERMS] {
    for col in 0..TERMS {
        let pivot = (col..TERMS)
            .max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))
            .unwrap_or(col);
        a.swap(col, pivot);
        b.swap(col, pivot);
        let p = a[col][col];
        if p == 0.0 {
            continue;
        }
        let pivot_row = a[col];
        for row in col + 1..TERMS {
            let f = a[row][col] / p;
            for (v, pv) in a[row].iter_mut().zip(pivot_row).skip(col) {
                *v -= f * pv;
            }
            b[row] -= f * b[col];
        }
    }
    let mut x = [0.0; TERMS];
    for i in (0..TERMS).rev() {
        let s = b[i] - (i + 1..TERMS).map(|j| a[i][j] * x[j]).sum::<f64>();
        x[i] = if a[i][i] == 0.0 { 0.0 } else { s / a[i][i] };
    }
    x
}
