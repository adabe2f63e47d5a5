//! Chat templates given in a request render in a worker process of their own, never in the
//! server: a template is a program, and minijinja's fuel bounds its steps but not the size of the
//! strings it builds (`{% set s.v = s.v ~ s.v %}` 64 times, `indent(10**9)`, `tojson(indent=…)`).
//!
//! The worker is this same binary (`llm-attr template-worker`), which caps the memory it may hold
//! ([`crate::alloc::set_cap`]) and the text one render may write. A template that needs more
//! memory aborts the worker; one that runs too long is killed; either way the server answers a
//! clear error naming `chat_template`, starts a fresh worker for the next request, and its own
//! memory never grows. Workers are kept and reused, one request at a time each: a render costs a
//! round trip over a pipe, not a process start.
//!
//! The protocol is one JSON line each way: a [`Job`] in, a [`Reply`] out.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::jinja::{self, RenderError};

/// What one render may use.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SandboxLimits {
    /// Bytes the worker process may hold while it renders (its code and stack aside).
    pub memory_bytes: usize,
    /// Bytes of text one render may write.
    pub output_bytes: usize,
    /// Wall time of one render, the round trip included.
    pub timeout: Duration,
}

impl Default for SandboxLimits {
    fn default() -> Self {
        SandboxLimits {
            memory_bytes: 64 << 20,
            output_bytes: 4 << 20,
            timeout: Duration::from_secs(2),
        }
    }
}

/// Idle workers kept for reuse.
const KEEP_IDLE: usize = 4;

/// Renders templates in worker processes; see the module doc.
pub struct Sandbox {
    exe: PathBuf,
    limits: SandboxLimits,
    idle: Mutex<Vec<Worker>>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("exe", &self.exe)
            .field("limits", &self.limits)
            .finish()
    }
}

/// One render asked of a worker.
#[derive(Serialize, Deserialize)]
struct Job {
    source: String,
    context: serde_json::Value,
}

/// A worker's answer.
#[derive(Serialize, Deserialize)]
enum Reply {
    Rendered(String),
    Failed(RenderError),
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
    /// Lent to the thread that reads a reply, and given back with it.
    stdout: Option<BufReader<ChildStdout>>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        // An idle worker ends when its stdin closes; a busy one is killed.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sandbox {
    /// Workers run `exe template-worker`; `exe` must be the `llm-attr` binary.
    pub fn new(exe: impl Into<PathBuf>, limits: SandboxLimits) -> Self {
        Sandbox {
            exe: exe.into(),
            limits,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// The sandbox of the running `llm-attr` binary, with the default limits.
    pub(crate) fn current_exe() -> std::io::Result<Self> {
        Ok(Sandbox::new(std::env::current_exe()?, SandboxLimits::default()))
    }

    /// Renders `source` with `context` in a worker.
    pub fn render(&self, source: &str, context: impl Serialize) -> Result<String, RenderError> {
        let context = serde_json::to_value(context).map_err(|e| RenderError::Failed(e.to_string()))?;
        let mut line = serde_json::to_string(&Job {
            source: source.to_string(),
            context,
        })
        .map_err(|e| RenderError::Failed(e.to_string()))?;
        line.push('\n');
        let worker = self.worker()?;
        let (worker, reply) = self.ask(worker, &line)?;
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < KEEP_IDLE {
                idle.push(worker);
            }
        }
        match reply {
            Reply::Rendered(text) => Ok(text),
            Reply::Failed(e) => Err(e),
        }
    }

    /// An idle worker, or a new one.
    fn worker(&self) -> Result<Worker, RenderError> {
        if let Some(w) = self.idle.lock().ok().and_then(|mut idle| idle.pop()) {
            return Ok(w);
        }
        let mut child = Command::new(&self.exe)
            .arg("template-worker")
            .arg("--memory-bytes")
            .arg(self.limits.memory_bytes.to_string())
            .arg("--output-bytes")
            .arg(self.limits.output_bytes.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| unavailable(&format!("cannot start {}: {e}", self.exe.display())))?;
        match (child.stdin.take(), child.stdout.take()) {
            (Some(stdin), Some(stdout)) => Ok(Worker {
                child,
                stdin,
                stdout: Some(BufReader::new(stdout)),
            }),
            _ => Err(unavailable("the worker has no pipes")),
        }
    }

    /// Sends `line` to `worker` and reads its reply within the time limit. A worker that dies
    /// or runs out of time is dropped (and so killed).
    fn ask(&self, mut worker: Worker, line: &str) -> Result<(Worker, Reply), RenderError> {
        if send(&mut worker, line).is_err() {
            // An idle worker that died meanwhile: one fresh try.
            worker = self.spawn_fresh()?;
            send(&mut worker, line).map_err(|e| unavailable(&e.to_string()))?;
        }
        let Some(mut stdout) = worker.stdout.take() else {
            return Err(unavailable("the worker's output is gone"));
        };
        // Read on a thread of its own, so that a stuck worker can be timed out.
        let (tx, rx) = mpsc::channel();
        let max_line = (self.limits.output_bytes as u64).saturating_mul(7) + 4096;
        std::thread::spawn(move || {
            let mut reply = String::new();
            let read = (&mut stdout).take(max_line).read_line(&mut reply);
            let _ = tx.send((stdout, read.map(|_| reply)));
        });
        let limits = self.limits;
        match rx.recv_timeout(limits.timeout) {
            Ok((stdout, Ok(reply))) if reply.ends_with('\n') => {
                worker.stdout = Some(stdout);
                let reply = serde_json::from_str(&reply)
                    .map_err(|e| unavailable(&format!("unreadable reply: {e}")))?;
                Ok((worker, reply))
            }
            // The worker ended without a whole reply: the allocator's cap aborted it.
            Ok(_) => Err(RenderError::Limit(format!(
                "needs more than {} MB of memory to render",
                limits.memory_bytes >> 20
            ))),
            Err(_) => Err(RenderError::Limit(format!(
                "takes more than {} s to render",
                limits.timeout.as_secs_f64()
            ))),
        }
    }

    fn spawn_fresh(&self) -> Result<Worker, RenderError> {
        if let Ok(mut idle) = self.idle.lock() {
            idle.clear();
        }
        self.worker()
    }
}

fn send(worker: &mut Worker, line: &str) -> std::io::Result<()> {
    worker.stdin.write_all(line.as_bytes())?;
    worker.stdin.flush()
}

fn unavailable(why: &str) -> RenderError {
    RenderError::Failed(format!("the template worker is unavailable: {why}"))
}

/// The worker's side (`llm-attr template-worker`): caps this process's memory, then renders one
/// [`Job`] per line of stdin, answering one [`Reply`] per line of stdout, until stdin closes.
pub(crate) fn serve_worker(memory_bytes: usize, output_bytes: usize) -> std::io::Result<()> {
    crate::alloc::set_cap(memory_bytes);
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout().lock();
    for line in stdin.lock().lines() {
        let reply = match serde_json::from_str::<Job>(&line?) {
            Ok(job) => match jinja::render_bounded(&job.source, &job.context, output_bytes) {
                Ok(text) => Reply::Rendered(text),
                Err(e) => Reply::Failed(e),
            },
            Err(e) => Reply::Failed(RenderError::Failed(format!("unreadable job: {e}"))),
        };
        let mut out = serde_json::to_string(&reply).map_err(std::io::Error::other)?;
        out.push('\n');
        stdout.write_all(out.as_bytes())?;
        stdout.flush()?;
    }
    Ok(())
}
