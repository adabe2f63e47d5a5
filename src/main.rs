//! The `llm-attr` binary: parses the command line and runs the subcommand (see `llm_attr::cli`
//! and `llm_attr::api`).

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
    /// Run an audit (a grid of values, several targets) and print the result.
    Audit(llm_attr::cli::AuditArgs),
    /// Time every method on one request.
    Bench(llm_attr::cli::BenchArgs),
    /// Start the HTTP service.
    Serve(Box<llm_attr::api::ServeArgs>),
    /// Print the OpenAPI document (`llm-attr openapi > openapi/openapi.json`).
    Openapi,
    /// Exit 0 when a local server answers 200 on a path (container health checks; no curl needed).
    Probe(llm_attr::cli::ProbeArgs),
    /// Renders chat templates given in requests for a server (started by it; not for people).
    #[command(hide = true)]
    TemplateWorker(llm_attr::cli::TemplateWorkerArgs),
}

fn init_logs(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        logs.json().init();
    } else {
        logs.init();
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Attribute(args) => {
            init_logs(false);
            llm_attr::cli::attribute(args)
        }
        Command::Audit(args) => {
            init_logs(false);
            llm_attr::cli::audit(args)
        }
        Command::Bench(args) => {
            init_logs(false);
            llm_attr::cli::bench(args)
        }
        Command::Probe(args) => llm_attr::cli::probe(&args),
        Command::TemplateWorker(args) => llm_attr::cli::template_worker(&args),
        Command::Openapi => {
            print!("{}", llm_attr::api::openapi_json());
            Ok(())
        }
        Command::Serve(args) => {
            init_logs(args.log_json);
            if args.threads > 0 {
                // Read by candle's CPU kernels (rayon); set before any of them start.
                std::env::set_var("RAYON_NUM_THREADS", args.threads.to_string());
            }
            let config = args.config()?;
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(async move {
                    let server = llm_attr::api::Server::start(config).await?;
                    tracing::info!("serving on {}; loading the model", server.url());
                    tokio::select! {
                        r = server.ready() => r?,
                        _ = llm_attr::api::shutdown_signal() => {
                            server.shutdown().await;
                            return Ok(());
                        }
                    }
                    server.run_until(llm_attr::api::shutdown_signal()).await;
                    Ok(())
                })
        }
    }
}
