//! Llama (SmolLM2).
