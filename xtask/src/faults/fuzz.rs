//! Scenarios that mutate o3's inputs (GGUF files, configurations, sysfs trees, traces) from
//! a fixed seed.

use super::*;

/// xorshift64* (Vigna, "An experimental exploration of Marsaglia's xorshift generators,
/// scrambled", 2016): deterministic, so a seed replays the same inputs.
pub(super) struct Rng(pub(super) u64);

impl Rng {
    pub(super) fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub(super) fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-ish in 0..n (0 when n is 0).
    pub(super) fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }
}

pub(super) const BIG_BINARY: &[u64] = &[
    u64::MAX,
    i64::MAX as u64,
    1 << 63,
    1 << 32,
    u32::MAX as u64,
    0x7fff_ffff,
    0x8000_0000,
    0,
];

pub(super) const BIG_TEXT: &[&str] = &[
    "18446744073709551616",
    "-9223372036854775809",
    "340282366920938463463374607431768211456",
    "4294967296",
    "9007199254740993",
    "-1",
    "0",
    "1e308",
    "NaN",
    "inf",
];

/// One to three of: a bit flip, a random byte, truncation at a random offset, a duplicated
/// range, a deleted range, a large integer (written over a decimal number in text, or as 4 or
/// 8 little-endian bytes).
pub(super) fn mutate(rng: &mut Rng, data: &mut Vec<u8>) {
    for _ in 0..=rng.below(3) {
        let len = data.len();
        let range = |rng: &mut Rng| {
            let a = rng.below(len);
            (a, a + 1 + rng.below((len - a).min(4096)))
        };
        match rng.below(7) {
            0 if len > 0 => {
                let i = rng.below(len);
                data[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                data[i] = rng.next_u64() as u8;
            }
            2 => data.truncate(rng.below(len + 1)),
            3 if len > 0 => {
                let (a, b) = range(rng);
                let copy = data[a..b].to_vec();
                let at = rng.below(len + 1);
                data.splice(at..at, copy);
            }
            4 if len > 0 => {
                let (a, b) = range(rng);
                data.drain(a..b);
            }
            5 => {
                // The next decimal number from a random offset, replaced.
                let from = rng.below(len);
                match data[from..].iter().position(u8::is_ascii_digit) {
                    Some(i) => {
                        let a = from + i;
                        let b = a + data[a..].iter().take_while(|c| c.is_ascii_digit()).count();
                        let s = BIG_TEXT[rng.below(BIG_TEXT.len())].as_bytes();
                        data.splice(a..b, s.iter().copied());
                    }
                    None => big_binary(rng, data),
                }
            }
            _ => big_binary(rng, data),
        }
    }
}

pub(super) fn big_binary(rng: &mut Rng, data: &mut Vec<u8>) {
    let v = match rng.below(BIG_BINARY.len() + 1) {
        i if i < BIG_BINARY.len() => BIG_BINARY[i],
        _ => rng.next_u64(),
    };
    let width = if rng.below(2) == 0 { 4 } else { 8 };
    let bytes = &v.to_le_bytes()[..width];
    if data.len() < width {
        data.extend_from_slice(bytes);
    } else {
        let at = rng.below(data.len() - width + 1);
        data[at..at + width].copy_from_slice(bytes);
    }
}

/// One input of a fuzz corpus: its bytes and where a mutation of it is written.
pub(super) struct Input {
    pub(super) bytes: Vec<u8>,
    pub(super) path: PathBuf,
}

/// Counts of one fuzz scenario.
#[derive(Default)]
pub(super) struct Fuzzed {
    pub(super) runs: u64,
    pub(super) refused: u64,
    /// Runs that did not survive; the first [`KEPT`] keep their input.
    pub(super) failed: u64,
}

/// Failed fuzz inputs kept (and problems listed) per scenario.
pub(super) const KEPT: u64 = 5;

impl Fuzzed {
    /// Judges one fuzzed run: a panic or a hang (counted by [`Scn::finish`]) or a failure
    /// that is not exactly one `o3: ` line keeps its input for the reproduction.
    pub(super) fn judge(&mut self, c: &mut Scn, out: &Out, input: &Path, bytes: &[u8], note: &str) {
        self.runs += 1;
        let mut bad = out.hung || out.panicked();
        if !bad && out.code() != Some(0) {
            self.refused += 1;
            if let Err(e) = out.one_line() {
                bad = true;
                c.problem(e);
            }
        }
        if !bad {
            return;
        }
        self.failed += 1;
        if self.failed > KEPT {
            return;
        }
        let ext = input
            .extension()
            .map_or(String::new(), |e| format!(".{}", e.to_string_lossy()));
        let saved = c.dir.join(format!("failure-{}{ext}", self.failed));
        let _ = std::fs::write(&saved, bytes);
        c.problem(format!(
            "input kept as {}{note}; reproduce: copy it to {} and run {}",
            saved.display(),
            input.display(),
            out.what
        ));
    }
}

pub(super) fn fuzz_gguf(s: &mut Suite, c: &mut Scn) -> Result<String> {
    let mut corpus = Vec::new();
    for f in files(&root().join("tests/fixtures/gguf")) {
        if f.extension().is_some_and(|e| e == "gguf") {
            corpus.push(std::fs::read(&f)?);
        }
    }
    let mut head = Vec::new();
    std::fs::File::open(&s.model)?
        .take(64 << 10)
        .read_to_end(&mut head)?;
    corpus.push(head);
    let input = c.dir.join("input.gguf");
    let inputs: Vec<Input> = corpus
        .into_iter()
        .map(|bytes| Input {
            bytes,
            path: input.clone(),
        })
        .collect();
    fuzz(c, &inputs, |rng, c, _| {
        // Half the inputs are extended (sparse) past any data end a header declares, so the
        // reader gets beyond its "file too short" check.
        let pad = rng.below(2) == 0;
        if pad {
            let f = std::fs::OpenOptions::new().write(true).open(&input)?;
            f.set_len(f.metadata()?.len().max(1 << 36))?;
        }
        let mut cmd = c.o3();
        cmd.args(["predict", "--backend", "llama-server", "--model"])
            .arg(&input)
            .args(["--ctx", "4096"]);
        Ok((
            cmd,
            if pad {
                " (then extended to 64 GiB: truncate -s 64G)"
            } else {
                ""
            },
        ))
    })
}

pub(super) fn fuzz_config(_: &mut Suite, c: &mut Scn) -> Result<String> {
    let mut default = c.o3();
    default.args(["config", "default"]);
    let out = c.run(default, SHORT_LIMIT)?;
    if out.code() != Some(0) {
        bail!("o3 config default: {}", out.brief());
    }
    let input = c.dir.join("input.yaml");
    let inputs = vec![
        Input {
            bytes: std::fs::read(root().join("config/short.yaml"))?,
            path: input.clone(),
        },
        Input {
            bytes: out.stdout.into_bytes(),
            path: input.clone(),
        },
    ];
    fuzz(c, &inputs, |_, c, _| {
        let mut cmd = c.o3();
        cmd.args(["config", "check"]).arg(&input);
        Ok((cmd, ""))
    })
}

pub(super) fn fuzz_sysfs(_: &mut Suite, c: &mut Scn) -> Result<String> {
    let dev = c.dir.join("dev");
    std::fs::create_dir_all(&dev)?;
    let mut inputs = Vec::new();
    let mut trees = Vec::new();
    for tree in ["strix-halo", "rdna3"] {
        let copy = c.dir.join(tree);
        copy_tree(&root().join("tests/fixtures").join(tree), &copy)?;
        for f in files(&copy) {
            inputs.push(Input {
                bytes: std::fs::read(&f)?,
                path: f,
            });
        }
        trees.push(copy);
    }
    fuzz(c, &inputs, |_, c, input| {
        let tree = trees
            .iter()
            .find(|t| input.path.starts_with(t))
            .expect("every input is in a tree");
        let mut cmd = c.o3();
        cmd.arg("--sysfs-root").arg(tree.join("sys"));
        if tree.join("proc").is_dir() {
            cmd.arg("--procfs-root").arg(tree.join("proc"));
        }
        cmd.arg("--dev-root")
            .arg(&dev)
            .args(["monitor", "--once", "--json"]);
        Ok((cmd, ""))
    })
}

pub(super) fn fuzz_traces(s: &mut Suite, c: &mut Scn) -> Result<String> {
    let recorded = c.dir.join("spike.jsonl");
    let mut record = c.o3();
    record
        .arg("record")
        .arg("--out")
        .arg(&recorded)
        .arg("--")
        .arg(&s.workload)
        .args(["spike", "--mib", "64", "--hold-us", "1000", "--repeat", "5"]);
    let out = c.run(record, SHORT_LIMIT)?;
    if out.code() != Some(0) {
        bail!("o3 record: {}", out.brief());
    }
    let input = c.dir.join("input.jsonl");
    let mut inputs = vec![Input {
        bytes: std::fs::read(&recorded)?,
        path: input.clone(),
    }];
    // The smallest trace of the undisturbed run (a probe of the real server).
    if let Some(t) = s
        .undisturbed
        .as_ref()
        .map(|r| files(&r.join("traces")))
        .unwrap_or_default()
        .into_iter()
        .min_by_key(|f| f.metadata().map_or(u64::MAX, |m| m.len()))
    {
        inputs.push(Input {
            bytes: std::fs::read(&t)?,
            path: input.clone(),
        });
    }
    let n = inputs.len();
    let detail = fuzz(c, &inputs, |rng, c, _| {
        let mut cmd = c.o3();
        if rng.below(2) == 0 {
            cmd.args(["export", "--format", "csv"]);
        } else {
            cmd.arg("analyze");
        }
        cmd.arg(&input);
        Ok((cmd, ""))
    })?;
    Ok(if n < 2 {
        format!("{detail} (no run trace: the undisturbed run did not finish)")
    } else {
        detail
    })
}

/// Mutates inputs of `corpus` for [`FUZZ_TIME`]: each run writes one mutated input to its
/// path, runs the command `command` gives, judges it, and puts the original back.
pub(super) fn fuzz(
    c: &mut Scn,
    corpus: &[Input],
    mut command: impl FnMut(&mut Rng, &Scn, &Input) -> Result<(Command, &'static str)>,
) -> Result<String> {
    let seed = SEED.wrapping_add(c.index as u64);
    let mut rng = Rng::new(seed);
    let mut stats = Fuzzed::default();
    let listed = c.problems.len();
    let t0 = Instant::now();
    while t0.elapsed() < FUZZ_TIME {
        let input = &corpus[rng.below(corpus.len())];
        let mut bytes = input.bytes.clone();
        mutate(&mut rng, &mut bytes);
        std::fs::write(&input.path, &bytes)
            .with_context(|| format!("writing {}", input.path.display()))?;
        let (cmd, note) = command(&mut rng, c, input)?;
        let out = c.run(cmd, FUZZ_LIMIT)?;
        stats.judge(c, &out, &input.path, &bytes, note);
        std::fs::write(&input.path, &input.bytes)?;
    }
    if stats.failed > KEPT {
        // The problems of the first KEPT are listed; the rest only counted.
        let keep = listed + 2 * KEPT as usize;
        if c.problems.len() > keep {
            c.problems.truncate(keep);
        }
        c.problem(format!(
            "{} more inputs did not survive (not kept)",
            stats.failed - KEPT
        ));
    }
    Ok(format!(
        "{} runs ({} refused with one line{}), seed {seed:#018x}",
        thousands(stats.runs),
        thousands(stats.refused),
        if stats.failed > 0 {
            format!(", {} not survived", thousands(stats.failed))
        } else {
            String::new()
        }
    ))
}
