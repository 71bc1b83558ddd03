//! `o3 optimize`: the search over serving configurations (context, batch, slots), its
//! statistics, the presets chosen from it, and the journal that makes a run resumable; `run`
//! takes one run from its request to its outputs.

pub mod artefacts;
pub mod heat;
pub mod journal;
pub mod learned;
pub mod live;
pub mod noise;
pub mod plan;
pub mod preflight;
pub mod presets;
pub mod prober;
pub mod progress;
pub mod prune;
pub mod retry;
pub mod run;
pub mod search;
pub mod sim;
pub mod stats;
pub mod target;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod variant_tests;
