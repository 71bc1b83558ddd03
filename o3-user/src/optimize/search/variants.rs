//! Stage 1 with variants (`variants.*`): what users tune beside context and batch (KV cache
//! type, flash attention, micro-batch), compared on both axes before anything is proven at
//! depth:
//!
//! 1. **Memory**: each variant's largest context that loads, by its own context search (load
//!    probes). The first searches from the run's start; the others gallop from the first's
//!    answer scaled by the memory model's prediction for each (a variant the memory model
//!    predicts cannot load even the smallest context is not probed: said).
//! 2. **Speed**: each variant that loads, ranked at one moderate depth at the smallest of their
//!    maxima (every one loads there): prefill and decode rates, and the time of one request of
//!    that depth.
//! 3. **Winners**: the longest context (ties within the grid go to the faster) goes on through
//!    the rest of the search and is proven at depth; the fastest, where it is faster by more
//!    than `batch.min_gain`, is also proven at the presets' own contexts so presets can trade
//!    context for speed.

use serde::{Deserialize, Serialize};

use crate::backend::{FlashAttn, ProbeConfig};
use crate::config::Variants as VariantLists;
use crate::optimize::plan::{Item, Priority};
use crate::optimize::prober::{Depth, Prober, Stage};

use super::state::Search;
use super::{ContextSearch, Measured, Observer, Report};

/// Load probes a variant's context search is planned at when it gallops from a scaled answer.
const GALLOP_PROBES: u32 = 4;

/// A variant to compare: the base configuration with its settings, and what the memory model
/// predicts of it (decided at the run's start, kept in run.json).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VariantIn {
    pub base: ProbeConfig,
    /// The largest context predicted to load at the initial batch, when predicted.
    #[serde(default)]
    pub predicted: Option<u32>,
    /// Why it is not probed (predicted not to load even the smallest context).
    #[serde(default)]
    pub pruned: Option<String>,
}

/// What a variant showed.
#[derive(Debug, Clone, Serialize)]
pub struct VariantOut {
    /// `kv q8_0 · fa on · ub 256`: the settings compared.
    pub label: String,
    pub config: ProbeConfig,
    pub predicted_max: Option<u32>,
    /// The largest context that loads (its context search's answer).
    pub max_loads: Option<u32>,
    pub search_probes: u32,
    /// Context and prompt tokens of its ranking.
    pub rate_ctx: Option<u32>,
    pub rate_tokens: Option<u32>,
    pub prefill_tokens_per_s: Option<f64>,
    pub decode_tokens_per_s: Option<f64>,
    /// One request of the ranking's depth and the configured output, s (prompt ÷ prefill +
    /// output ÷ decode).
    pub request_s: Option<f64>,
    /// `longest` (proven at depth as the maximum), `fastest` (proven at the presets' contexts).
    pub roles: Vec<&'static str>,
    /// Why it was not measured, or not ranked.
    pub skipped: Option<String>,
}

/// Every combination of the lists and the builds (where more than one) over `base` (one:
/// `base` itself, when nothing is compared), builds outermost, then the lists' order.
pub fn expand(v: &VariantLists, base: &ProbeConfig, bins: &[String]) -> Vec<ProbeConfig> {
    let bins = if bins.len() > 1 { bins } else { &[] };
    let out = cross(vec![base.clone()], bins, |c, b| {
        c.server_bin = Some(b.clone());
    });
    let out = cross(out, &v.cache_types, |c, t| {
        c.cache_type_k = Some(t.clone());
        c.cache_type_v = Some(t.clone());
    });
    let out = cross(out, &v.flash_attn, |c, f| {
        c.flash_attn = match f.as_str() {
            "on" => Some(FlashAttn::On),
            "off" => Some(FlashAttn::Off),
            _ => None,
        };
    });
    let out = cross(out, &v.ubatch, |c, &u| c.ubatch = Some(u));
    cross(out, &v.gpu_layers, |c, &n| c.gpu_layers = Some(n as i32))
}

/// Each configuration of `out` with each of `items` set by `set` (`out` itself where there
/// are none).
fn cross<T>(
    out: Vec<ProbeConfig>,
    items: &[T],
    set: impl Fn(&mut ProbeConfig, &T),
) -> Vec<ProbeConfig> {
    if items.is_empty() {
        return out;
    }
    out.iter()
        .flat_map(|c| {
            items.iter().map(|x| {
                let mut c = c.clone();
                set(&mut c, x);
                c
            })
        })
        .collect()
}

/// The settings a variant run compares, in words (`kv q8_0 · fa on · ub 256`).
pub fn label(c: &ProbeConfig) -> String {
    let kv = crate::optimize::prober::kv_types(c).unwrap_or_else(|| "default".into());
    let fa = c.flash_attn.map_or("auto", FlashAttn::name);
    let ub = c.ubatch.map_or("default".into(), |u| u.to_string());
    let build = c
        .server_bin
        .as_ref()
        .map_or(String::new(), |b| format!(" · build {b}"));
    let ngl = c
        .gpu_layers
        .map_or(String::new(), |n| format!(" · ngl {n}"));
    format!("kv {kv} · fa {fa} · ub {ub}{ngl}{build}")
}

/// The suffix of a measurement's id in a variant run (`-kq8_0-faon-u256`).
pub(super) fn id_tag(c: &ProbeConfig) -> String {
    let kv = c.cache_type_k.as_deref().unwrap_or("d");
    let fa = c.flash_attn.map_or("auto", FlashAttn::name);
    let ub = c.ubatch.map_or("d".into(), |u| u.to_string());
    let build = c
        .server_bin
        .as_ref()
        .map_or(String::new(), |b| format!("-s{:08x}", fnv1a(b)));
    let ngl = c.gpu_layers.map_or(String::new(), |n| format!("-g{n}"));
    format!("-k{kv}-fa{fa}-u{ub}{ngl}{build}")
}

/// A short, stable fingerprint of a build's path (two builds' binaries often share a name).
fn fnv1a(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

impl VariantOut {
    fn of(v: &VariantIn) -> VariantOut {
        VariantOut {
            label: label(&v.base),
            config: v.base.clone(),
            predicted_max: v.predicted,
            max_loads: None,
            search_probes: 0,
            rate_ctx: None,
            rate_tokens: None,
            prefill_tokens_per_s: None,
            decode_tokens_per_s: None,
            request_s: None,
            roles: Vec::new(),
            skipped: v.pruned.clone(),
        }
    }
}

/// Where a variant's context search starts: the first measured answer scaled by the memory
/// model's predictions (their ratio corrects a capacity or overhead the model has wrong), else
/// the prediction, else the run's start.
fn start_for(first: Option<(u32, Option<u32>)>, predicted: Option<u32>, run_start: u32) -> u32 {
    match (first, predicted) {
        (Some((measured, Some(p0))), Some(p)) if p0 > 0 => {
            (u64::from(measured) * u64::from(p) / u64::from(p0)) as u32
        }
        (Some((measured, _)), _) => measured,
        (None, Some(p)) => p,
        (None, None) => run_start,
    }
}

/// The longest (largest loading context; ties go to the faster request, then the earlier) and
/// the fastest variant among those ranked; indices into `outs`.
fn winners(outs: &[VariantOut], min_gain: f64) -> (Option<usize>, Option<usize>) {
    let speed = |o: &VariantOut| o.request_s.unwrap_or(f64::INFINITY);
    let loaded: Vec<usize> = (0..outs.len())
        .filter(|&i| outs[i].max_loads.is_some())
        .collect();
    let longest = loaded.iter().copied().reduce(|a, b| {
        let (x, y) = (&outs[a], &outs[b]);
        if y.max_loads > x.max_loads || (y.max_loads == x.max_loads && speed(y) < speed(x)) {
            b
        } else {
            a
        }
    });
    let fastest = loaded
        .iter()
        .copied()
        .filter(|&i| outs[i].request_s.is_some())
        .reduce(|a, b| {
            if speed(&outs[b]) < speed(&outs[a]) {
                b
            } else {
                a
            }
        });
    let fastest = match (longest, fastest) {
        (Some(l), Some(f)) if f != l && speed(&outs[f]) < speed(&outs[l]) * (1.0 - min_gain) => {
            Some(f)
        }
        _ => None,
    };
    (longest, fastest)
}

impl<P: Prober, O: Observer + ?Sized> Search<'_, '_, P, O> {
    /// Stage 1 over the variants: each one's largest loading context, each one's rates at a
    /// moderate depth, the winners chosen; the longest's search becomes the run's. Returns its
    /// grid index (`Some(None)`: no variant loads).
    pub(super) fn compare_variants(
        &mut self,
        report: &mut Report,
        start_ctx: u32,
    ) -> Option<Option<u32>> {
        let variants = self.inp.variants.clone();
        let mut outs: Vec<VariantOut> = variants.iter().map(VariantOut::of).collect();
        let mut searches: Vec<Option<ContextSearch>> = vec![None; variants.len()];
        let mut first: Option<(u32, Option<u32>)> = None;
        for (i, v) in variants.iter().enumerate() {
            self.todo.variants.retain(|&j| j != i);
            // The floor (and a budget in floors) is planned at the longest answer still
            // possible: a variant not yet measured may load more than any measured so far.
            let horizon = self.horizon(&outs, first, i);
            self.plan_maximum(horizon);
            if let Some(why) = &v.pruned {
                self.note(format!("variant {}: not probed, {why}", outs[i].label));
                continue;
            }
            if first.is_some() && !self.admit_variant(i) {
                outs[i].skipped = Some(format!(
                    "cut by the budget: {}",
                    self.plan.cut.last().map_or("", String::as_str)
                ));
                continue;
            }
            self.base = v.base.clone();
            let start = start_for(first, v.predicted, start_ctx);
            let mut cs = report.context.clone();
            cs.start = start;
            let gallop = first.is_some() || (self.inp.gallop && self.inp.start_context.is_some());
            let k = self.find_context(&mut cs, start, gallop)?;
            outs[i].search_probes = cs.probes.len() as u32;
            outs[i].max_loads = k.map(|k| k * self.g);
            if first.is_none() {
                first = k.map(|k| (k * self.g, v.predicted));
            }
            searches[i] = Some(cs);
        }
        // The work ahead is planned at the longest context found.
        if let Some(longest) = outs.iter().filter_map(|o| o.max_loads).max() {
            self.plan_maximum(longest);
        }
        self.rank_variants(&mut outs)?;
        let (longest, fastest) = winners(&outs, self.cfg().batch.min_gain);
        let chosen = longest.map(|l| {
            outs[l].roles.push("longest");
            if let Some(f) = fastest {
                outs[f].roles.push("fastest");
                self.fast_variant =
                    Some((variants[f].base.clone(), outs[f].max_loads.unwrap_or(0)));
            }
            self.base = variants[l].base.clone();
            report.context = searches[l]
                .take()
                .expect("a variant that loads was searched");
            self.say_winners(&outs, l, fastest);
            report.context.max_passing.map(|c| c / self.g)
        });
        report.variants = outs;
        Some(chosen.flatten())
    }

    /// The longest answer still possible before variant `i` is searched: the longest measured,
    /// or a variant from `i` on (not pruned) as long as its prediction scaled by the first
    /// answer (the top of the range where it has none).
    fn horizon(&self, outs: &[VariantOut], first: Option<(u32, Option<u32>)>, i: usize) -> u32 {
        let top = self.hi_k * self.g;
        let measured = outs.iter().filter_map(|o| o.max_loads).max().unwrap_or(0);
        let ahead = self.inp.variants[i..]
            .iter()
            .filter(|v| v.pruned.is_none())
            .map(|v| match v.predicted {
                Some(p) => start_for(first, Some(p), top).min(top),
                None => top,
            })
            .max()
            .unwrap_or(0);
        measured.max(ahead).max(self.lo_k * self.g)
    }

    /// Whether the plan admits variant `i`'s context search and ranking.
    fn admit_variant(&mut self, i: usize) -> bool {
        let mut remaining = vec![self.variant_item(i)];
        remaining.extend(self.items());
        self.admit(&remaining)
    }

    /// Variant `i`'s planned work: a galloping context search and a ranking.
    pub(super) fn variant_item(&self, i: usize) -> Item {
        let c = self.cfg();
        let ctx = self.todo.max_ctx;
        let search = self
            .cost(self.search_depth(ctx), 1, 1)
            .times(f64::from(GALLOP_PROBES));
        let rank = self.cost(self.rank_depth(ctx), c.batch.rank_samples.max(1), 1);
        Item {
            what: format!(
                "variant {}: context search (about {GALLOP_PROBES} probes) and a ranking",
                label(&self.inp.variants[i].base)
            ),
            priority: Priority::Variant,
            cost: search.plus(rank),
        }
    }

    /// Each variant that loads, ranked at one moderate depth at the smallest of their maxima.
    fn rank_variants(&mut self, outs: &mut [VariantOut]) -> Option<()> {
        let loaded: Vec<usize> = (0..outs.len())
            .filter(|&i| outs[i].max_loads.is_some())
            .collect();
        let Some(ctx) = loaded.iter().filter_map(|&i| outs[i].max_loads).min() else {
            return Some(());
        };
        if loaded.len() < 2 {
            return Some(());
        }
        let depth = self.rank_depth(ctx);
        let Depth::Fresh { tokens } = depth else {
            unreachable!("a ranking is fresh")
        };
        let out_tokens = f64::from(self.cfg().prompt.output_tokens);
        for &i in &loaded {
            self.base = self.inp.variants[i].base.clone();
            let m = self.measure(
                Stage::Variant,
                self.at(ctx, self.batch0, None),
                depth,
                self.cfg().batch.rank_samples.max(1),
                1,
            )?;
            let o = &mut outs[i];
            o.rate_ctx = Some(ctx);
            o.rate_tokens = Some(tokens);
            o.prefill_tokens_per_s = prefill(&m);
            o.decode_tokens_per_s = m.output_tokens_per_s;
            o.request_s = match (o.prefill_tokens_per_s, o.decode_tokens_per_s) {
                (Some(p), Some(d)) if m.stable && p > 0.0 && d > 0.0 => {
                    Some(f64::from(tokens) / p + out_tokens / d)
                }
                _ => None,
            };
            if !m.stable {
                o.skipped = Some(format!("ranking failed: {}", Self::why_unstable(&m)));
            }
            self.configurations.push(m);
        }
        Some(())
    }

    /// The winners, in the report's notes.
    fn say_winners(&mut self, outs: &[VariantOut], longest: usize, fastest: Option<usize>) {
        let l = &outs[longest];
        let rate = |o: &VariantOut| {
            o.request_s.map_or("not ranked".into(), |s| {
                format!(
                    "{s:.1} s per request of {} tokens",
                    o.rate_tokens.unwrap_or(0)
                )
            })
        };
        self.note(format!(
            "variants: {} loads the longest context, {} ({}); it is proven at depth",
            l.label,
            l.max_loads.unwrap_or(0),
            rate(l)
        ));
        if let Some(f) = fastest {
            let f = &outs[f];
            self.note(format!(
                "variants: {} is the fastest ({}; loads up to {}); it is proven at the presets' own contexts",
                f.label,
                rate(f),
                f.max_loads.unwrap_or(0)
            ));
        }
    }

    /// The fastest variant (where it is not the longest) proven at the presets' contexts it
    /// loads, at `batch`, while the plan admits each.
    pub(super) fn prove_fastest(&mut self, contexts: &[u32], batch: Option<u32>) -> Option<()> {
        let Some((base, max)) = self.fast_variant.clone() else {
            return Some(());
        };
        let primary = std::mem::replace(&mut self.base, base);
        for &ctx in contexts.iter().filter(|&&c| c <= max) {
            self.todo.fast_contexts.retain(|&x| x != ctx);
            let mut remaining = vec![self.fast_item(ctx)];
            remaining.extend(self.items());
            if !self.admit(&remaining) {
                continue;
            }
            let m = self.validate_filled(ctx, batch)?;
            if !m.stable {
                let why = Self::why_unstable(&m);
                self.note(format!("{} failed validation: {why}", m.id));
            }
            self.configurations.push(m);
        }
        self.base = primary;
        Some(())
    }

    /// The fastest variant's proof at `ctx`, planned.
    pub(super) fn fast_item(&self, ctx: u32) -> Item {
        let label = self
            .fast_variant
            .as_ref()
            .map_or(String::new(), |(b, _)| label(b));
        Item {
            what: format!("proof of ctx {ctx} with the fastest variant ({label}), filled"),
            priority: Priority::PresetContext,
            cost: self.cost(self.filled(ctx), self.samples(), 1),
        }
    }
}

/// The median prefill rate of a measurement.
fn prefill(m: &Measured) -> Option<f64> {
    m.validation.prefill_tokens_per_s.as_ref().map(|d| d.median)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(max: Option<u32>, request_s: Option<f64>) -> VariantOut {
        let mut o = VariantOut::of(&VariantIn {
            base: ProbeConfig::default(),
            predicted: None,
            pruned: None,
        });
        o.max_loads = max;
        o.request_s = request_s;
        o
    }

    #[test]
    fn every_combination_of_the_lists_is_a_variant() {
        let lists = VariantLists {
            cache_types: vec!["f16".into(), "q8_0".into()],
            flash_attn: vec!["on".into(), "auto".into()],
            ubatch: vec![512],
            ..VariantLists::default()
        };
        let base = ProbeConfig {
            threads: Some(4),
            ..ProbeConfig::default()
        };
        let v = expand(&lists, &base, &[]);
        let labels: Vec<String> = v.iter().map(label).collect();
        assert_eq!(
            labels,
            [
                "kv f16 · fa on · ub 512",
                "kv f16 · fa auto · ub 512",
                "kv q8_0 · fa on · ub 512",
                "kv q8_0 · fa auto · ub 512"
            ]
        );
        assert!(v.iter().all(|c| c.threads == Some(4)));
        assert_eq!(v.len(), lists.count());
        // No list: the base alone; one build is no comparison.
        assert_eq!(
            expand(&VariantLists::default(), &base, &[]),
            vec![base.clone()]
        );
        let one = ["/opt/vulkan/llama-server".to_string()];
        assert_eq!(
            expand(&VariantLists::default(), &base, &one),
            vec![base.clone()]
        );
        // Builds are the outermost dimension; their ids differ where their names do not.
        let bins = one
            .iter()
            .cloned()
            .chain(["/opt/rocm/llama-server".to_string()])
            .collect::<Vec<_>>();
        let v = expand(&lists, &base, &bins);
        assert_eq!(v.len(), 8);
        assert_eq!(
            label(&v[4]),
            "kv f16 · fa on · ub 512 · build /opt/rocm/llama-server"
        );
        assert_ne!(id_tag(&v[0]), id_tag(&v[4]));
        assert!(id_tag(&v[0]).starts_with("-kf16-faon-u512-s"));
    }

    #[test]
    fn the_longest_wins_ties_go_to_the_faster_and_the_fastest_must_gain() {
        let outs = [
            out(Some(8192), Some(10.0)),
            out(Some(16384), Some(12.0)),
            out(Some(16384), Some(11.0)),
            out(None, None),
        ];
        assert_eq!(winners(&outs, 0.05), (Some(2), Some(0)));
        // The fastest is not proven apart when it gains less than min_gain.
        let close = [out(Some(8192), Some(10.8)), out(Some(16384), Some(11.0))];
        assert_eq!(winners(&close, 0.05), (Some(1), None));
        // Nothing loads: no winner.
        assert_eq!(winners(&[out(None, None)], 0.05), (None, None));
    }

    #[test]
    fn a_variant_starts_from_the_first_answer_scaled_by_the_predictions() {
        // The memory model said 10000 and 20000; the first measured 8192: the second starts at
        // twice that.
        assert_eq!(
            start_for(Some((8192, Some(10_000))), Some(20_000), 4096),
            16_384
        );
        assert_eq!(start_for(Some((8192, None)), Some(20_000), 4096), 8192);
        assert_eq!(start_for(None, Some(20_000), 4096), 20_000);
        assert_eq!(start_for(None, None, 4096), 4096);
    }
}
