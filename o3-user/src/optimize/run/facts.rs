//! The facts a run starts from: the model's shape and identity (from its GGUF file, the
//! Ollama server, or the simulator's description), the host as learning sees it and what a
//! model may occupy there, and the server binary's version.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::backend::ollama::{self, ModelInfo};
use crate::learn::fingerprint::{self, Gpu, Host};
use crate::learn::ModelShape;
use crate::optimize::sim::SimModel;
use crate::optimize::target::BackendKind;

use super::runfile::Target;
use super::Roots;

/// The model's shape and a digest identifying it.
pub(super) fn model(t: &Target) -> (ModelShape, String) {
    if let Some(m) = &t.simulate {
        return simulated_model(m);
    }
    match t.backend {
        BackendKind::Ollama => ollama_model(t),
        _ => gguf_model(&t.model),
    }
}

/// The simulated KV cache as its layers (one where offloading is not modelled) with one f16
/// K/V head pair each: layers × KV heads × (K + V lengths) × 2 bytes is exactly its bytes per
/// token. The digest is the model's identity, not the simulated device's (capacity belongs to
/// the host).
fn simulated_model(m: &SimModel) -> (ModelShape, String) {
    let blocks = match u64::from(m.block_count) {
        b if b > 0 && m.kv_bytes_per_token % (4 * b) == 0 => b,
        _ => 1,
    };
    let half = (m.kv_bytes_per_token / (4 * blocks)) as u32;
    let shape = ModelShape {
        architecture: Some("simulated".into()),
        parameters: Some(m.parameters),
        weights_bytes: Some(m.weights_bytes),
        trained_context: Some(m.trained_context),
        block_count: Some(blocks as u32),
        head_count: Some(1),
        head_count_kv: Some(1),
        key_length: Some(half),
        value_length: Some(half),
        embedding_length: Some(half),
        ..ModelShape::default()
    };
    let digest = format!(
        "sim:{}",
        fingerprint::fnv_hex(&format!(
            "{}|{}|{}|{}",
            m.parameters, m.weights_bytes, m.kv_bytes_per_token, m.trained_context
        ))
    );
    (shape, digest)
}

/// What Ollama says of the model: the server at `--url`, or a managed one started to ask.
fn ollama_model(t: &Target) -> (ModelShape, String) {
    let info = match &t.ollama_serve {
        None => ollama::show(&t.url, &t.model),
        Some(cmd) => managed_ollama_show(cmd, &t.model),
    };
    let mut shape = info
        .as_ref()
        .map(ModelShape::from_ollama)
        .unwrap_or_default();
    if t.ollama_serve.is_none() {
        // The weights, as `o3 predict` takes them: the size `/api/tags` lists.
        shape.weights_bytes = ollama::tag_size_at(&t.url, &t.model);
    }
    (shape, format!("ollama:{}", t.model))
}

/// What the GGUF file says, and its digest (its path where it cannot be read).
fn gguf_model(model: &str) -> (ModelShape, String) {
    let p = Path::new(model);
    let shape = crate::learn::gguf::read(p)
        .map(|i| ModelShape::from_gguf(&i))
        .unwrap_or_default();
    let digest = fingerprint::model_digest(p).unwrap_or_else(|_| format!("path:{model}"));
    (shape, digest)
}

/// Starts the managed Ollama once, just to ask it about the model (at most 30 s for it to
/// answer).
fn managed_ollama_show(cmd: &str, model: &str) -> Option<ModelInfo> {
    use crate::backend::launch::{free_port, Launched};
    let argv: Vec<String> = cmd.split_whitespace().map(String::from).collect();
    let port = free_port().ok()?;
    let host = format!("127.0.0.1:{port}");
    let env = [("OLLAMA_HOST".to_string(), host.clone())];
    let mut l = Launched::start(&argv, port, &env, |_| Ok(())).ok()?;
    let url = format!("http://{host}");
    let t0 = Instant::now();
    let mut info = None;
    while t0.elapsed() < Duration::from_secs(30) && l.exited().is_none() {
        info = ollama::show(&url, model);
        if info.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    l.stop(Duration::from_secs(5));
    info
}

/// The machine as learning sees it (a simulated run: the simulated device), and what a model
/// may occupy there.
pub(super) fn host(roots: &Roots, simulate: Option<&SimModel>) -> (Host, Option<u64>) {
    if let Some(m) = simulate {
        return (simulated_host(m), Some(m.capacity_bytes));
    }
    let h = fingerprint::host(&roots.procfs, &roots.sysfs, &roots.dev);
    let cap = capacity(&h);
    (h, cap)
}

/// The simulated device as a host with one GPU whose memory is the simulated capacity.
fn simulated_host(m: &SimModel) -> Host {
    Host {
        cpu_model: "simulated".into(),
        cpu_cores: 1,
        ram_bytes: m.capacity_bytes,
        gpus: vec![Gpu {
            name: "simulated device".into(),
            pci_id: None,
            apu: false,
            vram_bytes: Some(m.capacity_bytes),
            gtt_bytes: None,
            driver_version: None,
            firmware: None,
        }],
        kernel: "simulated".into(),
        rocm_version: None,
        vulkan_driver: None,
        cuda_driver: None,
    }
}

/// What a model may occupy: the GTT on an APU, the VRAM of a discrete card (the largest), else
/// RAM; `None` when nothing is known.
fn capacity(h: &Host) -> Option<u64> {
    h.gpus
        .iter()
        .filter_map(|g| if g.apu { g.gtt_bytes } else { g.vram_bytes })
        .max()
        .or(Some(h.ram_bytes).filter(|&r| r > 0))
}

/// Where the peaks that [`capacity`] bounds are measured: the GPU's memory when the capacity
/// is a GPU's, else RAM.
pub(super) fn place(h: &Host) -> crate::learn::memory::Place {
    let gpu = h
        .gpus
        .iter()
        .any(|g| if g.apu { g.gtt_bytes } else { g.vram_bytes }.is_some());
    if gpu {
        crate::learn::memory::Place::Gpu
    } else {
        crate::learn::memory::Place::Ram
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(apu: bool, vram: Option<u64>, gtt: Option<u64>) -> Gpu {
        Gpu {
            name: "g".into(),
            pci_id: None,
            apu,
            vram_bytes: vram,
            gtt_bytes: gtt,
            driver_version: None,
            firmware: None,
        }
    }

    fn host_with(gpus: Vec<Gpu>, ram: u64) -> Host {
        Host {
            gpus,
            ram_bytes: ram,
            ..simulated_host(&SimModel::default())
        }
    }

    #[test]
    fn the_place_is_the_gpu_whose_memory_is_the_capacity() {
        use crate::learn::memory::Place;
        let apu = host_with(vec![gpu(true, Some(512 << 20), Some(120 << 30))], 128 << 30);
        assert_eq!(place(&apu), Place::Gpu);
        let card = host_with(vec![gpu(false, Some(24 << 30), None)], 64 << 30);
        assert_eq!(place(&card), Place::Gpu);
        assert_eq!(place(&host_with(vec![], 64 << 30)), Place::Ram);
        // A GPU whose memory is unknown bounds nothing: RAM.
        assert_eq!(
            place(&host_with(vec![gpu(false, None, None)], 8 << 30)),
            Place::Ram
        );
    }

    #[test]
    fn capacity_is_the_gtt_of_an_apu_the_vram_of_a_card_else_ram() {
        let apu = host_with(vec![gpu(true, Some(512 << 20), Some(120 << 30))], 128 << 30);
        assert_eq!(capacity(&apu), Some(120 << 30));
        let cards = host_with(
            vec![
                gpu(false, Some(8 << 30), None),
                gpu(false, Some(24 << 30), None),
            ],
            64 << 30,
        );
        assert_eq!(capacity(&cards), Some(24 << 30));
        assert_eq!(capacity(&host_with(Vec::new(), 32 << 30)), Some(32 << 30));
        assert_eq!(capacity(&host_with(Vec::new(), 0)), None);
    }

    #[test]
    fn a_simulated_run_sees_the_simulated_device() {
        let m = SimModel::default();
        let roots = Roots {
            procfs: "/nonexistent".into(),
            sysfs: "/nonexistent".into(),
            dev: "/nonexistent".into(),
        };
        let (h, cap) = host(&roots, Some(&m));
        assert_eq!(cap, Some(m.capacity_bytes));
        assert_eq!(h.gpus[0].vram_bytes, Some(m.capacity_bytes));
        assert_eq!(h.kernel, "simulated");
    }

    #[test]
    fn a_simulated_model_has_the_simulators_bytes_per_token() {
        let m = SimModel::default();
        let (shape, digest) = simulated_model(&m);
        let per_token = u64::from(shape.block_count.unwrap())
            * u64::from(shape.head_count_kv.unwrap())
            * u64::from(shape.key_length.unwrap() + shape.value_length.unwrap())
            * 2;
        assert_eq!(per_token, m.kv_bytes_per_token);
        assert!(digest.starts_with("sim:"), "{digest}");
        // The capacity is the host's, not the model's.
        let bigger = SimModel {
            capacity_bytes: m.capacity_bytes * 2,
            ..m.clone()
        };
        assert_eq!(simulated_model(&bigger).1, digest);
        // Layers where offloading is modelled, the bytes per token still exact.
        let layered = SimModel {
            block_count: 80,
            kv_bytes_per_token: 327_680,
            ..m.clone()
        };
        let (shape, _) = simulated_model(&layered);
        assert_eq!(shape.block_count, Some(80));
        assert_eq!(
            80 * u64::from(shape.key_length.unwrap() + shape.value_length.unwrap()) * 2,
            327_680
        );
    }
}
