//! How far a request has got; the evaluator reports it, `run` passes it on to its caller.

/// Work done so far, in sequences scored out of the total the request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Progress {
    /// Sequences scored so far.
    pub done: usize,
    /// Sequences the request needs in all.
    pub total: usize,
}
