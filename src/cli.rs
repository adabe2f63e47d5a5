//! `llm-attr attribute` and `llm-attr bench`.

/// `llm-attr attribute --model SPEC --request FILE`
#[derive(Debug, clap::Args)]
pub struct AttributeArgs {
    /// Model spec: hf:ORG/NAME[@REV], a directory, or a .gguf file.
    #[arg(long, env = "LLM_ATTR_MODEL", default_value = "hf:distilbert/distilgpt2")]
    pub model: String,
    /// Request JSON file, or - for stdin.
    #[arg(long)]
    pub request: String,
}

/// `llm-attr bench --model SPEC --request FILE`
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[arg(long, env = "LLM_ATTR_MODEL", default_value = "hf:distilbert/distilgpt2")]
    pub model: String,
    #[arg(long)]
    pub request: String,
}

pub fn attribute(args: AttributeArgs) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet: {args:?}")
}

pub fn bench(args: BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet: {args:?}")
}
