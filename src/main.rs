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
    Probe(ProbeArgs),
}

#[derive(clap::Args)]
struct ProbeArgs {
    #[arg(long, env = "LLM_ATTR_PORT", default_value_t = 8080)]
    port: u16,
    #[arg(long, default_value = "/ready")]
    path: String,
    /// Seconds to wait for the answer.
    #[arg(long, default_value_t = 3)]
    timeout: u64,
}

/// One HTTP/1.0 GET on 127.0.0.1; Ok when the status is 200.
fn probe(args: &ProbeArgs) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let t = std::time::Duration::from_secs(args.timeout.max(1));
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], args.port));
    let mut s = std::net::TcpStream::connect_timeout(&addr, t)?;
    s.set_read_timeout(Some(t))?;
    s.set_write_timeout(Some(t))?;
    write!(s, "GET {} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", args.path)?;
    let mut head = [0u8; 64];
    let n = s.read(&mut head)?;
    let line = String::from_utf8_lossy(&head[..n]);
    let status = line.split_whitespace().nth(1).unwrap_or("");
    anyhow::ensure!(status == "200", "{} answered {status:?}", args.path);
    Ok(())
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
        Command::Probe(args) => probe(&args),
        Command::Openapi => {
            print!("{}", llm_attr::api::openapi::openapi_json());
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
