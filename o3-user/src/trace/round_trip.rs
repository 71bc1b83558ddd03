//! Round trip: arbitrary records written by [`TraceWriter`] and read back by [`read_file`] are
//! the records written. The parts a reader holds by name (GPU entries, methods) are compared
//! with what serde makes of the written values, everything else field by field.

use proptest::collection::{btree_map, vec};
use proptest::option::of as maybe;
use proptest::prelude::*;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::record::{Header, HeaderRec, Method, Methods, Sample, SampleRec, TreeEvent};
use super::{read_file, TraceWriter, SCHEMA_VERSION};
use crate::trace::gpu::GpuReading;
use crate::trace::gpu::ProcessGpu;
use crate::trace::gpu::{GpuInfo, GpuSample};

/// Any finite float (JSON has no NaN or infinity: serde_json writes them as null).
fn float() -> impl Strategy<Value = f64> {
    use proptest::num::f64::{NEGATIVE, NORMAL, POSITIVE, SUBNORMAL, ZERO};
    POSITIVE | NEGATIVE | NORMAL | SUBNORMAL | ZERO
}

fn text() -> impl Strategy<Value = String> {
    any::<String>()
}

fn method() -> impl Strategy<Value = Method> {
    prop_oneof![
        Just(Method::Ebpf),
        Just(Method::ProcfsPolling),
        Just(Method::Rusage)
    ]
}

fn methods() -> impl Strategy<Value = Methods> {
    (
        method(),
        method(),
        method(),
        prop_oneof![Just("ebpf"), Just("sampled")],
    )
        .prop_map(|(rss, cpu, mem_used, gpu_mem)| Methods {
            rss,
            cpu,
            mem_used,
            gpu_mem,
        })
}

/// Any JSON: nested arrays and objects of nulls, flags, integers, floats and strings.
fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        float().prop_map(Value::from),
        text().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::from),
            btree_map(text(), inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A summary or probe: an object, without the `type` that the record's own tag takes.
fn body() -> impl Strategy<Value = Value> {
    btree_map(
        text().prop_filter("the record's tag", |k| k != "type"),
        json(),
        0..5,
    )
    .prop_map(|m| Value::Object(m.into_iter().collect()))
}

fn gpu_info() -> impl Strategy<Value = GpuInfo> {
    (
        (
            any::<u32>(),
            prop_oneof![Just("amd"), Just("nvidia")],
            text(),
        ),
        (maybe(text()), maybe(text()), any::<bool>(), maybe(text())),
        (text(), text(), text()),
        (vec((text(), float()), 0..3), vec(text(), 0..3)),
    )
        .prop_map(
            |(
                (index, vendor, name),
                (pci_id, pci_slot, apu, apu_basis),
                (memory_reader, sensor_reader, process_reader),
                (crit_c, notes),
            )| GpuInfo {
                index,
                vendor,
                name,
                pci_id,
                pci_slot,
                apu,
                apu_basis,
                memory_reader,
                sensor_reader,
                process_reader,
                crit_c,
                notes,
            },
        )
}

fn header() -> impl Strategy<Value = Header> {
    (
        (maybe(text()), maybe(text()), maybe(text())),
        (maybe(any::<u64>()), maybe(any::<u64>())),
        (json(), methods(), vec(gpu_info(), 0..3)),
    )
        .prop_map(
            |(
                (o3_version, host, kernel),
                (interval_ns, start_unix_ns),
                (target, methods, gpus),
            )| Header {
                schema_version: SCHEMA_VERSION,
                o3_version,
                host,
                kernel,
                interval_ns,
                start_unix_ns,
                target,
                methods,
                gpus,
            },
        )
}

fn gpu_sample() -> impl Strategy<Value = GpuSample> {
    (
        any::<u32>(),
        vec(maybe(any::<u64>()), 8),
        vec(maybe(float()), 9),
        (maybe(any::<u64>()), maybe(any::<u64>()), any::<bool>()),
    )
        .prop_map(
            |(index, b, f, (usable_used_bytes, usable_total_bytes, asleep))| {
                let reading = GpuReading {
                    vram_used_bytes: b[0],
                    vram_total_bytes: b[1],
                    vram_usable_bytes: b[2],
                    vis_vram_used_bytes: b[3],
                    vis_vram_total_bytes: b[4],
                    gtt_used_bytes: b[5],
                    gtt_total_bytes: b[6],
                    gtt_usable_bytes: b[7],
                    gpu_busy_percent: f[0],
                    mem_busy_percent: f[1],
                    temp_edge_c: f[2],
                    temp_junction_c: f[3],
                    temp_mem_c: f[4],
                    power_w: f[5],
                    energy_j: f[6],
                    sclk_mhz: f[7],
                    mclk_mhz: f[8],
                };
                GpuSample {
                    index,
                    reading,
                    usable_used_bytes,
                    usable_total_bytes,
                    asleep,
                }
            },
        )
}

fn process_gpu() -> impl Strategy<Value = ProcessGpu> {
    any::<(u32, u64, u64, u64, u64)>().prop_map(
        |(pid, vram_bytes, gtt_bytes, kfd_vram_bytes, engine_ns)| ProcessGpu {
            pid,
            vram_bytes,
            gtt_bytes,
            kfd_vram_bytes,
            engine_ns,
        },
    )
}

fn sample() -> impl Strategy<Value = Sample> {
    (
        (any::<u64>(), vec(maybe(any::<u64>()), 12)),
        (maybe(any::<u32>()), maybe(float())),
        (vec(gpu_sample(), 0..3), vec(process_gpu(), 0..3)),
    )
        .prop_map(
            |((t_ns, n), (processes, system_cpu_percent), (gpus, gpu_processes))| Sample {
                t_ns,
                rss_bytes: n[0],
                rss_anon_bytes: n[1],
                rss_file_bytes: n[2],
                rss_shmem_bytes: n[3],
                swap_bytes: n[4],
                rss_peak_bytes: n[5],
                rss_peak_t_ns: n[6],
                cpu_ns: n[7],
                cpu_t_ns: n[8],
                processes,
                mem_used_bytes: n[9],
                mem_total_bytes: n[10],
                system_cpu_percent,
                gpus,
                gpu_processes,
            },
        )
}

fn event() -> impl Strategy<Value = TreeEvent> {
    prop_oneof![
        (any::<u64>(), any::<u32>(), any::<u32>(), text()).prop_map(|(t_ns, pid, parent, comm)| {
            TreeEvent::Fork {
                t_ns,
                pid,
                parent,
                comm,
            }
        }),
        (any::<u64>(), any::<u32>(), text(), text()).prop_map(|(t_ns, pid, comm, filename)| {
            TreeEvent::Exec {
                t_ns,
                pid,
                comm,
                filename,
            }
        }),
        (any::<u64>(), any::<u32>(), text()).prop_map(|(t_ns, pid, comm)| TreeEvent::Exit {
            t_ns,
            pid,
            comm
        }),
        (any::<u64>(), any::<u32>(), any::<u64>()).prop_map(|(t_ns, pid, rss_bytes)| {
            TreeEvent::Peak {
                t_ns,
                pid,
                rss_bytes,
            }
        }),
        (any::<u64>(), text(), float(), float(), maybe(any::<u32>())).prop_map(
            |(t_ns, metric, value, limit, gpu)| TreeEvent::SafetyBreach {
                t_ns,
                metric,
                value,
                limit,
                gpu,
            }
        ),
    ]
}

/// What the reader holds of a written value: the same JSON, by name where it reads by name.
fn as_read<T: DeserializeOwned>(written: &impl Serialize) -> T {
    serde_json::from_value(serde_json::to_value(written).unwrap()).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn written_records_read_back_equal(
        header in header(),
        ticks in vec((sample(), vec(event(), 0..3)), 0..6),
        probes in vec(body(), 0..2),
        summary in maybe(body()),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.jsonl");
        let mut w = TraceWriter::create(&path).unwrap();
        w.header(&header).unwrap();
        for (s, events) in &ticks {
            for e in events {
                w.event(e).unwrap();
            }
            w.sample(s).unwrap();
        }
        for p in &probes {
            w.probe(p).unwrap();
        }
        if let Some(s) = &summary {
            w.summary(s).unwrap();
        }
        w.flush().unwrap();
        drop(w);

        let t = read_file(&path).unwrap();
        prop_assert_eq!(&t.problems, &Vec::new());
        prop_assert_eq!(&t.header, &as_read::<HeaderRec>(&header));
        let samples: Vec<SampleRec> = ticks.iter().map(|(s, _)| as_read(s)).collect();
        prop_assert_eq!(&t.samples, &samples);
        let events: Vec<&TreeEvent> = ticks.iter().flat_map(|(_, e)| e).collect();
        prop_assert_eq!(t.events.iter().collect::<Vec<_>>(), events);
        prop_assert_eq!(&t.probes, &probes);
        prop_assert_eq!(&t.summary, &summary);
        prop_assert_eq!(t.warnings.len(), usize::from(summary.is_none() && probes.is_empty()));
    }
}
