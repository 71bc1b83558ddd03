//! Classification shared by every backend: error texts, HTTP statuses and process exits mapped
//! to an [`OutcomeClass`]. Pure functions; the caller supplies the texts it collected.

use std::collections::VecDeque;

use nix::sys::signal::Signal;

use super::OutcomeClass;

/// Case-insensitive substrings that mean "out of memory", host or device. Sources: Ollama's
/// error texts, llama.cpp/ggml logs (CPU, CUDA, HIP/ROCm, Vulkan, Metal), llama-cpp-python.
const OOM_MARKERS: &[&str] = &[
    // CUDA/ROCm "CUDA error: out of memory", Ollama
    "out of memory",
    "out of device memory",
    // Vulkan result names, as VkResult and as vk::Result prints them
    "vk_error_out_of_device_memory",
    "vk_error_out_of_host_memory",
    "erroroutofdevicememory",
    "erroroutofhostmemory",
    // hipErrorOutOfMemory, Metal's kIOGPUCommandBufferCallbackErrorOutOfMemory
    "erroroutofmemory",
    // ggml_backend_cuda_buffer_type_alloc_buffer; Ollama's ROCm texts
    "cudamalloc failed",
    "hipmalloc failed",
    // alloc_tensor_range, ggml_gallocr, the KV cache, compute buffers, model buffers
    "failed to allocate",
    "allocation failed",
    "unable to allocate",
    "not enough memory",
    // ggml_aligned_malloc (CPU)
    "insufficient memory",
    // Ollama's check before loading
    "model requires more system memory",
    // older llama.cpp
    "llama_kv_cache_init() failed",
    // a host allocation failing in C++
    "std::bad_alloc",
];

/// Substrings that, at load time only, mean the context could not be created. On their own
/// they are ambiguous (a bad flag combination fails the same way), hence [`CONFIG_ERRORS`].
const LOAD_OOM_MARKERS: &[&str] = &["failed to create context", "failed to create_context"];

/// Explanations llama.cpp gives when a context fails for a reason other than memory.
const CONFIG_ERRORS: &[&str] = &[
    "requires flash_attn",
    "requires flash attention",
    "not supported",
    "invalid",
    "unknown argument",
];

/// Context-overflow texts: llama.cpp (current and older), OpenAI-style APIs (vLLM,
/// llama-cpp-python), llama-cpp-python's own `ValueError`.
const CONTEXT_MARKERS: &[&str] = &[
    "exceed_context_size_error",
    "exceeds the available context size",
    "context size has been exceeded",
    "context_length_exceeded",
    "maximum context length",
    "exceed context window",
    "input prompt is too big compared to kv size",
];

fn contains_any(haystack_lower: &str, needles: &[&str]) -> bool {
    needles
        .iter()
        .any(|n| haystack_lower.contains(&n.to_ascii_lowercase()))
}

/// Allocation failures spread over a line: `ggml_backend_<dev>_buffer_type_alloc_buffer:
/// allocating ... failed` (the CUDA form also says `cudaMalloc failed`, other backends only
/// `failed`) and ggml-vulkan's `[Device ]Memory allocation of size N failed.`
fn is_alloc_failure_line(lower: &str) -> bool {
    lower.lines().any(|line| {
        let backend = line
            .find("ggml_backend_")
            .map(|at| &line[at..])
            .is_some_and(|rest| {
                rest.contains("_buffer_type_alloc_buffer")
                    && rest.contains("allocating")
                    && rest.contains("failed")
            });
        backend || (line.contains("memory allocation of size") && line.contains("failed"))
    })
}

/// Whether `text` (an error message, a response body, a stderr tail) reports an out-of-memory
/// condition, host or device.
pub fn is_oom(text: &str) -> bool {
    let lower = text.to_lowercase();
    contains_any(&lower, OOM_MARKERS) || is_alloc_failure_line(&lower)
}

/// Like [`is_oom`], for text a process wrote while loading: also counts llama.cpp's
/// "failed to create context" unless the log names a configuration error instead.
pub fn is_load_oom(text: &str) -> bool {
    if is_oom(text) {
        return true;
    }
    let lower = text.to_lowercase();
    contains_any(&lower, LOAD_OOM_MARKERS) && !contains_any(&lower, CONFIG_ERRORS)
}

/// Whether a response says the prompt did not fit the context. For a 2xx status (an error
/// inside a stream) only an error object counts, so a completion that merely mentions these
/// words is not mistaken for one.
pub fn is_context_exceeded(status: u16, body: &str) -> bool {
    if !mentions_context_exceeded(body) {
        return false;
    }
    if (200..300).contains(&status) {
        return is_error_object(body);
    }
    true
}

fn mentions_context_exceeded(text: &str) -> bool {
    contains_any(&text.to_lowercase(), CONTEXT_MARKERS)
}

/// Classify an error message that came without a status, e.g. an error event inside a stream
/// that had already answered 200: `Oom`, `ContextExceeded`, or `HttpError`.
pub fn classify_error_text(text: &str) -> OutcomeClass {
    if is_oom(text) {
        OutcomeClass::Oom
    } else if mentions_context_exceeded(text) {
        OutcomeClass::ContextExceeded
    } else {
        OutcomeClass::HttpError
    }
}

/// A JSON object with an `error` member (`{"error": {...}}` or `{"error": "..."}`).
fn is_error_object(body: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(body.trim())
        .ok()
        .and_then(|v| v.get("error").cloned())
        .is_some_and(|e| !e.is_null())
}

/// Whether a body says the requested model does not exist (Ollama's `model "x" not found, try
/// pulling it first`, OpenAI's `model_not_found` / `The model ... does not exist`).
fn is_model_not_found(lower: &str) -> bool {
    lower.contains("model_not_found")
        || (lower.contains("model")
            && (lower.contains("not found") || lower.contains("does not exist")))
}

/// Classify an HTTP response by status and body. 2xx bodies are `Ok` unless they are an error
/// object; a 503 (loading, queue full) is an `HttpError` here: the caller decides whether a
/// server that never became ready is a `LoadFailed`.
pub fn classify_http(status: u16, body: &str) -> OutcomeClass {
    let success = (200..300).contains(&status);
    if success && !is_error_object(body) {
        return OutcomeClass::Ok;
    }
    if is_oom(body) {
        return OutcomeClass::Oom;
    }
    if is_context_exceeded(status, body) {
        return OutcomeClass::ContextExceeded;
    }
    if status == 404 && is_model_not_found(&body.to_lowercase()) {
        return OutcomeClass::LoadFailed;
    }
    OutcomeClass::HttpError
}

/// Classify a server process's exit. `code` is its exit status, `signal` the signal that killed
/// it, `stderr_tail` what it last wrote, `during_load` whether it died before becoming ready.
///
/// OOM text wins. A SIGKILL with no OOM text is `Crashed`: the kernel's OOM killer and the
/// cgroup limit kill with SIGKILL without writing anything, so the caller must consult the
/// cgroup's `memory.events` (`oom_kill`) or the kernel log to call it an OOM. Exit status 137
/// (a wrapper shell reporting a child killed by SIGKILL) counts as SIGKILL. Any other death
/// while loading is `LoadFailed`; after that, `Crashed`.
pub fn classify_exit(
    code: Option<i32>,
    signal: Option<i32>,
    stderr_tail: &str,
    during_load: bool,
) -> OutcomeClass {
    let oom = if during_load {
        is_load_oom(stderr_tail)
    } else {
        is_oom(stderr_tail)
    };
    if oom {
        return OutcomeClass::Oom;
    }
    let sigkill = Signal::SIGKILL as i32;
    if signal == Some(sigkill) || code == Some(128 + sigkill) {
        return OutcomeClass::Crashed;
    }
    if during_load {
        OutcomeClass::LoadFailed
    } else {
        OutcomeClass::Crashed
    }
}

/// Lines kept by [`StderrTail::new`] by default.
pub const DEFAULT_TAIL_LINES: usize = 50;
/// Longest line kept; a longer one is split (a log line never is this long, a binary dump may).
const MAX_LINE_BYTES: usize = 4096;

/// The last lines a child wrote to stderr, bounded, fed with whatever chunks the pipe yields.
/// The first OOM line is remembered even after it scrolls out of the ring (a CUDA abort is
/// followed by a long backtrace).
#[derive(Debug, Clone)]
pub struct StderrTail {
    lines: VecDeque<String>,
    capacity: usize,
    partial: Vec<u8>,
    first_oom: Option<String>,
}

impl Default for StderrTail {
    fn default() -> Self {
        StderrTail::new(DEFAULT_TAIL_LINES)
    }
}

impl StderrTail {
    /// A tail of the last `capacity` lines (at least 1).
    pub fn new(capacity: usize) -> StderrTail {
        let capacity = capacity.max(1);
        StderrTail {
            lines: VecDeque::with_capacity(capacity),
            capacity,
            partial: Vec::new(),
            first_oom: None,
        }
    }

    /// Add one complete line (a trailing `\r`/`\n` is dropped).
    pub fn push_line(&mut self, line: &str) {
        let line = line.trim_end_matches(['\n', '\r']);
        if self.first_oom.is_none() && is_oom(line) {
            self.first_oom = Some(line.to_string());
        }
        if self.lines.len() == self.capacity {
            self.lines.pop_front();
        }
        self.lines.push_back(line.to_string());
    }

    /// Add a chunk as read from the pipe: complete lines are pushed, the rest waits for the next
    /// chunk (a multi-byte character split between chunks is reassembled; invalid UTF-8 is
    /// replaced).
    pub fn push_bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b == b'\n' {
                self.flush_partial();
            } else {
                self.partial.push(b);
                if self.partial.len() >= MAX_LINE_BYTES {
                    self.flush_partial();
                }
            }
        }
    }

    fn flush_partial(&mut self) {
        let bytes = std::mem::take(&mut self.partial);
        let line = String::from_utf8_lossy(&bytes);
        self.push_line(&line);
    }

    /// The kept lines, joined with `\n`, followed by an unterminated last line if any.
    pub fn tail(&self) -> String {
        let mut out: Vec<String> = self.lines.iter().cloned().collect();
        if !self.partial.is_empty() {
            out.push(
                String::from_utf8_lossy(&self.partial)
                    .trim_end_matches('\r')
                    .to_string(),
            );
        }
        out.join("\n")
    }

    /// The first line seen (kept or not) that reports an out-of-memory condition, or an
    /// unterminated last line that does.
    pub fn first_oom_line(&self) -> Option<&str> {
        if let Some(line) = &self.first_oom {
            return Some(line);
        }
        let partial = std::str::from_utf8(&self.partial).ok()?;
        is_oom(partial).then(|| partial.trim_end_matches('\r'))
    }

    /// Number of complete lines kept.
    pub fn len(&self) -> usize {
        self.lines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty() && self.partial.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KV_OOM_LOG: &str =
        include_str!("../../../tests/fixtures/llama-server/stderr-kv-oom-at-load.log");
    const COMPUTE_OOM_LOG: &str =
        include_str!("../../../tests/fixtures/llama-server/stderr-compute-oom-mid-request.log");

    #[test]
    fn llama_cpp_oom_lines_of_every_backend() {
        for line in [
            // CUDA
            "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 16384.00 MiB on device 0: cudaMalloc failed: out of memory",
            "CUDA error: out of memory",
            "alloc_tensor_range: failed to allocate CUDA0 buffer of size 17179869184",
            // ROCm (the CUDA backend compiled for HIP)
            "ROCm error: out of memory",
            "ggml_backend_hip_buffer_type_alloc_buffer: allocating 8192.00 MiB on device 0 failed: hipErrorOutOfMemory",
            // Vulkan
            "ggml_vulkan: Device memory allocation of size 1632174080 failed.",
            "ggml_vulkan: Memory allocation of size 2147483648 failed.",
            "ggml_vulkan: vk::Device::allocateMemory: ErrorOutOfDeviceMemory",
            "llama_model_load: error loading model: vk::Device::allocateMemory: VK_ERROR_OUT_OF_DEVICE_MEMORY",
            // CPU / host
            "ggml_aligned_malloc: insufficient memory (attempted to allocate 36000.00 MB)",
            "alloc_tensor_range: failed to allocate CPU buffer of size 37748736000",
            "ggml_backend_cpu_buffer_type_alloc_buffer: failed to allocate buffer of size 9126805504",
            "terminate called after throwing an instance of 'std::bad_alloc'",
            // the KV cache, current and older wording
            "llama_init_from_model: failed to initialize the context: failed to allocate buffer for kv cache",
            "llama_kv_cache_init: failed to allocate buffer for kv cache",
            "llama_new_context_with_model: llama_kv_cache_init() failed for self-attention cache",
            "llama_init_from_model: failed to allocate compute buffers",
            "ggml_gallocr_reserve_n: failed to allocate CUDA0 buffer of size 2415919104",
            // Metal
            "ggml_metal_graph_compute: command buffer 0 failed with status 5\nerror: Insufficient Memory (00000008:kIOGPUCommandBufferCallbackErrorOutOfMemory)",
        ] {
            assert!(is_oom(line), "{line}");
        }
    }

    #[test]
    fn a_ggml_backend_alloc_failure_without_the_usual_words() {
        let line = "ggml_backend_sycl_buffer_type_alloc_buffer: allocating 4096.00 MiB on device 0: failed";
        assert!(is_oom(line));
        let fine = "ggml_backend_sycl_buffer_type_alloc_buffer: allocating 4096.00 MiB on device 0";
        assert!(!is_oom(fine));
        assert!(!is_oom(
            "ggml_vulkan: memory allocation of size 4096 (host visible)"
        ));
    }

    #[test]
    fn ollama_error_texts() {
        for body in [
            r#"{"error":"model requires more system memory (12.3 GiB) than is available (8.1 GiB)"}"#,
            r#"{"error":"llama runner process has terminated: cudaMalloc failed: out of memory"}"#,
            r#"{"error":"llama runner process has terminated: error loading model: unable to allocate CUDA0 buffer"}"#,
            r#"{"error":"llama-server process has terminated: hipMalloc failed: out of memory"}"#,
            r#"{"error":"llama runner process has terminated: error:vk::Device::allocateMemory: ErrorOutOfDeviceMemory"}"#,
            r#"{"error":"llama runner process has terminated: GGML_ASSERT(buf != NULL && \"failed to allocate buffer\") failed"}"#,
            r#"{"error":"insufficient memory for the model"}"#,
            r#"{"error":"not enough memory to load the model"}"#,
            r#"{"error":"buffer allocation failed"}"#,
        ] {
            assert!(is_oom(body), "{body}");
            assert_eq!(classify_http(500, body), OutcomeClass::Oom, "{body}");
        }
    }

    #[test]
    fn ordinary_log_lines_are_not_oom() {
        for line in [
            "llama_context: n_ctx_per_seq (4096) < n_ctx_train (131072) -- the full capacity of the model will not be utilized",
            "load_tensors:        CUDA0 model buffer size =  4403.49 MiB",
            "llama_kv_cache_unified:      CUDA0 KV buffer size =   512.00 MiB",
            "llama_context:      CUDA0 compute buffer size =   266.50 MiB",
            "main: exiting due to model loading error",
            r#"{"error":"llama runner process has terminated: exit status 2"}"#,
            "slot update_slots: id  0 | task 0 | prompt processing progress, n_past = 2048",
            // load-only marker: not an OOM outside a load
            "common_init_from_params: failed to create context with model 'm.gguf'",
        ] {
            assert!(!is_oom(line), "{line}");
        }
    }

    #[test]
    fn failed_to_create_context_counts_only_at_load_and_without_a_config_error() {
        let bare = "common_init_from_params: failed to create context with model 'm.gguf'\n\
                    srv    load_model: failed to load model, 'm.gguf'";
        assert!(is_load_oom(bare));
        assert!(!is_oom(bare));
        let config = "llama_init_from_model: V cache quantization requires flash_attn\n\
                      common_init_from_params: failed to create context with model 'm.gguf'";
        assert!(!is_load_oom(config));
        assert_eq!(
            classify_exit(Some(1), None, config, true),
            OutcomeClass::LoadFailed
        );
        assert_eq!(classify_exit(Some(1), None, bare, true), OutcomeClass::Oom);
        assert_eq!(
            classify_exit(Some(1), None, bare, false),
            OutcomeClass::Crashed
        );
    }

    #[test]
    fn context_exceeded_bodies() {
        for (status, body) in [
            (
                400,
                r#"{"error":{"code":400,"message":"request (9412 tokens) exceeds the available context size (8192 tokens), try increasing it","type":"exceed_context_size_error","n_prompt_tokens":9412,"n_ctx":8192}}"#,
            ),
            (
                400,
                r#"{"error":{"code":400,"message":"the request exceeds the available context size, try increasing it","type":"exceed_context_size_error"}}"#,
            ),
            (
                400,
                r#"{"error":{"message":"This model's maximum context length is 4096 tokens. However, you requested 5016 tokens (5000 in the messages, 16 in the completion). Please reduce the length of the messages or completion.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#,
            ),
            (
                500,
                "ValueError: Requested tokens (5000) exceed context window of 4096",
            ),
            (
                200,
                r#"{"error":{"code":500,"message":"Context size has been exceeded.","type":"server_error"}}"#,
            ),
        ] {
            assert!(is_context_exceeded(status, body), "{body}");
            assert_eq!(
                classify_http(status, body),
                OutcomeClass::ContextExceeded,
                "{body}"
            );
        }
    }

    #[test]
    fn llama_cpp_python_traceback_is_context_exceeded() {
        let traceback = r#"Exception: Requested tokens (5000) exceed context window of 4096
Traceback (most recent call last):
  File "/usr/local/lib/python3.11/site-packages/llama_cpp/server/errors.py", line 171, in custom_route_handler
    response = await original_route_handler(request)
  File "/usr/local/lib/python3.11/site-packages/llama_cpp/llama.py", line 1270, in _create_completion
    raise ValueError(
ValueError: Requested tokens (5000) exceed context window of 4096"#;
        assert!(is_context_exceeded(500, traceback));
        assert!(!is_oom(traceback));
        assert_eq!(classify_http(500, traceback), OutcomeClass::ContextExceeded);
    }

    #[test]
    fn generated_text_mentioning_context_is_not_an_error() {
        let body = r#"{"content":"the request exceeds the available context size","stop":true}"#;
        assert!(!is_context_exceeded(200, body));
        assert_eq!(classify_http(200, body), OutcomeClass::Ok);
        assert!(!is_context_exceeded(
            200,
            "not json: exceed_context_size_error"
        ));
    }

    #[test]
    fn error_texts_without_a_status() {
        assert_eq!(
            classify_error_text("Context size has been exceeded. (server_error, code 500)"),
            OutcomeClass::ContextExceeded
        );
        assert_eq!(
            classify_error_text("CUDA error: out of memory"),
            OutcomeClass::Oom
        );
        assert_eq!(
            classify_error_text("Compute error."),
            OutcomeClass::HttpError
        );
    }

    #[test]
    fn http_statuses() {
        assert_eq!(classify_http(200, r#"{"status":"ok"}"#), OutcomeClass::Ok);
        assert_eq!(classify_http(204, ""), OutcomeClass::Ok);
        assert_eq!(
            classify_http(
                404,
                r#"{"error":"model \"llama3\" not found, try pulling it first"}"#
            ),
            OutcomeClass::LoadFailed
        );
        assert_eq!(
            classify_http(
                404,
                r#"{"error":{"message":"The model `gpt-x` does not exist","code":"model_not_found"}}"#
            ),
            OutcomeClass::LoadFailed
        );
        assert_eq!(
            classify_http(404, "File Not Found"),
            OutcomeClass::HttpError
        );
        assert_eq!(
            classify_http(
                503,
                r#"{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}"#
            ),
            OutcomeClass::HttpError
        );
        assert_eq!(
            classify_http(500, "Internal Server Error"),
            OutcomeClass::HttpError
        );
        assert_eq!(classify_http(302, ""), OutcomeClass::HttpError);
        assert_eq!(
            classify_http(
                200,
                r#"{"error":"an unknown error was encountered while running the model"}"#
            ),
            OutcomeClass::HttpError
        );
        assert_eq!(
            classify_http(
                200,
                r#"{"error":"llama runner process has terminated: CUDA error: out of memory"}"#
            ),
            OutcomeClass::Oom
        );
    }

    #[test]
    fn exits() {
        let sigkill = Signal::SIGKILL as i32;
        let sigabrt = Signal::SIGABRT as i32;
        // the kernel's OOM killer writes nothing: the caller checks the cgroup
        assert_eq!(
            classify_exit(None, Some(sigkill), "", true),
            OutcomeClass::Crashed
        );
        assert_eq!(
            classify_exit(None, Some(sigkill), "", false),
            OutcomeClass::Crashed
        );
        assert_eq!(
            classify_exit(Some(137), None, "", true),
            OutcomeClass::Crashed
        );
        assert_eq!(
            classify_exit(Some(1), None, KV_OOM_LOG, true),
            OutcomeClass::Oom
        );
        assert_eq!(
            classify_exit(None, Some(sigabrt), COMPUTE_OOM_LOG, false),
            OutcomeClass::Oom
        );
        let bad_model = "gguf_init_from_file_impl: failed to read magic\n\
                         llama_model_load: error loading model: llama_model_loader: failed to load model from m.gguf\n\
                         main: exiting due to model loading error";
        assert_eq!(
            classify_exit(Some(1), None, bad_model, true),
            OutcomeClass::LoadFailed
        );
        assert_eq!(
            classify_exit(None, Some(Signal::SIGSEGV as i32), "", false),
            OutcomeClass::Crashed
        );
        assert_eq!(
            classify_exit(Some(0), None, "", false),
            OutcomeClass::Crashed
        );
        assert_eq!(
            classify_exit(Some(1), None, "error: invalid argument: --fit", true),
            OutcomeClass::LoadFailed
        );
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let mut t = StderrTail::new(3);
        assert!(t.is_empty());
        for i in 0..10 {
            t.push_line(&format!("line {i}\n"));
        }
        assert_eq!(t.len(), 3);
        assert_eq!(t.tail(), "line 7\nline 8\nline 9");
        assert_eq!(StderrTail::default().capacity, DEFAULT_TAIL_LINES);
        assert_eq!(StderrTail::new(0).capacity, 1);
    }

    #[test]
    fn tail_reassembles_chunks_and_split_characters() {
        let mut t = StderrTail::new(10);
        let text = "prompt é\r\nsecond line\nunterminated";
        let bytes = text.as_bytes();
        // split inside the two-byte 'é' and everywhere else
        for chunk in bytes.chunks(1) {
            t.push_bytes(chunk);
        }
        assert_eq!(t.len(), 2);
        assert_eq!(t.tail(), "prompt é\nsecond line\nunterminated");
        t.push_bytes(b" now\n");
        assert_eq!(t.tail(), "prompt é\nsecond line\nunterminated now");
        t.push_bytes(&[0xff, b'x', b'\n']);
        assert!(t.tail().ends_with("\u{fffd}x"));
    }

    #[test]
    fn an_overlong_line_is_split_not_lost() {
        let mut t = StderrTail::new(10);
        t.push_bytes(&vec![b'.'; MAX_LINE_BYTES + 10]);
        t.push_bytes(b"\n");
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn first_oom_line_survives_a_backtrace() {
        let mut t = StderrTail::new(5);
        t.push_bytes(COMPUTE_OOM_LOG.as_bytes());
        assert_eq!(t.first_oom_line(), Some("CUDA error: out of memory"));
        assert!(!t.tail().contains("CUDA error: out of memory"));
        assert!(t.tail().contains("Inferior 1"));

        let mut t = StderrTail::default();
        t.push_bytes(KV_OOM_LOG.as_bytes());
        assert_eq!(
            t.first_oom_line(),
            Some("ggml_backend_cuda_buffer_type_alloc_buffer: allocating 65536.00 MiB on device 0: cudaMalloc failed: out of memory")
        );
        assert_eq!(
            classify_exit(Some(1), None, &t.tail(), true),
            OutcomeClass::Oom
        );

        let mut t = StderrTail::default();
        t.push_bytes(b"main: loading model\nCUDA error: out of memory");
        assert_eq!(t.first_oom_line(), Some("CUDA error: out of memory"));
        let mut t = StderrTail::default();
        t.push_line("main: model loaded");
        assert_eq!(t.first_oom_line(), None);
    }
}
