//! Prompts of an exact token count. Text is made of common words after a fresh random tag (so
//! no two prompts share a cacheable prefix unless made to); its length is found with the
//! server's own tokenizer where it has one, else from a words-per-token ratio calibrated once
//! against the server's reported prompt token count. A prompt that reuses a filled prefix is
//! that prefix, a newline, and a fresh suffix fitted so the whole has the target length.

/// Words the filler draws from (short, common, mostly one token each in BPE/SPM vocabularies).
const WORDS: &[&str] = &[
    "the", "model", "reads", "a", "long", "report", "about", "memory", "and", "time", "while",
    "each", "server", "answers", "with", "care", "so", "that", "we", "can", "measure", "how",
    "fast", "it", "runs", "under", "load", "on", "this", "machine", "today", "river", "stone",
    "light", "green", "paper", "window", "number", "simple", "table", "quiet", "north", "west",
];

/// A small deterministic generator (xorshift64*), so prompts are reproducible per seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// `n` filler words after a random prefix tag, e.g. `[q7f3a9c21] the model reads ...`.
pub fn words(rng: &mut Rng, n: usize) -> String {
    let mut s = format!("[q{:08x}]", rng.next_u64() as u32);
    for _ in 0..n {
        s.push(' ');
        s.push_str(WORDS[(rng.next_u64() % WORDS.len() as u64) as usize]);
    }
    s
}

/// Finds the number of words whose text has at most `target` tokens (and as close as the
/// tokenizer allows), counting with `count`. Converges in a few calls: the first guess uses
/// `tokens_per_word`, the next ones correct proportionally, the last steps walk by one word.
pub fn fit<F: FnMut(&str) -> Option<usize>>(
    seed: u64,
    target: usize,
    tokens_per_word: f64,
    mut count: F,
) -> Option<(String, usize)> {
    let make = |n: usize| words(&mut Rng::new(seed), n);
    let mut n = ((target as f64 / tokens_per_word.max(0.1)) as usize).max(1);
    let mut best: Option<(String, usize)> = None;
    for _ in 0..12 {
        let text = make(n);
        let c = count(&text)?;
        if c <= target && best.as_ref().is_none_or(|b| c > b.1) {
            best = Some((text, c));
        }
        if c == target {
            break;
        }
        let ratio = c as f64 / n as f64;
        let next = if c > target {
            ((target as f64 / ratio) as usize).min(n - 1)
        } else {
            ((target as f64 / ratio) as usize).max(n + 1)
        };
        if next == n || next == 0 {
            break;
        }
        // Close to the target, walk one word at a time.
        n = if next.abs_diff(n) <= 2 {
            if c > target {
                n - 1
            } else {
                n + 1
            }
        } else {
            next
        };
    }
    best
}

/// A fresh suffix after `prefix` (of `prefix_tokens` tokens) such that `prefix\nsuffix` has
/// at most `target` tokens, as close as the tokenizer allows: the whole text and its count.
pub fn fit_suffix<F: FnMut(&str) -> Option<usize>>(
    prefix: &str,
    prefix_tokens: usize,
    seed: u64,
    target: usize,
    mut count: F,
) -> Option<(String, usize)> {
    let want = target.checked_sub(prefix_tokens)?.max(1);
    let (suffix, _) = fit(seed, want, 1.0, |t: &str| {
        count(&format!("{prefix}\n{t}")).map(|c| c.saturating_sub(prefix_tokens))
    })?;
    let text = format!("{prefix}\n{suffix}");
    let n = count(&text)?;
    Some((text, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_differ_by_seed_and_are_reproducible() {
        let a = words(&mut Rng::new(1), 20);
        let b = words(&mut Rng::new(2), 20);
        assert_ne!(a[..11], b[..11], "fresh prefix per seed");
        assert_eq!(a, words(&mut Rng::new(1), 20));
        assert_eq!(a.split(' ').count(), 21);
    }

    #[test]
    fn fit_hits_the_target_with_a_word_tokenizer() {
        // A tokenizer where the prefix is 5 tokens and each word 1.5 tokens (rounded down).
        let count = |t: &str| {
            let w = t.split(' ').count() - 1;
            Some(5 + w * 3 / 2)
        };
        let (text, n) = fit(9, 1000, 1.0, count).unwrap();
        assert!((999..=1000).contains(&n), "{n}");
        assert_eq!(count(&text), Some(n));
    }

    #[test]
    fn fit_never_exceeds_the_target() {
        let mut calls = 0;
        let (_, n) = fit(3, 50, 4.0, |t: &str| {
            calls += 1;
            Some(t.len() / 3)
        })
        .unwrap();
        assert!((48..=50).contains(&n), "{n}");
        assert!(calls <= 12);
        assert!(fit(3, 50, 1.0, |_: &str| None).is_none());
    }

    #[test]
    fn a_suffix_completes_a_prefix_to_the_target() {
        let count = |t: &str| Some(t.split_whitespace().count());
        let (prefix, p) = fit(4, 900, 1.0, count).unwrap();
        let (a, n) = fit_suffix(&prefix, p, 5, 1000, count).unwrap();
        let (b, m) = fit_suffix(&prefix, p, 6, 1000, count).unwrap();
        assert!(
            (995..=1000).contains(&n) && (995..=1000).contains(&m),
            "{n} {m}"
        );
        assert!(a.starts_with(&prefix) && b.starts_with(&prefix));
        assert_ne!(a, b, "a fresh suffix per seed");
        assert!(
            fit_suffix(&prefix, p, 5, 10, count).is_none(),
            "prefix over target"
        );
    }
}
