use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "llm-attr",
    version,
    about = "Attribution for language models, as an HTTP service"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one attribute request and print the response JSON.
    Attribute(llm_attr::cli::AttributeArgs),
    /// Time every method on one request.
    Bench(llm_attr::cli::BenchArgs),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Attribute(args) => llm_attr::cli::attribute(args),
        Command::Bench(args) => llm_attr::cli::bench(args),
    }
}
