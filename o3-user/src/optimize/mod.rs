//! `o3 optimize`: the search over serving configurations (context, batch, slots), its
//! statistics, the presets chosen from it, and the journal that makes a run resumable.

pub mod artefacts;
pub mod heat;
pub mod journal;
pub mod learned;
pub mod live;
pub mod noise;
pub mod plan;
pub mod presets;
pub mod prober;
pub mod prune;
pub mod retry;
pub mod search;
pub mod sim;
pub mod stats;

#[cfg(test)]
mod tests;
