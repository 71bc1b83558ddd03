//! What o3 predicted for each probe before it ran, kept beside the probe's measurement: the
//! running error of predictions (`o3 predict`, the report).

use rusqlite::params;
use serde::Serialize;

use super::{from_i64, to_i64, Store, StoreError};
use crate::backend::ProbeConfig;
use crate::learn::memory::Place;
use crate::learn::predict::Prediction;

/// One prediction as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PredictionRow {
    /// The memory the peak is predicted (and measured) in.
    pub place: Place,
    /// The memory model at the probe's fill, and its range.
    pub peak_bytes: u64,
    pub peak_low_bytes: u64,
    pub peak_high_bytes: u64,
    /// Measured peaks the memory law was fitted to (0: the prior).
    pub fitted_points: usize,
    pub p_success: f64,
    pub prefill_tokens_per_s: Option<f64>,
    pub decode_tokens_per_s: Option<f64>,
    pub basis: String,
}

impl PredictionRow {
    pub fn of(p: &Prediction) -> PredictionRow {
        let e = &p.estimate;
        PredictionRow {
            place: e.place,
            peak_bytes: e.total_bytes,
            peak_low_bytes: e.low_bytes,
            peak_high_bytes: e.high_bytes,
            fitted_points: e.fitted_points,
            p_success: p.p_success,
            prefill_tokens_per_s: p.prefill_tokens_per_s,
            decode_tokens_per_s: p.decode_tokens_per_s,
            basis: p.basis.clone(),
        }
    }
}

/// A prediction beside what its probe measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Checked {
    pub predicted: PredictionRow,
    pub stage: String,
    pub config: ProbeConfig,
    /// Simultaneous streams of the probe (rates are predicted for one).
    pub concurrency: u32,
    pub success: bool,
    /// The probe's peak in the prediction's place.
    pub measured_peak_bytes: Option<u64>,
    pub prefill_tokens_per_s: Option<f64>,
    pub decode_tokens_per_s: Option<f64>,
    pub unix_s: u64,
}

fn place_name(p: Place) -> &'static str {
    match p {
        Place::Ram => "ram",
        Place::Gpu => "gpu",
    }
}

impl Store {
    /// Stores what was predicted for probe `probe_id` (one prediction per probe: a second
    /// replaces the first).
    pub fn add_prediction(&self, probe_id: i64, p: &PredictionRow) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO predictions (probe_id, place, peak_bytes,
                     peak_low_bytes, peak_high_bytes, fitted_points, p_success,
                     prefill_tokens_per_s, decode_tokens_per_s, basis)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    probe_id,
                    place_name(p.place),
                    to_i64(p.peak_bytes),
                    to_i64(p.peak_low_bytes),
                    to_i64(p.peak_high_bytes),
                    to_i64(p.fitted_points as u64),
                    p.p_success,
                    p.prefill_tokens_per_s,
                    p.decode_tokens_per_s,
                    p.basis,
                ],
            )
            .map_err(self.err("storing a prediction"))?;
        Ok(())
    }

    /// The newest `limit` predictions beside their measurements, of a host, a model and a run
    /// when given (`None`: any).
    pub fn checked_predictions(
        &self,
        host_id: Option<&str>,
        model_id: Option<&str>,
        run_id: Option<i64>,
        limit: usize,
    ) -> Result<Vec<Checked>, StoreError> {
        let mut s = self
            .conn
            .prepare(
                "SELECT pr.place, pr.peak_bytes, pr.peak_low_bytes, pr.peak_high_bytes,
                        pr.fitted_points, pr.p_success, pr.prefill_tokens_per_s,
                        pr.decode_tokens_per_s, pr.basis, p.stage, p.config_json,
                        p.concurrency, p.success, p.rss_peak_bytes, p.gpu_used_peak_bytes,
                        p.prefill_tokens_per_s, p.decode_tokens_per_s, p.unix_s
                 FROM predictions pr JOIN probes p ON p.id = pr.probe_id
                      JOIN runs r ON r.id = p.run_id
                 WHERE (?1 IS NULL OR r.host_id = ?1) AND (?2 IS NULL OR r.model_id = ?2)
                       AND (?3 IS NULL OR r.id = ?3)
                 ORDER BY p.unix_s DESC, p.id DESC LIMIT ?4",
            )
            .map_err(self.err("reading predictions"))?;
        let rows = s
            .query_map(
                params![host_id, model_id, run_id, to_i64(limit as u64)],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        [r.get::<_, i64>(1)?, r.get(2)?, r.get(3)?, r.get(4)?],
                        (r.get::<_, f64>(5)?, r.get(6)?, r.get(7)?, r.get(8)?),
                        (r.get::<_, String>(9)?, r.get::<_, String>(10)?, r.get(11)?),
                        (r.get::<_, bool>(12)?, r.get(13)?, r.get(14)?),
                        (r.get(15)?, r.get(16)?, r.get::<_, i64>(17)?),
                    ))
                },
            )
            .map_err(self.err("reading predictions"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.err("reading predictions"))?;
        rows.into_iter()
            .map(
                |(place, bytes, (p, pre, dec, basis), (stage, cfg, conc), m, rates)| {
                    let place = if place == "gpu" {
                        Place::Gpu
                    } else {
                        Place::Ram
                    };
                    let (success, rss, gpu): (bool, Option<i64>, Option<i64>) = m;
                    Ok(Checked {
                        predicted: PredictionRow {
                            place,
                            peak_bytes: from_i64(bytes[0]),
                            peak_low_bytes: from_i64(bytes[1]),
                            peak_high_bytes: from_i64(bytes[2]),
                            fitted_points: from_i64(bytes[3]) as usize,
                            p_success: p,
                            prefill_tokens_per_s: pre,
                            decode_tokens_per_s: dec,
                            basis,
                        },
                        stage,
                        config: serde_json::from_str(&cfg)
                            .map_err(self.data_err("probe config"))?,
                        concurrency: conc,
                        success,
                        measured_peak_bytes: match place {
                            Place::Gpu => gpu,
                            Place::Ram => rss,
                        }
                        .map(from_i64),
                        prefill_tokens_per_s: rates.0,
                        decode_tokens_per_s: rates.1,
                        unix_s: from_i64(rates.2),
                    })
                },
            )
            .collect()
    }
}
