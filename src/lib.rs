//! llm-attr: Captum-style attribution for language models, as an HTTP service.
//!
//! Data flows one way: `api` (requests) -> `input` (features, coalitions) -> `attribution`
//! (methods, token-free) -> `engine` (queue, batches, workers) -> `model` (candle, tokenizer).
//! `run` ties one request together: it checks it against the method's facts
//! (`Method::facts`), and its evaluator turns the methods' coalitions into prompts and scores
//! them through a [`scorer::Scorer`], which gives the tokenizer and model info but never the
//! model itself.

pub(crate) mod alloc;
pub mod api;
pub(crate) mod attribution;
pub mod audit;
pub mod cli;
pub mod engine;
pub mod error;
pub mod input;
pub mod model;
pub mod request;
pub mod run;
pub(crate) mod score_cache;
pub mod scorer;

/// ContextCite's masks and Lasso weights, for checks against the `context-cite` package.
pub use attribution::{context_cite_masks, context_cite_weights};
/// The permutations or coalitions a sampling method draws for a seed, for checks against an
/// independent implementation given the same design.
pub use attribution::{sampling_design, SamplingDesign};
pub use error::{Error, Result};

/// mimalloc serves every binary that links this crate (the server, tests, benches). Forward
/// and backward passes allocate and free tensors of megabytes by the thousand; glibc's malloc
/// hands those back to the kernel and takes them again page by page, which cost a quarter
/// of a gradient run's time in page faults and zeroing. [`alloc::Capped`] adds the cap that the
/// chat-template worker runs under.
#[global_allocator]
static ALLOCATOR: alloc::Capped = alloc::Capped;
