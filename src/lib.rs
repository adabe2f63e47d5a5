//! llm-attr: Captum-style attribution for language models, as an HTTP service.
//!
//! Data flows one way: `api` (requests) -> `input` (features, coalitions) -> `attribution`
//! (methods) -> `engine` (queue, batches, workers) -> `model` (candle, tokenizer).

pub mod api;
pub mod attribution;
pub mod cache;
pub mod cli;
pub mod engine;
pub mod error;
pub mod input;
pub mod model;
pub mod request;
pub mod run;
pub mod scorer;

pub use error::{Error, Result};
