//! GPT-2 (gpt2, distilgpt2).
