//! `o3 accuracy`: how good the predictions are, measured on the store's own records, one
//! block per model (see learn::accuracy).

use std::path::PathBuf;

use serde_json::{json, Value};

use crate::learn::accuracy::{self, Accuracy, MAX_HELD_OUT};
use crate::learn::memory::{Residual, MIN_FIT_SAMPLES};

use super::history::{no_history_yet, open_existing};
use super::{stdout, CliResult, Roots};

#[derive(Debug, clap::Args)]
pub struct AccuracyArgs {
    /// The results store (default: $XDG_DATA_HOME/o3/o3.db or ~/.local/share/o3/o3.db).
    #[arg(long, value_name = "FILE")]
    pub db: Option<PathBuf>,
    /// Only the models whose name contains this.
    #[arg(long, value_name = "SUBSTRING")]
    pub model: Option<String>,
    /// Print the figures as one JSON object.
    #[arg(long)]
    pub json: bool,
}

fn failure(e: impl std::error::Error + Send + Sync + 'static) -> (anyhow::Error, i32) {
    (anyhow::Error::new(e), 1)
}

pub fn run(_roots: &Roots, a: AccuracyArgs) -> CliResult {
    let (path, store) = open_existing(a.db)?;
    let Some(store) = store else {
        no_history_yet(&path, a.json, "models")?;
        return Ok(0);
    };
    let models: Vec<(String, String)> = store
        .models()
        .map_err(failure)?
        .into_iter()
        .filter(|(_, name)| a.model.as_deref().is_none_or(|m| name.contains(m)))
        .collect();
    if models.is_empty() {
        return Err((
            anyhow::anyhow!(
                "no model in {} {}: o3 history lists the models measured",
                path.display(),
                a.model
                    .as_deref()
                    .map_or("yet".into(), |m| format!("has a name containing {m:?}"))
            ),
            1,
        ));
    }
    let mut blocks = Vec::new();
    let mut text = String::new();
    for (id, name) in &models {
        let records = store.records(None, Some(id)).map_err(failure)?;
        let acc = (!records.is_empty())
            .then(|| accuracy::measure(&records, accuracy::place_of(&records)));
        if a.json {
            blocks.push(json_of(name, id, acc.as_ref()));
        } else {
            if !text.is_empty() {
                text.push('\n');
            }
            text += &render(name, acc.as_ref());
        }
    }
    if a.json {
        stdout::line(json!({
            "schema_version": 1,
            "generated_unix_s": crate::util::system::unix_now_ns() / 1_000_000_000,
            "db": path.display().to_string(),
            "exists": true,
            "max_held_out_records": MAX_HELD_OUT,
            "models": blocks,
        }))
    } else {
        stdout::print(&text)
    }
    .map(|()| 0)
}

/// A ratio in percent to one decimal (no negative zero).
fn pct(v: f64) -> f64 {
    (v * 1000.0).round() / 10.0 + 0.0
}

/// A signed percentage: "+4.1 %", "-4.9 %", "0.0 %".
fn signed(v: f64) -> String {
    let p = pct(v);
    if p == 0.0 {
        "0.0 %".into()
    } else {
        format!("{p:+.1} %")
    }
}

/// "median 1.1 %, worst +4.1 %"
fn errors(r: &Residual) -> String {
    format!(
        "median {:.1} %, worst {}",
        pct(r.median_abs),
        signed(r.worst)
    )
}

/// "14 measurements" or "60 of 140 measurements, evenly spread"
fn of(evaluated: usize, total: usize, what: &str) -> String {
    if evaluated < total {
        format!("{evaluated} of {total} {what}, evenly spread")
    } else {
        format!("{total} {what}")
    }
}

/// One model's figures in words.
pub fn render(name: &str, acc: Option<&Accuracy>) -> String {
    let Some(a) = acc else {
        return format!("model {name}: no records yet (o3 optimize stores its probes)\n");
    };
    let m = &a.memory;
    let mut out = format!(
        "model {name} ({}; {} records)\n  memory: {} measured peak(s)",
        a.place.name(),
        a.records,
        m.points
    );
    match &m.fitted {
        Some(f) => out += &format!("; fitted: {}", errors(f)),
        None if m.points > 0 => {
            out += &format!("; no law fitted ({MIN_FIT_SAMPLES} are needed)");
        }
        None => {}
    }
    if let Some(h) = &m.held_out {
        out += &format!(
            "; a context held out ({} contexts): {}, {} of {} in range",
            m.contexts,
            errors(h),
            m.in_range,
            h.points
        );
    }
    out.push('\n');
    out += &match &a.rates {
        None => "  rates: no successful single-stream measurement\n".into(),
        Some(r) => {
            let side = |name: &str, e: &Option<Residual>| match e {
                Some(e) => format!("{name} {}", errors(e)),
                None => format!("{name} not predicted"),
            };
            format!(
                "  rates (leave one out, {}): {}; {}\n",
                of(r.evaluated, r.measurements, "measurements"),
                side("prefill", &r.prefill),
                side("decode", &r.decode)
            )
        }
    };
    if let Some(s) = &a.success {
        out += &format!(
            "  P(success) (leave one out, {}; {} succeeded): Brier {:.3}; memory model alone {:.3}\n",
            of(s.evaluated, s.records, "records"),
            s.successes,
            s.brier_predictor,
            s.brier_memory_model
        );
    }
    out
}

/// One model's figures for `--json` (relative errors in percent, signed where `worst`).
pub fn json_of(name: &str, id: &str, acc: Option<&Accuracy>) -> Value {
    let Some(a) = acc else {
        return json!({ "model": name, "model_id": id, "records": 0 });
    };
    let res = |prefix: &str, r: &Option<Residual>| {
        json!({
            format!("{prefix}_median_abs_error_pct"): r.map(|r| pct(r.median_abs)),
            format!("{prefix}_worst_error_pct"): r.map(|r| pct(r.worst)),
            format!("{prefix}_points"): r.map_or(0, |r| r.points),
        })
    };
    let m = &a.memory;
    let mut memory = json!({
        "points": m.points,
        "held_out_contexts": m.contexts,
        "held_out_in_range": m.in_range,
    });
    merge(&mut memory, res("fitted", &m.fitted));
    merge(&mut memory, res("held_out", &m.held_out));
    let rates = a.rates.as_ref().map(|r| {
        let mut v = json!({ "measurements": r.measurements, "evaluated": r.evaluated });
        merge(&mut v, res("prefill", &r.prefill));
        merge(&mut v, res("decode", &r.decode));
        v
    });
    json!({
        "model": name,
        "model_id": id,
        "place": a.place,
        "records": a.records,
        "memory": memory,
        "rates": rates,
        "success": a.success,
    })
}

fn merge(into: &mut Value, from: Value) {
    if let (Some(a), Value::Object(b)) = (into.as_object_mut(), from) {
        a.extend(b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::learn::accuracy::{MemoryAccuracy, RateAccuracy, SuccessAccuracy};
    use crate::learn::memory::Place;

    fn residual(median_abs: f64, worst: f64, points: usize) -> Residual {
        Residual {
            median_abs,
            worst,
            lowest: worst.min(0.0),
            highest: worst.max(0.0),
            points,
        }
    }

    fn figures() -> Accuracy {
        Accuracy {
            place: Place::Gpu,
            records: 140,
            memory: MemoryAccuracy {
                points: 21,
                fitted: Some(residual(0.011, 0.041, 21)),
                held_out: Some(residual(0.017, -0.049, 21)),
                contexts: 7,
                in_range: 20,
            },
            rates: Some(RateAccuracy {
                measurements: 14,
                evaluated: 14,
                prefill: Some(residual(0.06, -0.18, 14)),
                decode: None,
            }),
            success: Some(SuccessAccuracy {
                records: 140,
                evaluated: 60,
                successes: 25,
                brier_predictor: 0.04,
                brier_memory_model: 0.0712,
            }),
        }
    }

    #[test]
    fn figures_in_words() {
        assert_eq!(
            render("llama3.1:8b", Some(&figures())),
            "model llama3.1:8b (GPU memory; 140 records)\n  memory: 21 measured peak(s); fitted: median 1.1 %, worst +4.1 %; a context held out (7 contexts): median 1.7 %, worst -4.9 %, 20 of 21 in range\n  rates (leave one out, 14 measurements): prefill median 6.0 %, worst -18.0 %; decode not predicted\n  P(success) (leave one out, 60 of 140 records, evenly spread; 25 succeeded): Brier 0.040; memory model alone 0.071\n"
        );
        let mut tiny = figures();
        tiny.memory.fitted = Some(residual(0.0001, -0.0004, 21));
        assert!(
            render("x", Some(&tiny)).contains("fitted: median 0.0 %, worst 0.0 %;"),
            "no negative zero"
        );
        assert_eq!(
            render("x", None),
            "model x: no records yet (o3 optimize stores its probes)\n"
        );
    }

    #[test]
    fn json_keys_carry_units() {
        let v = json_of("llama3.1:8b", "id1", Some(&figures()));
        assert_eq!(v["place"], "gpu");
        assert_eq!(v["memory"]["fitted_median_abs_error_pct"], 1.1);
        assert_eq!(v["memory"]["held_out_worst_error_pct"], -4.9);
        assert_eq!(v["memory"]["held_out_in_range"], 20);
        assert_eq!(v["rates"]["prefill_worst_error_pct"], -18.0);
        assert_eq!(v["rates"]["decode_median_abs_error_pct"], Value::Null);
        assert_eq!(v["rates"]["decode_points"], 0);
        assert_eq!(v["success"]["brier_predictor"], 0.04);
        assert_eq!(v["success"]["evaluated"], 60);
        assert_eq!(json_of("x", "id2", None)["records"], 0);
    }
}
