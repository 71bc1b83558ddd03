//! Learning from past runs: model files, results store, memory model, predictor.

pub mod gguf;
