#!/usr/bin/env python3
"""A deterministic Ollama simulator for o3's optimizer tests and benchmarks.

Speaks the subset of the Ollama REST API that o3 uses (``POST /api/generate`` streaming
NDJSON, ``GET /api/ps``, ``POST /api/show``, ``GET /api/tags``, ``GET /api/version``,
``GET /``) in Ollama's formats, with a known memory model and known throughput curves as its
truth, and deterministic failure injection.  Python 3 standard library only.

    python3 tests/sim/ollama_sim.py --port 0 --config tests/sim/example.json

prints ``listening on http://127.0.0.1:PORT`` as its first stdout line.  See README.md in this
folder for the configuration keys and the formulas.
"""

import argparse
import hashlib
import json
import math
import os
import random
import re
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DEFAULTS = {
    # Model identity and architecture (/api/show, /api/tags, /api/ps).
    "name": "sim-llama:8b",
    "architecture": "llama",
    "parameter_count": 8030261248,
    "parameter_size": "8.0B",
    "quantization_level": "Q4_K_M",
    "block_count": 32,
    "head_count": 32,
    "head_count_kv": 8,
    "embedding_length": 4096,
    "key_length": 128,
    "value_length": 128,
    "trained_context": 8192,
    "file_size_bytes": None,  # /api/tags size; default weights_bytes
    # Memory truth.
    "weights_bytes": 4920000000,
    "kv_bytes_per_token": None,  # per token per slot at f16; default from the architecture
    "compute_buffer_base_bytes": 67108864,
    "compute_buffer_per_batch_bytes": 524288,
    "capacity_bytes": 12884901888,
    "host_capacity_bytes": None,  # None: unlimited
    "spill": False,
    # Server-level settings (environment variables override these, as Ollama reads them).
    "num_parallel": 1,
    "flash_attention": False,
    "kv_cache_type": "f16",
    "default_num_ctx": 4096,
    "default_num_batch": 512,
    "keep_alive": "5m",
    "max_queue": 512,
    "version": "0.12.3",
    # Performance truth.
    "prefill_tps_max": 2000.0,
    "prefill_batch_knee": 512,
    "prefill_batch_exponent": 0.5,
    "prefill_depth_half": 65536,
    "decode_tps0": 60.0,
    "decode_depth_half": 32768,
    "prefix_cache": True,
    "cpu_slowdown": 8.0,
    "parallel_efficiency": 0.7,
    "load_base_ms": 500.0,
    "load_bytes_per_s": 2.0e9,
    "warm_load_ms": 0.0,
    "time_scale": 0.001,
    "noise_cv": 0.0,
    "seed": 0,
    # Tokens.
    "chars_per_token": 4.0,
    "template_tokens": 0,
    "default_num_predict": 128,
    "eos_after_tokens": None,
    # Failure injection.
    "fail_load_at_ctx_above": None,
    "load_error_text": "timed out waiting for llama runner to start - progress 0.00 - ",
    "oom_error_text": "llama runner process has terminated: cudaMalloc failed: out of memory",
    "oom_mid_request_probability": 0.0,
    "oom_mid_request_text": "an error was encountered while running the model: "
    "CUDA error: out of memory",
    "hang_after_tokens": None,
    "hang_probability": 1.0,
    "crash_after_requests": None,
    "crash_after_tokens": 0,
    "crash_exit_code": None,  # None: the process SIGKILLs itself
}

KV_TYPE_FACTOR = {"f16": 1.0, "q8_0": 8.5 / 16.0, "q4_0": 4.5 / 16.0}

WORDS = (
    "the of and to in is was that for on as with by at from this which or an be are it "
    "model memory context batch token layer cache value result time system small large "
    "first second after before during while under over between each every many some"
).split()

GiB = float(1 << 30)


class ConfigError(ValueError):
    pass


def load_config(raw, env=None):
    """Merge ``raw`` over DEFAULTS, then apply Ollama's environment variables from ``env``."""
    env = os.environ if env is None else env
    unknown = [k for k in raw if k not in DEFAULTS and not k.startswith("_")]
    if unknown:
        raise ConfigError("unknown config keys: %s" % ", ".join(sorted(unknown)))
    cfg = dict(DEFAULTS)
    cfg.update({k: v for k, v in raw.items() if not k.startswith("_")})

    def env_int(var, key):
        if env.get(var):
            try:
                cfg[key] = int(env[var])
            except ValueError:
                raise ConfigError("%s=%r is not an integer" % (var, env[var]))

    env_int("OLLAMA_NUM_PARALLEL", "num_parallel")
    env_int("OLLAMA_CONTEXT_LENGTH", "default_num_ctx")
    env_int("OLLAMA_MAX_QUEUE", "max_queue")
    if env.get("OLLAMA_FLASH_ATTENTION"):
        cfg["flash_attention"] = env["OLLAMA_FLASH_ATTENTION"].strip().lower() in (
            "1", "true", "t", "yes", "on")
    if env.get("OLLAMA_KV_CACHE_TYPE"):
        cfg["kv_cache_type"] = env["OLLAMA_KV_CACHE_TYPE"].strip().lower()
    if env.get("OLLAMA_KEEP_ALIVE"):
        cfg["keep_alive"] = env["OLLAMA_KEEP_ALIVE"]

    if cfg["kv_bytes_per_token"] is None:
        head_dim = cfg["embedding_length"] // cfg["head_count"]
        k = cfg["key_length"] or head_dim
        v = cfg["value_length"] or k
        cfg["kv_bytes_per_token"] = cfg["block_count"] * cfg["head_count_kv"] * (k + v) * 2
    if cfg["file_size_bytes"] is None:
        cfg["file_size_bytes"] = cfg["weights_bytes"]
    if cfg["num_parallel"] < 1:
        cfg["num_parallel"] = 1
    if cfg["block_count"] < 1:
        raise ConfigError("block_count must be at least 1")
    parse_duration(cfg["keep_alive"])  # validates
    return cfg


_DUR = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value):
    """Ollama keep_alive: a number of seconds or a Go duration; negative: forever (None)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ConfigError("keep_alive %r" % (value,))
    if isinstance(value, (int, float)):
        return None if value < 0 else float(value)
    s = str(value).strip()
    try:
        secs = float(s)
        return None if secs < 0 else secs
    except ValueError:
        pass
    neg = s.startswith("-")
    body = s.lstrip("+-")
    pos, total = 0, 0.0
    for m in _DUR.finditer(body):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT[m.group(2)]
        pos = m.end()
    if pos != len(body) or not body:
        raise ConfigError("keep_alive %r is not a duration" % (value,))
    return None if neg else total


def canonical(name):
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last else name + ":latest"


def rfc3339(t=None):
    ns = time.time_ns() if t is None else int(t * 1e9)
    secs, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + ".%09dZ" % frac


def human_gib(n):
    return "%.1f GiB" % (n / GiB)


class LoadError(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


class SimCrash(Exception):
    """Raised in a handler after an in-process crash hook ran: drop the connection."""


class Loaded:
    """A model loaded with one set of options: the memory placement and rates in effect, and
    the prompt each slot holds (its prefix cache; a reload starts empty)."""

    def __init__(self, **kw):
        self.__dict__.update(kw)
        self.expires_at = None  # wall time; None: never


class Simulator:
    def __init__(self, config, env=None, on_crash=None, log=None):
        self.cfg = load_config(config, env)
        self.on_crash = on_crash
        self.log = log or (lambda msg: None)
        self.cond = threading.Condition()
        self.stop = threading.Event()
        self.loaded = None
        self.active = 0
        self.waiting = 0
        self.requests = 0  # /api/generate requests seen
        self.loads = 0

    # ---- truth -------------------------------------------------------------------------

    def plan(self, options):
        """The placement a load with these options gets, or LoadError: the memory model."""
        c = self.cfg
        req_ctx = options.get("num_ctx") or c["default_num_ctx"]
        if req_ctx < 1:
            req_ctx = c["default_num_ctx"]
        ctx = min(req_ctx, c["trained_context"])
        if ctx < req_ctx:
            self.log("warning: requested context size too large for model "
                     "num_ctx=%d n_ctx_train=%d" % (req_ctx, ctx))
        parallel = c["num_parallel"]
        batch_req = options.get("num_batch") or c["default_num_batch"]
        batch = max(1, min(batch_req, ctx * parallel))
        kv_type = c["kv_cache_type"] if c["kv_cache_type"] in KV_TYPE_FACTOR else "f16"
        if not c["flash_attention"]:
            kv_type = "f16"  # Ollama ignores a quantized KV type without flash attention
        kv = c["kv_bytes_per_token"] * KV_TYPE_FACTOR[kv_type] * ctx * parallel
        compute = c["compute_buffer_base_bytes"] + c["compute_buffer_per_batch_bytes"] * batch
        weights = c["weights_bytes"]
        total = weights + kv + compute
        n = c["block_count"]
        per_layer = (weights + kv) / n
        cap = c["capacity_bytes"]
        num_gpu = options.get("num_gpu")
        if num_gpu is None or num_gpu < 0:  # automatic
            if total <= cap:
                layers = n
            elif c["spill"]:
                layers = max(0, min(n, int((cap - compute) // per_layer))) if cap > compute else 0
            else:
                raise LoadError(500, c["oom_error_text"])
        else:
            layers = min(num_gpu, n)
        vram = total if layers == n else (layers * per_layer + compute if layers > 0 else 0)
        if vram > cap:
            raise LoadError(500, c["oom_error_text"])
        host = total - vram
        if c["host_capacity_bytes"] is not None and host > c["host_capacity_bytes"]:
            raise LoadError(500, "model requires more system memory (%s) than is available (%s)"
                            % (human_gib(host), human_gib(c["host_capacity_bytes"])))
        limit = c["fail_load_at_ctx_above"]
        if limit is not None and ctx > limit:
            raise LoadError(500, c["load_error_text"])
        frac = layers / n
        slowdown = frac + (1.0 - frac) * c["cpu_slowdown"]
        knee = c["prefill_batch_knee"]
        # Rates at depth 0; they fall with the depth a token lands at (generate()).
        prefill = (c["prefill_tps_max"] * (min(batch, knee) / knee) ** c["prefill_batch_exponent"]
                   / slowdown)
        decode = c["decode_tps0"] / slowdown
        load_s = c["load_base_ms"] / 1e3 + weights / c["load_bytes_per_s"]
        return Loaded(
            key=self.options_key(options), requested_ctx=req_ctx, ctx=ctx, batch=batch,
            parallel=parallel, kv_type=kv_type, gpu_layers=layers,
            size=int(round(total)), size_vram=int(round(vram)), prefill_tps=prefill,
            decode_tps=decode, load_s=load_s, slots=[""] * parallel)

    @staticmethod
    def options_key(options):
        return tuple(options.get(k) for k in
                     ("num_ctx", "num_batch", "num_gpu", "num_thread", "main_gpu", "use_mmap"))

    def prompt_tokens(self, prompt, raw):
        n = math.ceil(len(prompt.encode("utf-8")) / self.cfg["chars_per_token"])
        return n + (0 if raw else self.cfg["template_tokens"])

    # ---- scheduling --------------------------------------------------------------------

    def sleep(self, seconds):
        if seconds > 0:
            self.stop.wait(seconds)

    def current(self):
        """The loaded model, unloading it first if its keep_alive expired."""
        m = self.loaded
        if m is not None and self.active == 0 and m.expires_at is not None \
                and time.time() > m.expires_at:
            self.loaded = m = None
        return m

    def acquire(self, options, keep_alive):
        """A slot on a model loaded with ``options``: (Loaded, load seconds or None)."""
        key = self.options_key(options)
        with self.cond:
            if self.waiting >= self.cfg["max_queue"]:
                raise LoadError(503, "server busy, please try again.  "
                                     "maximum pending requests exceeded")
            self.waiting += 1
            try:
                while True:
                    if self.stop.is_set():
                        raise LoadError(503, "server shutting down")
                    m = self.current()
                    if m is not None and m.key == key and self.active < m.parallel:
                        self.active += 1
                        self.touch(m, keep_alive)
                        return m, None
                    if self.active == 0:
                        self.loaded = None
                        # Reserve the server while loading; the lock is released meanwhile
                        # (cond.wait), so /api/ps answers during a load.
                        self.active += 1
                        try:
                            m = self.plan(options)
                        except LoadError:
                            self.hold(self.cfg["load_base_ms"] / 1e3 * self.cfg["time_scale"])
                            self.active -= 1
                            self.cond.notify_all()
                            raise
                        self.hold(m.load_s * self.cfg["time_scale"])
                        self.loads += 1
                        self.loaded = m
                        self.touch(m, keep_alive)
                        return m, m.load_s
                    self.cond.wait(0.05)
            finally:
                self.waiting -= 1

    def hold(self, seconds):
        """Wait ``seconds`` with the lock released (called with self.cond held)."""
        deadline = time.monotonic() + seconds
        while not self.stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.cond.wait(left)

    @staticmethod
    def touch(m, keep_alive):
        m.expires_at = None if keep_alive is None else time.time() + keep_alive

    def take_slot(self, m, prompt):
        """The idle slot sharing the longest prefix with ``prompt`` (llama-server's slot choice
        under Ollama), and how many characters of it are cached there."""
        with self.cond:
            best, best_n = None, -1
            for i, held in enumerate(m.slots):
                if held is None:
                    continue  # busy
                n = len(os.path.commonprefix([held, prompt])) if self.cfg["prefix_cache"] else 0
                if n > best_n:
                    best, best_n = i, n
            if best is None:
                return None, 0
            m.slots[best] = None
            return best, best_n

    def put_slot(self, m, slot, prompt):
        with self.cond:
            if slot is not None:
                m.slots[slot] = prompt

    def release(self, m, keep_alive, died=False):
        with self.cond:
            self.active -= 1
            if died or (keep_alive == 0 and self.active == 0):
                if self.loaded is m:
                    self.loaded = None
            else:
                self.touch(m, keep_alive)
            self.cond.notify_all()

    def unload(self):
        with self.cond:
            if self.active == 0:
                self.loaded = None

    def crash(self):
        self.log("crash injected: the server process exits")
        if self.on_crash is not None:
            self.on_crash()
            raise SimCrash()
        code = self.cfg["crash_exit_code"]
        sys.stdout.flush()
        sys.stderr.flush()
        if code is None:
            os.kill(os.getpid(), signal.SIGKILL)
        os._exit(int(code))

    # ---- bodies ------------------------------------------------------------------------

    def details(self):
        c = self.cfg
        return {"parent_model": "", "format": "gguf", "family": c["architecture"],
                "families": [c["architecture"]], "parameter_size": c["parameter_size"],
                "quantization_level": c["quantization_level"]}

    def digest(self):
        return hashlib.sha256(self.cfg["name"].encode()).hexdigest()

    def ps_body(self):
        with self.cond:
            m = self.current()
            models = []
            if m is not None:
                models.append({
                    "name": self.cfg["name"], "model": self.cfg["name"], "size": m.size,
                    "digest": self.digest(), "details": self.details(),
                    "expires_at": rfc3339(m.expires_at) if m.expires_at is not None
                    else "2318-08-21T17:52:35.000000000Z",
                    "size_vram": m.size_vram, "context_length": m.ctx})
        return {"models": models}

    def tags_body(self):
        c = self.cfg
        return {"models": [{"name": c["name"], "model": c["name"],
                            "modified_at": "2025-05-30T14:02:11.482911317Z",
                            "size": c["file_size_bytes"], "digest": self.digest(),
                            "details": self.details()}]}

    def show_body(self):
        c = self.cfg
        a = c["architecture"]
        info = {
            "general.architecture": a,
            "general.file_type": 15,
            "general.parameter_count": c["parameter_count"],
            "general.quantization_version": 2,
            a + ".attention.head_count": c["head_count"],
            a + ".attention.head_count_kv": c["head_count_kv"],
            a + ".block_count": c["block_count"],
            a + ".context_length": c["trained_context"],
            a + ".embedding_length": c["embedding_length"],
            "tokenizer.ggml.model": "gpt2",
            "tokenizer.ggml.tokens": None,
        }
        if c["key_length"]:
            info[a + ".attention.key_length"] = c["key_length"]
        if c["value_length"]:
            info[a + ".attention.value_length"] = c["value_length"]
        return {"modelfile": "# simulated\nFROM %s\n" % c["name"], "parameters": "",
                "template": "{{ .Prompt }}", "details": self.details(), "model_info": info,
                "capabilities": ["completion"], "modified_at": "2025-05-30T14:02:11.482911317Z"}

    def known(self, model):
        return isinstance(model, str) and model and canonical(model) == canonical(self.cfg["name"])


INT_OPTIONS = ("num_ctx", "num_batch", "num_gpu", "num_thread", "num_predict", "seed",
               "main_gpu", "num_keep", "top_k")


def check_options(options):
    """Ollama's option type checks; unknown keys are ignored (logged)."""
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise LoadError(400, "json: cannot unmarshal options")
    out = dict(options)
    for k in INT_OPTIONS:
        if k in out and out[k] is not None:
            v = out[k]
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise LoadError(500, "option %r must be of type integer" % k)
            out[k] = int(v)
    return out


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ollama-sim"
    sys_version = ""

    @property
    def sim(self):
        return self.server.sim

    def log_message(self, fmt, *args):
        self.sim.log("%s - %s" % (self.address_string(), fmt % args))

    # ---- plumbing ----------------------------------------------------------------------

    def read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(parts)
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def send_bytes(self, status, data, ctype):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def send_json(self, status, obj):
        self.send_bytes(status, json.dumps(obj, separators=(",", ":")).encode(),
                        "application/json; charset=utf-8")

    def json_request(self):
        body = self.read_body()
        if not body.strip():
            raise LoadError(400, "missing request body")
        try:
            req = json.loads(body)
        except ValueError as e:
            raise LoadError(400, "invalid character in request body: %s" % e)
        if not isinstance(req, dict):
            raise LoadError(400, "json: cannot unmarshal into Go value of type api.Request")
        return req

    def start_stream(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def write_line(self, obj):
        data = json.dumps(obj, separators=(",", ":")).encode() + b"\n"
        self.wfile.write(b"%x\r\n" % len(data) + data + b"\r\n")

    def end_stream(self):
        self.wfile.write(b"0\r\n\r\n")

    # ---- routes ------------------------------------------------------------------------

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path == "/":
            self.send_bytes(200, b"Ollama is running", "text/plain; charset=utf-8")
        elif path == "/api/version":
            self.send_json(200, {"version": self.sim.cfg["version"]})
        elif path == "/api/ps":
            self.send_json(200, self.sim.ps_body())
        elif path == "/api/tags":
            self.send_json(200, self.sim.tags_body())
        else:
            self.send_bytes(404, b"404 page not found", "text/plain")

    def do_POST(self):
        path = self.path.split("?", 1)[0]
        try:
            if path == "/api/generate":
                self.generate(self.json_request())
            elif path == "/api/show":
                req = self.json_request()
                model = req.get("model") or req.get("name")
                if not self.sim.known(model):
                    raise LoadError(404, "model '%s' not found" % model)
                self.send_json(200, self.sim.show_body())
            else:
                self.read_body()
                self.send_bytes(404, b"404 page not found", "text/plain")
        except LoadError as e:
            self.send_json(e.status, {"error": e.message})
        except SimCrash:
            self.close_connection = True
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    # ---- /api/generate -----------------------------------------------------------------

    def generate(self, req):
        sim, c = self.sim, self.sim.cfg
        model = req.get("model")
        if not model:
            raise LoadError(400, "model is required")
        if not sim.known(model):
            raise LoadError(404, 'model "%s" not found, try pulling it first' % model)
        prompt = req.get("prompt") or ""
        if not isinstance(prompt, str):
            raise LoadError(400, "json: cannot unmarshal prompt into string")
        raw = bool(req.get("raw", False))
        stream = req.get("stream", True) is not False
        options = check_options(req.get("options"))
        unknown = sorted(set(options) - set(KNOWN_OPTIONS))
        if unknown:
            sim.log("level=WARN msg=\"invalid option provided\" options=%s" % ",".join(unknown))
        try:
            keep_alive = parse_duration(req["keep_alive"]) if "keep_alive" in req \
                else parse_duration(c["keep_alive"])
        except ConfigError as e:
            raise LoadError(400, str(e))

        with sim.cond:
            sim.requests += 1
            index = sim.requests
        rng = random.Random("%s:%d" % (c["seed"], index))
        # Fixed draw order, so that enabling one failure does not move the others.
        oom_roll, oom_pos_roll, hang_roll = rng.random(), rng.random(), rng.random()
        noise_p = max(0.05, rng.gauss(1.0, c["noise_cv"])) if c["noise_cv"] > 0 else 1.0
        noise_d = max(0.05, rng.gauss(1.0, c["noise_cv"])) if c["noise_cv"] > 0 else 1.0

        if prompt == "" and keep_alive == 0:
            sim.unload()
            self.send_json(200, {"model": model, "created_at": rfc3339(), "response": "",
                                 "done": True, "done_reason": "unload"})
            return

        m, load_s = sim.acquire(options, keep_alive)
        released = False
        try:
            with sim.cond:
                concurrent = sim.active
            crash_at = None
            if c["crash_after_requests"] is not None and index > c["crash_after_requests"]:
                crash_at = c["crash_after_tokens"]
            if prompt == "":
                if crash_at is not None:
                    sim.crash()
                self.send_json(200, {"model": model, "created_at": rfc3339(), "response": "",
                                     "done": True, "done_reason": "load"})
                return

            full = sim.prompt_tokens(prompt, raw)
            prompt_tokens = min(full, m.ctx)  # Ollama truncates a prompt to the context
            if full > m.ctx:
                sim.log("level=WARN msg=\"truncating input prompt\" limit=%d prompt=%d"
                        % (m.ctx, full))
            num_predict = options.get("num_predict")
            if num_predict is None or (num_predict < 0 and num_predict != -2):
                n, reason = c["default_num_predict"], "stop"
            elif num_predict == -2:
                n, reason = max(0, m.ctx - prompt_tokens), "length"
            else:
                n, reason = num_predict, "length"
            if c["eos_after_tokens"] is not None and c["eos_after_tokens"] < n:
                n, reason = c["eos_after_tokens"], "stop"

            share = 1.0 + (concurrent - 1) * (1.0 - c["parallel_efficiency"])
            # The prefix the slot already holds is not read again (Ollama sends cache_prompt;
            # its prompt_eval_count still counts it, its prompt_eval_duration does not).
            slot, same_chars = sim.take_slot(m, prompt)
            cached = min(int(same_chars // c["chars_per_token"]), max(prompt_tokens - 1, 0))
            h, k = c["prefill_depth_half"], c["decode_depth_half"]
            d0, d1 = float(cached), float(prompt_tokens)
            prompt_s = ((d1 - d0) + (d1 * d1 - d0 * d0) / (2.0 * h)) / (m.prefill_tps / share
                                                                       * noise_p)
            token_s = 1.0 / (m.decode_tps / (1.0 + d1 / k) / share * noise_d)
            load_ns = int(round((load_s if load_s is not None else c["warm_load_ms"] / 1e3) * 1e9))
            prompt_ns = int(round(prompt_s * 1e9))
            eval_ns = int(round(n * token_s * 1e9))

            oom_at = None
            if oom_roll < c["oom_mid_request_probability"]:
                oom_at = min(int(oom_pos_roll * n), max(n - 1, 0))
            hang_at = None
            if c["hang_after_tokens"] is not None and hang_roll < c["hang_probability"]:
                hang_at = c["hang_after_tokens"]

            words = random.Random("%s:%s:%s" % (c["seed"], options.get("seed"),
                                                hashlib.sha256(prompt.encode()).hexdigest()))
            scale = c["time_scale"]
            if crash_at == 0:
                sim.crash()
            if stream:
                self.start_stream()
            t0 = time.monotonic()
            sim.sleep(prompt_s * scale)
            text = []
            for i in range(n + 1):
                if crash_at is not None and i == crash_at:
                    sim.crash()
                if hang_at is not None and i == hang_at:
                    sim.log("hang injected after %d tokens" % i)
                    while not sim.stop.is_set():
                        sim.stop.wait(0.1)
                    self.close_connection = True
                    return
                if oom_at is not None and i == oom_at:
                    # The runner is gone before the server reports it (as Ollama's is): a
                    # client that reads the error and asks /api/ps sees no model loaded.
                    sim.release(m, keep_alive, died=True)
                    released = True
                    if stream:
                        self.write_line({"error": c["oom_mid_request_text"]})
                        self.end_stream()
                    else:
                        self.send_json(500, {"error": c["oom_mid_request_text"]})
                    return
                if i == n:
                    break
                target = t0 + (prompt_s + (i + 1) * token_s) * scale
                sim.sleep(target - time.monotonic())
                word = words.choice(WORDS)
                tok = word if i == 0 else " " + word
                text.append(tok)
                if stream:
                    self.write_line({"model": model, "created_at": rfc3339(), "response": tok,
                                     "done": False})
            final = {"model": model, "created_at": rfc3339(), "response": "", "done": True,
                     "done_reason": reason,
                     "total_duration": load_ns + prompt_ns + eval_ns + 250000,
                     "load_duration": load_ns, "prompt_eval_count": prompt_tokens,
                     "prompt_eval_duration": prompt_ns, "eval_count": n,
                     "eval_duration": eval_ns}
            if stream:
                self.write_line(final)
                self.end_stream()
            else:
                final["response"] = "".join(text)
                self.send_json(200, final)
            sim.put_slot(m, slot, prompt)
            slot = None
        finally:
            if "slot" in locals() and slot is not None:
                sim.put_slot(m, slot, "")
            if not released:
                sim.release(m, keep_alive)


KNOWN_OPTIONS = INT_OPTIONS + (
    "use_mmap", "temperature", "top_p", "min_p", "typical_p", "repeat_last_n",
    "repeat_penalty", "presence_penalty", "frequency_penalty", "stop", "penalize_newline",
    "numa", "low_vram", "vocab_only", "use_mlock", "tfs_z", "mirostat", "mirostat_tau",
    "mirostat_eta")


class SimServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, addr, sim):
        super().__init__(addr, Handler)
        self.sim = sim

    def handle_error(self, request, client_address):
        # A client that went away mid-stream is normal; anything else is logged.
        exc = sys.exc_info()[1]
        if not isinstance(exc, (BrokenPipeError, ConnectionResetError, SimCrash)):
            self.sim.log("error serving %s: %r" % (client_address, exc))


def start(config, port=0, host="127.0.0.1", env=None, on_crash=None, log=None):
    """Start a simulator in a background thread: (server, url). ``stop(server)`` ends it."""
    sim = Simulator(config, env=env, on_crash=on_crash, log=log)
    server = SimServer((host, port), sim)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                     daemon=True).start()
    return server, "http://%s:%d" % (host, server.server_address[1])


def stop(server):
    server.sim.stop.set()
    server.shutdown()
    server.server_close()


def main(argv=None):
    ap = argparse.ArgumentParser(description="Deterministic Ollama simulator")
    ap.add_argument("--port", type=int, default=None,
                    help="port (0: any free one); default from OLLAMA_HOST, else 11434")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--config", help="JSON config (see README.md); defaults if omitted")
    ap.add_argument("--quiet", action="store_true", help="no request log on stderr")
    args = ap.parse_args(argv)
    raw = {}
    if args.config:
        with open(args.config) as f:
            raw = json.load(f)
    port = args.port
    if port is None:
        hostport = os.environ.get("OLLAMA_HOST", "")
        port = int(hostport.rsplit(":", 1)[1]) if ":" in hostport else 11434

    def log(msg):
        if not args.quiet:
            sys.stderr.write("ollama-sim: %s\n" % msg)
            sys.stderr.flush()

    try:
        sim = Simulator(raw, log=log)
    except ConfigError as e:
        sys.stderr.write("ollama-sim: bad config: %s\n" % e)
        return 2
    server = SimServer((args.host, port), sim)
    print("listening on http://%s:%d" % (args.host, server.server_address[1]), flush=True)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    try:
        server.serve_forever(poll_interval=0.05)
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop.set()
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
