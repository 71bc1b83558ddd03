//! The optimizer's side of learning: probes become store records as they finish, and an
//! earlier run of this host and model becomes something to verify, when it is recent and the
//! machine has not changed in a way that matters.

use crate::learn::fingerprint::Host;
use crate::learn::store::{Store, StoreError};
use crate::learn::{ModelShape, Record};

use super::prober::{Depth, ProbeOutcome, ProbeRequest};
use super::search::Learned;

/// Median of the finite values.
fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    crate::util::order::median(v)
}

/// A finished probe as a store record. `depth_tokens`: the prompt tokens that prove its
/// context at depth (`prompt.fill` of it less the output).
pub fn record_of(
    req: &ProbeRequest,
    out: &ProbeOutcome,
    depth_tokens: u32,
    host_id: &str,
    model_id: &str,
    shape: &ModelShape,
    capacity_bytes: Option<u64>,
) -> Record {
    let ok = || out.observations.iter().filter(|o| o.ok);
    let fill_ok = out.observations.iter().any(|o| o.ok && !o.cached);
    Record {
        host_id: host_id.to_string(),
        model_id: model_id.to_string(),
        config: req.config.clone(),
        concurrency: req.concurrency,
        outcome: out.outcome,
        success: out.passed(),
        prefill_tokens_per_s: median(ok().filter_map(|o| o.prefill_tokens_per_s).collect()),
        decode_tokens_per_s: median(ok().filter_map(|o| o.decode_tokens_per_s).collect()),
        ttft_ms: median(ok().filter_map(|o| o.ttft_ms).collect()),
        rss_peak_bytes: out.rss_peak_bytes,
        gpu_used_peak_bytes: out.gpu_used_peak_bytes,
        capacity_bytes,
        model: shape.clone(),
        trusted: true,
        unix_s: crate::util::system::unix_now_ns() / 1_000_000_000,
        prompt_tokens: out.prompt_tokens,
        proven_at_depth: match req.depth {
            Depth::Filled { tokens } => Some(fill_ok && tokens >= depth_tokens),
            _ => None,
        },
        timing: out.timing.clone(),
    }
}

/// Why an earlier run is not reused (the search runs instead).
#[derive(Debug, thiserror::Error)]
pub enum NotReused {
    #[error("no earlier run of this model on this machine")]
    NoEarlierRun,
    #[error("the store could not be read: {0}")]
    Store(StoreError),
    #[error("run {run_id} established no validated context")]
    NoValidatedContext { run_id: i64 },
    #[error("run {run_id} is {age_days:.1} days old (learning.max_age_days {max_age_days}): searching again")]
    TooOld {
        run_id: i64,
        age_days: f64,
        max_age_days: f64,
    },
    #[error("the machine changed since run {run_id} ({}): searching again", .changed.join(", "))]
    MachineChanged { run_id: i64, changed: Vec<String> },
}

/// What to verify instead of searching, or why nothing is reused.
pub fn to_verify(
    store: &Store,
    host: &Host,
    host_id: &str,
    model_id: &str,
    max_age_days: f64,
    now_unix_s: u64,
) -> Result<Learned, NotReused> {
    let l = store
        .learned(host_id, model_id)
        .map_err(NotReused::Store)?
        .ok_or(NotReused::NoEarlierRun)?;
    let Some(max_context) = l.max_context else {
        return Err(NotReused::NoValidatedContext { run_id: l.run_id });
    };
    let age_days = now_unix_s.saturating_sub(l.finished_unix_s) as f64 / 86_400.0;
    if age_days > max_age_days {
        return Err(NotReused::TooOld {
            run_id: l.run_id,
            age_days,
            max_age_days,
        });
    }
    let changed = host.changes_from(&l.host);
    if !changed.is_empty() {
        return Err(NotReused::MachineChanged {
            run_id: l.run_id,
            changed,
        });
    }
    Ok(Learned {
        source: format!("run {}, {age_days:.1} days old", l.run_id),
        max_context,
        presets: l
            .presets
            .into_iter()
            .map(|(name, cfg)| {
                let streams = cfg.parallel.unwrap_or(1);
                (name, cfg, streams)
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{OutcomeClass, ProbeConfig};
    use crate::learn::fingerprint::Gpu;
    use crate::optimize::prober::Stage;
    use crate::optimize::stats::Observation;

    fn host(kernel: &str) -> Host {
        Host {
            cpu_model: "test cpu".into(),
            cpu_cores: 16,
            ram_bytes: 128 << 30,
            gpus: vec![Gpu {
                name: "test apu".into(),
                pci_id: Some("1002:1586".into()),
                apu: true,
                vram_bytes: Some(512 << 20),
                gtt_bytes: Some(120 << 30),
                driver_version: None,
                firmware: None,
            }],
            kernel: kernel.into(),
            rocm_version: None,
            vulkan_driver: None,
            cuda_driver: None,
        }
    }

    fn stored_run(store: &Store, h: &Host) -> (String, String) {
        let hid = store.upsert_host(h).unwrap();
        let mid = store
            .upsert_model("m", "d", &ModelShape::default())
            .unwrap();
        let run = store.begin_run(&hid, &mid, "sim", "/tmp/x", "{}").unwrap();
        let req = ProbeRequest {
            stage: Stage::Validate,
            config: ProbeConfig {
                ctx: 8192,
                batch: Some(64),
                ..Default::default()
            },
            depth: crate::optimize::prober::Depth::Filled { tokens: 7309 },
            rounds: 2,
            concurrency: 1,
        };
        let mut out = ProbeOutcome::failed(OutcomeClass::Ok, "");
        out.error = None;
        out.observations = vec![
            Observation {
                ok: true,
                ttft_ms: Some(100.0),
                prefill_tokens_per_s: Some(1000.0),
                decode_tokens_per_s: Some(50.0),
                cached: false,
            },
            Observation {
                ok: true,
                ttft_ms: Some(120.0),
                prefill_tokens_per_s: Some(900.0),
                decode_tokens_per_s: Some(40.0),
                cached: true,
            },
        ];
        let rec = record_of(
            &req,
            &out,
            7309,
            &hid,
            &mid,
            &ModelShape::default(),
            Some(1 << 30),
        );
        assert_eq!(rec.decode_tokens_per_s, Some(45.0));
        assert!(rec.success);
        store.add_probe(run, "validate", &rec, None).unwrap();
        let preset = serde_json::json!({ "config": req.config });
        store
            .finish_run(
                run,
                "finished",
                Some(8192),
                Some(true),
                &[("max_context".into(), preset)],
            )
            .unwrap();
        (hid, mid)
    }

    #[test]
    fn a_recent_run_on_the_same_machine_is_verified_not_searched() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("o3.db")).unwrap();
        let h = host("6.18.1");
        let (hid, mid) = stored_run(&store, &h);
        let now = crate::util::system::unix_now_ns() / 1_000_000_000;
        let l = to_verify(&store, &h, &hid, &mid, 7.0, now).unwrap();
        assert_eq!(l.max_context, 8192);
        assert_eq!(l.presets.len(), 1);
        // Too old.
        let e = to_verify(&store, &h, &hid, &mid, 7.0, now + 8 * 86_400).unwrap_err();
        assert!(e.to_string().contains("days old"), "{e}");
        // A new kernel: revalidate.
        let e = to_verify(&store, &host("6.18.2"), &hid, &mid, 7.0, now).unwrap_err();
        assert!(e.to_string().contains("kernel"), "{e}");
        // Another model: nothing learned.
        assert!(matches!(
            to_verify(&store, &h, &hid, "other", 7.0, now),
            Err(NotReused::NoEarlierRun)
        ));
    }
}
