//! `llm-attr attribute`, `llm-attr audit` and `llm-attr bench`.

use std::io::{IsTerminal, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context;

use crate::audit::export::{self, Format};
use crate::audit::AuditRequest;
use crate::engine::served::Served;
use crate::engine::{CancelToken, Engine, EngineConfig};
use crate::input::chat::sandbox::Sandbox;
use crate::model::{DeviceArgs, Model};
use crate::request::{AttributeRequest, Method};
use crate::run::{run, Limits, Progress};
use crate::scorer::remote::args::RemoteArgs;
use crate::scorer::remote::{is_remote, RemoteModel};
use crate::scorer::Scorer;

/// The limits of a run from the command line: the defaults, and the request's own
/// `chat_template` renders in a worker process as on the server (the user is its operator).
fn local_limits() -> Limits {
    Limits {
        request_templates: Sandbox::current_exe().ok().map(Arc::new),
        ..Limits::default()
    }
}

/// `llm-attr template-worker`: renders chat templates given in requests for a server (see
/// [`crate::input::chat::sandbox`]); not for people.
#[derive(Debug, clap::Args)]
pub struct TemplateWorkerArgs {
    /// Memory cap of the worker process, in bytes.
    #[arg(long)]
    pub memory_bytes: usize,
    /// Largest rendered template the worker returns, in bytes.
    #[arg(long)]
    pub output_bytes: usize,
}

/// `llm-attr template-worker`: renders templates from stdin until the server closes it.
pub fn template_worker(args: &TemplateWorkerArgs) -> anyhow::Result<()> {
    crate::input::chat::sandbox::serve_worker(args.memory_bytes, args.output_bytes)?;
    Ok(())
}

/// `llm-attr attribute --model SPEC --request FILE`
#[derive(Debug, clap::Args)]
pub struct AttributeArgs {
    /// Model spec: hf:ORG/NAME[@REV], a directory, a .gguf file, or the http(s):// URL of an
    /// inference server (see the --remote-* flags).
    #[arg(long, env = "LLM_ATTR_MODEL", default_value = "hf:distilbert/distilgpt2")]
    pub model: String,
    /// Request JSON file, or - for stdin.
    #[arg(long)]
    pub request: String,
    /// Where the model runs and in which data type (`--device`, `--dtype`, `--gradient-passes`).
    #[command(flatten)]
    /// How to reach a model served by an inference server (with `--model http(s)://...`).
    pub remote: RemoteArgs,
    #[command(flatten)]
    /// Where the model runs, and in which dtype.
    pub device: DeviceArgs,
}

/// `llm-attr audit --model SPEC --request FILE [--format json|jsonl|csv]`
#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// Model spec: hf:ORG/NAME[@REV], a directory, a .gguf file, or the http(s):// URL of an
    /// inference server (see the --remote-* flags).
    #[arg(long, env = "LLM_ATTR_MODEL", default_value = "hf:distilbert/distilgpt2")]
    pub model: String,
    /// Audit request JSON file, or - for stdin.
    #[arg(long)]
    pub request: String,
    /// json: the whole result; jsonl: one cell a line; csv: one cell and target a row.
    #[arg(long, value_enum, default_value = "json")]
    pub format: Format,
    /// Where the model runs and in which data type (`--device`, `--dtype`, `--gradient-passes`).
    #[command(flatten)]
    /// How to reach a model served by an inference server (with `--model http(s)://...`).
    pub remote: RemoteArgs,
    #[command(flatten)]
    /// Where the model runs, and in which dtype.
    pub device: DeviceArgs,
}

/// `llm-attr bench --model SPEC --request FILE`
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Model spec: hf:ORG/NAME[@REV], a directory, a .gguf file, or the http(s):// URL of an
    /// inference server (see the --remote-* flags).
    #[arg(long, env = "LLM_ATTR_MODEL", default_value = "hf:distilbert/distilgpt2")]
    pub model: String,
    /// Request JSON file, or - for stdin. Its `method` is replaced by each benchmarked method.
    #[arg(long)]
    pub request: String,
    /// Runs per method; the median time is reported.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Methods to time (comma-separated; Captum's short names work).
    #[arg(long, default_value = "fa,sv,svs,lime,kernel")]
    pub methods: String,
    /// Where the model runs and in which data type (`--device`, `--dtype`, `--gradient-passes`).
    #[command(flatten)]
    /// How to reach a model served by an inference server (with `--model http(s)://...`).
    pub remote: RemoteArgs,
    #[command(flatten)]
    /// Where the model runs, and in which dtype.
    pub device: DeviceArgs,
}

/// `llm-attr probe`: the container health check.
#[derive(Debug, clap::Args)]
pub struct ProbeArgs {
    /// Port to dial. Default: that of the running `llm-attr serve` (its flags and
    /// environment), else LLM_ATTR_PORT, else 8080.
    #[arg(long)]
    pub port: Option<u16>,
    /// Address to dial. Default: that `serve` listens on (loopback when it listens on all
    /// addresses), else LLM_ATTR_HOST, else 127.0.0.1.
    #[arg(long)]
    pub host: Option<std::net::IpAddr>,
    /// Path to request; the probe succeeds when it answers 200.
    #[arg(long, default_value = "/ready")]
    pub path: String,
    /// Seconds to wait for the answer.
    #[arg(long, default_value_t = 3)]
    pub timeout: u64,
}

/// One HTTP/1.0 GET; Ok when the status is 200.
pub fn probe(args: &ProbeArgs) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let addr = probe_addr(args, running_serve().as_deref());
    let t = std::time::Duration::from_secs(args.timeout.max(1));
    let mut s = std::net::TcpStream::connect_timeout(&addr, t).with_context(|| format!("dialing {addr}"))?;
    s.set_read_timeout(Some(t))?;
    s.set_write_timeout(Some(t))?;
    write!(s, "GET {} HTTP/1.0\r\nHost: {addr}\r\n\r\n", args.path)?;
    let mut head = [0u8; 64];
    let n = s.read(&mut head)?;
    let line = String::from_utf8_lossy(&head[..n]);
    let status = line.split_whitespace().nth(1).unwrap_or("");
    anyhow::ensure!(status == "200", "{} answered {status:?}", args.path);
    Ok(())
}

/// Where to dial: the probe's flags, else the settings of the `serve` command line given
/// (flags, then this process's environment, as `serve` reads them), else the defaults. An
/// unspecified listen address (0.0.0.0, ::) is dialled on loopback.
pub(crate) fn probe_addr(args: &ProbeArgs, serve_argv: Option<&[String]>) -> std::net::SocketAddr {
    use clap::{Args, FromArgMatches};
    let serve = serve_argv.and_then(|argv| {
        let cmd = crate::api::ServeArgs::augment_args(clap::Command::new("serve"));
        let m = cmd.try_get_matches_from(argv).ok()?;
        crate::api::ServeArgs::from_arg_matches(&m).ok()
    });
    fn env<T: std::str::FromStr>(k: &str) -> Option<T> {
        std::env::var(k).ok().and_then(|v| v.trim().parse().ok())
    }
    let host = args
        .host
        .or(serve.as_ref().map(|s| s.host))
        .or_else(|| env("LLM_ATTR_HOST"))
        .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]));
    let port = args
        .port
        .or(serve.as_ref().map(|s| s.port))
        .or_else(|| env("LLM_ATTR_PORT"))
        .unwrap_or(8080);
    let host = match host {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => std::net::IpAddr::from([127, 0, 0, 1]),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => {
            std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST)
        }
        h => h,
    };
    std::net::SocketAddr::new(host, port)
}

/// The arguments after `serve` of a running `llm-attr serve` (Linux `/proc`), led by `serve`.
fn running_serve() -> Option<Vec<String>> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let raw = std::fs::read(e.path().join("cmdline")).ok()?;
        let argv: Vec<String> = raw
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let exe = std::path::Path::new(argv.first()?).file_name()?.to_str()?;
        (exe == "llm-attr" && argv.get(1).map(String::as_str) == Some("serve"))
            .then(|| argv[1..].iter().filter(|a| !a.is_empty()).cloned().collect())
    })
}

/// Reads a request from a file or `-` (stdin).
pub fn read_request(path: &str) -> anyhow::Result<AttributeRequest> {
    read_json(path)
}

/// Reads JSON from a file or `-` (stdin).
pub fn read_json<T: serde::de::DeserializeOwned>(path: &str) -> anyhow::Result<T> {
    let text = if path == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading the request from stdin")?;
        s
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?
    };
    serde_json::from_str(&text).with_context(|| format!("the request in {path} is not valid"))
}

fn load(spec: &str, device: &DeviceArgs) -> anyhow::Result<std::sync::Arc<Model>> {
    let options = device.load_options()?;
    let t = Instant::now();
    let model = Model::load(spec, &options).with_context(|| format!("loading model {spec}"))?;
    tracing::info!(
        spec,
        device = crate::model::device::name(&options.device),
        dtype = options.dtype().as_str(),
        seconds = t.elapsed().as_secs_f64(),
        "model loaded"
    );
    Ok(model)
}

/// The model `spec` names: loaded here, or (a URL) reached on its inference server.
fn load_served(spec: &str, remote: &RemoteArgs, device: &DeviceArgs) -> anyhow::Result<Arc<Served>> {
    if !is_remote(spec) {
        return Ok(Arc::new(Served::Local(load(spec, device)?)));
    }
    let settings = remote.settings(spec)?;
    let until = std::time::Instant::now() + settings.timeout;
    let model = RemoteModel::connect_patiently(&settings, Some(until))
        .with_context(|| format!("reaching the inference server {spec}"))?;
    Ok(Arc::new(Served::Remote(Box::new(model))))
}

fn log_progress(p: Progress) {
    tracing::debug!(done = p.done, total = p.total, "scored");
}

/// `llm-attr attribute`: runs one request and prints the response JSON (warnings also on stderr).
pub fn attribute(args: AttributeArgs) -> anyhow::Result<()> {
    let request = read_request(&args.request)?;
    let model = load_served(&args.model, &args.remote, &args.device)?;
    let response = run(&request, model.as_ref(), &local_limits(), &log_progress)?;
    println!("{}", serde_json::to_string_pretty(&response)?);
    for w in &response.warnings {
        eprintln!("warning: {}", w.message);
    }
    Ok(())
}

/// A one-line progress bar on stderr, drawn only when stderr is a terminal.
struct ProgressBar {
    on: bool,
    /// Last drawn (done, total), to redraw only on change.
    last: Mutex<(usize, usize)>,
}

impl ProgressBar {
    const WIDTH: usize = 30;

    fn stderr() -> Self {
        ProgressBar {
            on: std::io::stderr().is_terminal(),
            last: Mutex::new((usize::MAX, 0)),
        }
    }

    fn show(&self, p: Progress) {
        if !self.on || p.total == 0 {
            return;
        }
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if *last == (p.done, p.total) {
            return;
        }
        *last = (p.done, p.total);
        let filled = p.done.min(p.total) * Self::WIDTH / p.total;
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r[{}{}] {}/{} sequences",
            "#".repeat(filled),
            " ".repeat(Self::WIDTH - filled),
            p.done,
            p.total
        );
        let _ = err.flush();
    }

    fn finish(&self) {
        if self.on && self.last.lock().map(|l| l.0 != usize::MAX).unwrap_or(false) {
            eprintln!();
        }
    }
}

/// Runs an audit through the engine (batches across cells, progress as they finish) and
/// prints the result.
pub fn audit(args: AuditArgs) -> anyhow::Result<()> {
    let request: AuditRequest = read_json(&args.request)?;
    let model = load_served(&args.model, &args.remote, &args.device)?;
    let tuned = model
        .local()
        .map_or_else(EngineConfig::default, |m| EngineConfig::for_device(m.device()));
    let engine = Engine::new(model.clone(), model.engine_config(tuned))?;
    let scorer = engine.handle(CancelToken::new());
    let bar = ProgressBar::stderr();
    let result = crate::audit::run(&request, &scorer, &local_limits(), &|p| bar.show(p));
    bar.finish();
    print!("{}", export::render(&result?, args.format)?);
    Ok(())
}

fn parse_method(name: &str) -> anyhow::Result<Method> {
    serde_json::from_value(serde_json::Value::String(name.trim().to_string()))
        .with_context(|| format!("unknown method {name:?}"))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// One line of the bench table.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchRow {
    /// The method timed.
    pub method: Method,
    /// How its baselines were used: exact or sample.
    pub baseline_sampling: crate::request::BaselineSampling,
    /// Coalition evaluations of one run.
    pub evaluations: usize,
    /// Distinct sequences one run scored.
    pub unique_sequences: usize,
    /// Tokens one run fed to the model.
    pub tokens_scored: usize,
    /// Median wall-clock seconds over the repeats.
    pub median_seconds: f64,
    /// Wall-clock seconds of the fastest repeat.
    pub min_seconds: f64,
}

/// Times every method on `request` (its `method` replaced), `repeats` runs each.
pub fn bench_rows(
    scorer: &dyn Scorer,
    request: &AttributeRequest,
    methods: &[Method],
    repeats: usize,
) -> anyhow::Result<Vec<BenchRow>> {
    let limits = local_limits();
    let mut rows = Vec::new();
    for &method in methods {
        let mut req = request.clone();
        req.method = method;
        let mut times = Vec::new();
        let mut last = None;
        for _ in 0..repeats.max(1) {
            let t = Instant::now();
            let r = run(&req, scorer, &limits, &log_progress)?;
            times.push(t.elapsed().as_secs_f64());
            last = Some(r);
        }
        let r = last.context("no run")?;
        rows.push(BenchRow {
            method,
            baseline_sampling: r.baseline_sampling,
            evaluations: r.stats.evaluations,
            unique_sequences: r.stats.unique_sequences,
            tokens_scored: r.stats.tokens_scored,
            min_seconds: times.iter().copied().fold(f64::INFINITY, f64::min),
            median_seconds: median(times),
        });
    }
    Ok(rows)
}

fn name<T: serde::Serialize>(v: T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The bench table as text.
pub fn bench_table(rows: &[BenchRow]) -> String {
    let mut out = format!(
        "{:<24} {:>11} {:>8} {:>8} {:>9} {:>10} {:>10}\n",
        "method", "evaluations", "unique", "tokens", "sampling", "median_s", "min_s"
    );
    for r in rows {
        out += &format!(
            "{:<24} {:>11} {:>8} {:>8} {:>9} {:>10.3} {:>10.3}\n",
            name(r.method),
            r.evaluations,
            r.unique_sequences,
            r.tokens_scored,
            name(r.baseline_sampling),
            r.median_seconds,
            r.min_seconds
        );
    }
    out
}

/// Parses `fa,sv,...` (full or Captum short names).
pub fn parse_methods(list: &str) -> anyhow::Result<Vec<Method>> {
    list.split(',').map(parse_method).collect()
}

/// `llm-attr bench`: times each method on the request and prints the table.
pub fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let request = read_request(&args.request)?;
    let methods = parse_methods(&args.methods)?;
    let model = load_served(&args.model, &args.remote, &args.device)?;
    let rows = bench_rows(model.as_ref(), &request, &methods, args.repeats)?;
    print!("{}", bench_table(&rows));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_parse_with_captum_short_names() {
        let all = parse_methods("fa, sv,svs,lime,kernel").unwrap();
        assert_eq!(
            all,
            [
                Method::FeatureAblation,
                Method::ShapleyValues,
                Method::ShapleyValueSampling,
                Method::Lime,
                Method::KernelShap
            ]
        );
        assert!(parse_methods("fa,shap").is_err());
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn probe_follows_the_serve_settings() {
        let args = |port, host| ProbeArgs {
            port,
            host,
            path: "/ready".into(),
            timeout: 1,
        };
        let argv = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let serve = argv(&["serve", "--port", "9123", "--host", "0.0.0.0"]);
        assert_eq!(
            probe_addr(&args(None, None), Some(&serve)).to_string(),
            "127.0.0.1:9123"
        );
        let serve = argv(&["serve", "--host=10.1.2.3", "--port=81"]);
        assert_eq!(
            probe_addr(&args(None, None), Some(&serve)).to_string(),
            "10.1.2.3:81"
        );
        let serve = argv(&["serve", "--host", "::", "--port", "82"]);
        assert_eq!(
            probe_addr(&args(None, None), Some(&serve)).to_string(),
            "[::1]:82"
        );
        let own = args(Some(7), Some("127.0.0.2".parse().unwrap()));
        assert_eq!(probe_addr(&own, Some(&serve)).to_string(), "127.0.0.2:7");
    }

    #[test]
    fn example_requests_parse() {
        for f in [
            "examples/t1.json",
            "examples/t1_sample.json",
            "examples/t1_single.json",
            "examples/t1_chat.json",
        ] {
            let r = read_request(f).unwrap();
            assert!(r.template.is_some() != r.messages.is_some(), "{f}");
        }
        let audit: AuditRequest = read_json("examples/audit.json").unwrap();
        assert_eq!(audit.targets, [" hire", " reject"]);
    }
}
