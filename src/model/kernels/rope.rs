//! How RoPE pairs the dimensions of a head (the kernels rotate either way).

/// How RoPE pairs the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RopeStyle {
    /// Dimension i with i + head_dim/2 (Hugging Face's `rotate_half`).
    Half,
    /// Dimensions 2i and 2i+1: GGUF Llama files store Q and K permuted for this.
    Interleaved,
}
