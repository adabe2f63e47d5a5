//! llm-attr: Captum-style attribution for language models, as an HTTP service.
//!
//! Data flows one way: `api` (requests) -> `input` (features, coalitions) -> `attribution`
//! (methods, token-free) -> `engine` (queue, batches, workers) -> `model` (candle, tokenizer).
//! `run` ties one request together: it checks it against the method's facts
//! (`Method::facts`), and its evaluator turns the methods' coalitions into prompts and scores
//! them through a [`scorer::Scorer`], which gives the tokenizer and model info but never the
//! model itself.

pub mod api;
pub mod attribution;
pub mod audit;
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
