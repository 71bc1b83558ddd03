"""Self-test of the Ollama simulator: python3 -m unittest tests/sim/test_ollama_sim.py

Runs the simulator in-process on port 0 (one subprocess test checks the real crash exit).
"""

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import unittest
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import ollama_sim  # noqa: E402

MODEL = "sim-test:1b"

# Round numbers so the expected memory can be written down:
#   total = 4e9 + 100_000 * ctx * parallel + 100e6 + 1e6 * batch
BASE = {
    "name": MODEL,
    "architecture": "llama",
    "block_count": 10,
    "trained_context": 16384,
    "weights_bytes": 4_000_000_000,
    "kv_bytes_per_token": 100_000,
    "compute_buffer_base_bytes": 100_000_000,
    "compute_buffer_per_batch_bytes": 1_000_000,
    "capacity_bytes": 6_000_000_000,
    "host_capacity_bytes": None,
    "spill": False,
    "prefill_tps_max": 1000.0,
    "prefill_batch_knee": 512,
    "prefill_batch_exponent": 0.5,
    "prefill_depth_half": 16384,
    "decode_tps0": 50.0,
    "decode_depth_half": 4096,
    "cpu_slowdown": 10.0,
    "load_base_ms": 100.0,
    "load_bytes_per_s": 4.0e9,
    "time_scale": 0.0001,
    "noise_cv": 0.0,
    "seed": 7,
    "chars_per_token": 4.0,
}


def total_bytes(ctx, batch=512, parallel=1, kv_factor=1.0):
    return 4_000_000_000 + 100_000 * kv_factor * ctx * parallel + 100_000_000 + 1_000_000 * batch


class Sim:
    """One in-process simulator with a tiny HTTP client."""

    def __init__(self, env=None, crash_hook=False, **overrides):
        cfg = dict(BASE)
        cfg.update(overrides)
        self.crashed = threading.Event()
        on_crash = None
        if crash_hook:
            def on_crash():
                self.crashed.set()
                threading.Thread(target=ollama_sim.stop, args=(self.server,)).start()
        self.server, self.url = ollama_sim.start(cfg, env=env or {}, on_crash=on_crash)
        self.port = self.server.server_address[1]

    def close(self):
        if not self.crashed.is_set():
            ollama_sim.stop(self.server)

    def conn(self, timeout=10):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(self, method, path, body=None, timeout=10):
        c = self.conn(timeout)
        try:
            data = None if body is None else json.dumps(body)
            c.request(method, path, body=data,
                      headers={"Content-Type": "application/json"} if data else {})
            r = c.getresponse()
            return r.status, r.getheader("Content-Type", ""), r.read().decode()
        finally:
            c.close()

    def get_json(self, path):
        status, _, body = self.request("GET", path)
        assert status == 200, (status, body)
        return json.loads(body)

    def generate(self, prompt="Why is the sky blue?", timeout=10, **options):
        """Streams /api/generate: (status, [parsed lines]) or (status, error body)."""
        body = {"model": MODEL, "prompt": prompt, "stream": True, "raw": True,
                "keep_alive": "10m", "options": options}
        c = self.conn(timeout)
        try:
            c.request("POST", "/api/generate", body=json.dumps(body),
                      headers={"Content-Type": "application/json"})
            r = c.getresponse()
            if r.status != 200:
                return r.status, json.loads(r.read())
            assert r.getheader("Content-Type") == "application/x-ndjson"
            lines = []
            while True:
                line = r.readline()
                if not line:
                    break
                if line.strip():
                    lines.append(json.loads(line))
            return r.status, lines
        finally:
            c.close()

    def ps(self):
        models = self.get_json("/api/ps")["models"]
        return models[0] if models else None


class SimTestCase(unittest.TestCase):
    def sim(self, **kw):
        s = Sim(**kw)
        self.addCleanup(s.close)
        return s


class ServerBasics(SimTestCase):
    def test_root_version_tags_show(self):
        s = self.sim()
        status, ctype, body = s.request("GET", "/")
        self.assertEqual((status, body), (200, "Ollama is running"))
        self.assertTrue(ctype.startswith("text/plain"))
        self.assertEqual(s.get_json("/api/version"), {"version": "0.12.3"})
        tags = s.get_json("/api/tags")["models"]
        self.assertEqual([m["name"] for m in tags], [MODEL])
        self.assertEqual(tags[0]["size"], 4_000_000_000)
        status, _, body = s.request("POST", "/api/show", {"model": MODEL})
        self.assertEqual(status, 200)
        info = json.loads(body)["model_info"]
        self.assertEqual(info["general.architecture"], "llama")
        self.assertEqual(info["llama.context_length"], 16384)
        self.assertEqual(info["llama.block_count"], 10)
        self.assertEqual(json.loads(body)["details"]["quantization_level"], "Q4_K_M")
        self.assertIsNone(s.ps())

    def test_unknown_model_and_bad_requests(self):
        s = self.sim()
        status, _, body = s.request("POST", "/api/generate", {"model": "x", "prompt": "hi"})
        self.assertEqual(status, 404)
        self.assertEqual(json.loads(body),
                         {"error": "model \"x\" not found, try pulling it first"})
        status, _, body = s.request("POST", "/api/show", {"model": "nope"})
        self.assertEqual(status, 404)
        self.assertIn("not found", json.loads(body)["error"])
        status, _, body = s.request("POST", "/api/generate", {"prompt": "hi"})
        self.assertEqual((status, json.loads(body)), (400, {"error": "model is required"}))
        status, _, body = s.request("POST", "/api/generate",
                                    {"model": MODEL, "prompt": "hi",
                                     "options": {"num_ctx": "big"}})
        self.assertEqual(status, 500)
        self.assertIn("num_ctx", json.loads(body)["error"])
        status, _, _ = s.request("GET", "/api/nothing")
        self.assertEqual(status, 404)

    def test_config_rejects_unknown_keys_and_example_loads(self):
        with self.assertRaises(ollama_sim.ConfigError):
            ollama_sim.load_config({"capacity": 1}, env={})
        with open(os.path.join(HERE, "example.json")) as f:
            cfg = ollama_sim.load_config(json.load(f), env={})
        self.assertEqual(cfg["kv_bytes_per_token"], 131072)

    def test_keep_alive_parsing(self):
        p = ollama_sim.parse_duration
        self.assertEqual(p("5m"), 300.0)
        self.assertEqual(p("1h30m"), 5400.0)
        self.assertEqual(p("250ms"), 0.25)
        self.assertEqual(p(30), 30.0)
        self.assertEqual(p("0"), 0.0)
        self.assertIsNone(p(-1))
        self.assertIsNone(p("-1m"))
        with self.assertRaises(ollama_sim.ConfigError):
            p("soon")


class Streaming(SimTestCase):
    def test_streams_tokens_then_final_timings(self):
        s = self.sim()
        prompt = "x" * 402  # ceil(402 / 4) = 101 tokens
        status, lines = s.generate(prompt, num_ctx=4096, num_batch=512, num_predict=6, seed=1)
        self.assertEqual(status, 200)
        self.assertEqual(len(lines), 7)
        for tok in lines[:-1]:
            self.assertEqual(set(tok), {"model", "created_at", "response", "done"})
            self.assertFalse(tok["done"])
            self.assertTrue(tok["response"])
        final = lines[-1]
        self.assertTrue(final["done"])
        self.assertEqual(final["done_reason"], "length")
        self.assertEqual(final["prompt_eval_count"], 101)
        self.assertEqual(final["eval_count"], 6)
        # Truth: reading 101 tokens takes (101 + 101² / (2 · 16384)) / 1000 s (the marginal
        # rate 1000 / (1 + d / 16384) at depth d); decode at depth 101 runs at
        # 50 / (1 + 101 / 4096) tok/s; load = 0.1 s + 4e9 / 4e9 s. The configured context
        # does not matter, the depth does.
        self.assertAlmostEqual(final["prompt_eval_duration"] / 1e9,
                               (101 + 101 ** 2 / 32768) / 1000, places=6)
        self.assertAlmostEqual(final["eval_count"] / final["eval_duration"] * 1e9,
                               50 / (1 + 101 / 4096), places=3)
        self.assertEqual(final["load_duration"], 1_100_000_000)
        self.assertGreaterEqual(final["total_duration"],
                                final["load_duration"] + final["prompt_eval_duration"]
                                + final["eval_duration"])
        ps = s.ps()
        self.assertEqual(ps["name"], MODEL)
        self.assertEqual(ps["size"], total_bytes(4096))
        self.assertEqual(ps["size_vram"], ps["size"])
        self.assertEqual(ps["context_length"], 4096)

    def test_same_options_do_not_reload_and_new_ones_do(self):
        s = self.sim()
        first = s.generate(num_ctx=2048, num_predict=2, seed=5)[1]
        again = s.generate(num_ctx=2048, num_predict=2, seed=5)[1]
        self.assertGreater(first[-1]["load_duration"], 0)
        self.assertEqual(again[-1]["load_duration"], 0)
        self.assertEqual([l["response"] for l in first[:-1]],
                         [l["response"] for l in again[:-1]], "seeded output")
        other = s.generate(num_ctx=2048, num_batch=128, num_predict=2, seed=5)[1]
        self.assertGreater(other[-1]["load_duration"], 0)
        # Prefill below the batch knee: 1000 * (128/512)^0.5 at depth 0; a reload empties the
        # prefix cache, so the whole (5-token) prompt is read again.
        n = other[-1]["prompt_eval_count"]
        self.assertAlmostEqual(other[-1]["prompt_eval_duration"] / 1e9,
                               (n + n * n / 32768) / 500.0, places=6)
        self.assertEqual(s.ps()["size"], total_bytes(2048, batch=128))

    def test_decode_slows_with_depth_and_prefill_costs_more_deeper(self):
        s = self.sim()
        for depth, ch in ((1024, "a"), (4096, "b"), (12000, "c")):
            # Distinct prompts: no prefix in common.
            final = s.generate(ch * 4 * depth, num_ctx=16000 if depth > 4096 else 8192,
                               num_batch=128, num_predict=4)[1]
            if final[-1].get("error"):
                continue
            f = final[-1]
            self.assertEqual(f["prompt_eval_count"], depth)
            self.assertAlmostEqual(f["eval_count"] / f["eval_duration"] * 1e9,
                                   50 / (1 + depth / 4096), places=3)
            self.assertAlmostEqual(f["prompt_eval_duration"] / 1e9,
                                   (depth + depth ** 2 / 32768) / 500.0, places=4)

    def test_a_shared_prefix_is_reused_and_ollama_counts_it(self):
        s = self.sim()
        prefix = "the model reads a long report " * 100  # 3000 chars: 750 tokens
        fill = s.generate(prefix + "[a] one", num_ctx=4096, num_predict=2)[1][-1]
        hit = s.generate(prefix + "[b] two", num_ctx=4096, num_predict=2)[1][-1]
        # Ollama's count includes the cached tokens, its duration only the rest.
        self.assertEqual(hit["prompt_eval_count"], fill["prompt_eval_count"])
        self.assertLess(hit["prompt_eval_duration"], fill["prompt_eval_duration"] / 20)
        # A reload (other options) starts with an empty cache; so does a model that cannot.
        again = s.generate(prefix + "[c] three", num_ctx=2048, num_predict=2)[1][-1]
        self.assertGreater(again["load_duration"], 0)
        self.assertAlmostEqual(again["prompt_eval_duration"], fill["prompt_eval_duration"],
                               delta=fill["prompt_eval_duration"] * 0.01)
        s2 = self.sim(prefix_cache=False)
        a = s2.generate(prefix + "[a] one", num_ctx=4096, num_predict=2)[1][-1]
        b = s2.generate(prefix + "[b] two", num_ctx=4096, num_predict=2)[1][-1]
        self.assertAlmostEqual(a["prompt_eval_duration"], b["prompt_eval_duration"],
                               delta=a["prompt_eval_duration"] * 0.01)

    def test_non_streaming_and_default_num_predict(self):
        s = self.sim(default_num_predict=9)
        status, ctype, body = s.request("POST", "/api/generate",
                                        {"model": MODEL, "prompt": "hello", "stream": False})
        self.assertEqual(status, 200)
        self.assertTrue(ctype.startswith("application/json"))
        obj = json.loads(body)
        self.assertTrue(obj["done"])
        self.assertEqual(obj["done_reason"], "stop")
        self.assertEqual(obj["eval_count"], 9)
        self.assertEqual(len(obj["response"].split()), 9)
        # No num_ctx: the server default (4096).
        self.assertEqual(s.ps()["context_length"], 4096)

    def test_empty_prompt_loads_and_keep_alive_zero_unloads(self):
        s = self.sim()
        status, _, body = s.request("POST", "/api/generate",
                                    {"model": MODEL, "options": {"num_ctx": 8192}})
        self.assertEqual(status, 200)
        self.assertEqual(json.loads(body)["done_reason"], "load")
        self.assertEqual(s.ps()["context_length"], 8192)
        status, _, body = s.request("POST", "/api/generate", {"model": MODEL, "keep_alive": 0})
        self.assertEqual(json.loads(body)["done_reason"], "unload")
        self.assertIsNone(s.ps())

    def test_prompt_longer_than_context_is_truncated(self):
        s = self.sim()
        final = s.generate("y" * 4 * 3000, num_ctx=2048, num_predict=3)[1][-1]
        self.assertEqual(final["prompt_eval_count"], 2048)
        self.assertEqual(final["eval_count"], 3)

    def test_noise_is_seeded(self):
        def timings(seed):
            s = Sim(noise_cv=0.1, seed=seed)
            try:
                return [s.generate(num_ctx=2048, num_predict=3)[1][-1]["eval_duration"]
                        for _ in range(3)]
            finally:
                s.close()

        a, b, c = timings(11), timings(11), timings(12)
        self.assertEqual(a, b)
        self.assertNotEqual(a, c)
        self.assertGreater(len(set(a)), 1, "noise varies between requests")


class MemoryModel(SimTestCase):
    def test_oom_at_too_large_ctx(self):
        s = self.sim()
        # 4e9 + 1e5 * 16384 + 100e6 + 512e6 = 6.2504e9 > 6e9.
        self.assertGreater(total_bytes(16384), 6_000_000_000)
        status, body = s.generate(num_ctx=16384, num_predict=2)
        self.assertEqual(status, 500)
        self.assertIn("out of memory", body["error"])
        self.assertIsNone(s.ps())
        # A smaller batch shrinks the compute buffer enough: 4e9 + 1.6384e9 + 100e6 + 128e6.
        status, lines = s.generate(num_ctx=16384, num_batch=128, num_predict=2)
        self.assertEqual(status, 200)
        self.assertEqual(s.ps()["size"], total_bytes(16384, batch=128))

    def test_ctx_above_trained_is_clamped(self):
        s = self.sim(capacity_bytes=80_000_000_000)
        status, lines = s.generate(num_ctx=32768, num_predict=2)
        self.assertEqual(status, 200)
        ps = s.ps()
        self.assertEqual(ps["context_length"], 16384)
        self.assertEqual(ps["size"], total_bytes(16384))
        self.assertEqual(lines[-1]["done_reason"], "length")

    def test_spill_to_cpu(self):
        s = self.sim(spill=True)
        fits = s.generate(num_ctx=4096, num_predict=2)[1][-1]
        status, lines = s.generate(num_ctx=16384, num_predict=2)
        self.assertEqual(status, 200)
        ps = s.ps()
        total = total_bytes(16384)
        self.assertEqual(ps["size"], total)
        per_layer = (4_000_000_000 + 100_000 * 16384) / 10
        layers = int((6_000_000_000 - 612_000_000) // per_layer)
        self.assertEqual(layers, 9)
        self.assertEqual(ps["size_vram"], round(layers * per_layer + 612_000_000))
        self.assertLess(ps["size_vram"], ps["size"])
        # Decode at the prompt's depth (5 tokens): 50 / (1 + 5/4096) / (0.9 + 0.1 * 10).
        final = lines[-1]
        got = final["eval_count"] / final["eval_duration"] * 1e9
        self.assertAlmostEqual(got, 50 / (1 + 5 / 4096) / 1.9, places=3)
        self.assertLess(got, fits["eval_count"] / fits["eval_duration"] * 1e9)

    def test_explicit_num_gpu_places_layers(self):
        s = self.sim()
        s.generate(num_ctx=4096, num_gpu=4, num_predict=1)
        ps = s.ps()
        per_layer = (4_000_000_000 + 100_000 * 4096) / 10
        self.assertEqual(ps["size_vram"], round(4 * per_layer + 612_000_000))
        s.generate(num_ctx=4096, num_gpu=0, num_predict=1)
        self.assertEqual(s.ps()["size_vram"], 0)

    def test_host_memory_error(self):
        s = self.sim(spill=True, host_capacity_bytes=100_000_000)
        status, body = s.generate(num_ctx=16384, num_predict=1)
        self.assertEqual(status, 500)
        self.assertRegex(body["error"], r"^model requires more system memory \(\d+\.\d GiB\) "
                                        r"than is available \(0\.1 GiB\)$")

    def test_server_env_parallel_and_kv_type(self):
        s = self.sim(env={"OLLAMA_NUM_PARALLEL": "2", "OLLAMA_FLASH_ATTENTION": "1",
                          "OLLAMA_KV_CACHE_TYPE": "q8_0"}, capacity_bytes=80_000_000_000)
        s.generate(num_ctx=4096, num_predict=1)
        self.assertEqual(s.ps()["size"], round(total_bytes(4096, parallel=2,
                                                           kv_factor=8.5 / 16)))
        # Without flash attention a quantized KV type is ignored (f16).
        s2 = self.sim(env={"OLLAMA_KV_CACHE_TYPE": "q4_0"})
        s2.generate(num_ctx=4096, num_predict=1)
        self.assertEqual(s2.ps()["size"], total_bytes(4096))


class Failures(SimTestCase):
    def test_fail_load_at_ctx_above(self):
        s = self.sim(fail_load_at_ctx_above=8192)
        self.assertEqual(s.generate(num_ctx=8192, num_predict=1)[0], 200)
        status, body = s.generate(num_ctx=8193, num_predict=1)
        self.assertEqual(status, 500)
        self.assertIn("timed out waiting for llama runner to start", body["error"])
        self.assertIsNone(s.ps())

    def test_oom_mid_request(self):
        s = self.sim(oom_mid_request_probability=1.0)
        status, lines = s.generate(num_ctx=2048, num_predict=20)
        self.assertEqual(status, 200)
        self.assertIn("error", lines[-1])
        self.assertIn("out of memory", lines[-1]["error"])
        self.assertTrue(all(not l.get("done") for l in lines[:-1]))
        self.assertLess(len(lines) - 1, 20)
        self.assertIsNone(s.ps(), "the runner died")
        # Deterministic: the same seed breaks at the same token.
        s2 = self.sim(oom_mid_request_probability=1.0)
        self.assertEqual(len(s2.generate(num_ctx=2048, num_predict=20)[1]), len(lines))

    def test_hang_after_tokens(self):
        s = self.sim(hang_after_tokens=3)
        c = s.conn(timeout=0.5)
        self.addCleanup(c.close)
        c.request("POST", "/api/generate", body=json.dumps(
            {"model": MODEL, "prompt": "hi", "options": {"num_predict": 10}}))
        r = c.getresponse()
        self.assertEqual(r.status, 200)
        got = [json.loads(r.readline()) for _ in range(3)]
        self.assertTrue(all(not g["done"] for g in got))
        with self.assertRaises(socket.timeout):
            r.readline()

    def test_crash_after_requests_in_process(self):
        s = Sim(crash_hook=True, crash_after_requests=1)
        self.assertEqual(s.generate(num_predict=2)[0], 200)
        with self.assertRaises((ConnectionError, http.client.HTTPException, OSError)):
            s.generate(num_predict=2, timeout=2)
        self.assertTrue(s.crashed.wait(2))
        with self.assertRaises(OSError):
            s.generate(num_predict=2, timeout=2)

    def test_crash_kills_the_process(self):
        import tempfile
        cfg = dict(BASE, crash_after_requests=1, crash_after_tokens=2)
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(cfg, f)
        self.addCleanup(os.unlink, f.name)
        proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "ollama_sim.py"), "--port", "0", "--config",
             f.name, "--quiet"], stdout=subprocess.PIPE, text=True)
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        self.addCleanup(proc.stdout.close)
        first = proc.stdout.readline().strip()
        self.assertRegex(first, r"^listening on http://127\.0\.0\.1:\d+$")
        port = urllib.parse.urlparse(first.split()[-1]).port
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        c.request("POST", "/api/generate", body=json.dumps(
            {"model": MODEL, "prompt": "hi", "options": {"num_predict": 2}}))
        self.assertEqual(c.getresponse().read().count(b"\n"), 3)
        c.close()
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        c.request("POST", "/api/generate", body=json.dumps(
            {"model": MODEL, "prompt": "hi", "options": {"num_predict": 5}}))
        r = c.getresponse()
        self.assertEqual(r.status, 200)
        self.assertFalse(json.loads(r.readline())["done"])
        self.assertFalse(json.loads(r.readline())["done"])
        with self.assertRaises((http.client.HTTPException, OSError, ValueError)):
            rest = r.read()
            json.loads(rest.splitlines()[0])
        c.close()
        self.assertEqual(proc.wait(timeout=5), -signal.SIGKILL)


if __name__ == "__main__":
    unittest.main()
