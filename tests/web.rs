//! End to end: the web page in headless Chromium, driven over WebDriver (plain HTTP + JSON),
//! against the server started in-process with the real model. Runs t1 with Shapley values and
//! checks what the page drew against a direct API call; then checks that an invalid template
//! shows an error next to the template field, and that no request left 127.0.0.1.
//! Skips (with a message) only when chromedriver is not installed.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use llm_attr::api::{Config, ModelSource, Server};
use serde_json::{json, Value};

const MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
/// The W3C WebDriver key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn in_path(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| p.is_file())
}

fn env_path(var: &str) -> Option<PathBuf> {
    std::env::var_os(var).map(PathBuf::from).filter(|p| p.is_file())
}

/// chromedriver, and its child Chromium, killed (session first) when dropped.
struct Driver {
    child: Child,
    base: String,
    http: reqwest::blocking::Client,
    session: Option<String>,
}

impl Driver {
    fn start(exe: &Path) -> Driver {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(exe)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let d = Driver {
            child,
            base: format!("http://127.0.0.1:{port}"),
            http,
            session: None,
        };
        let start = Instant::now();
        loop {
            let ready = d
                .http
                .get(format!("{}/status", d.base))
                .send()
                .ok()
                .and_then(|r| r.json::<Value>().ok())
                .is_some_and(|v| v["value"]["ready"] == true);
            if ready {
                return d;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "chromedriver did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// One WebDriver command; returns its `value`, panics with WebDriver's message on error.
    fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{}", self.base, path);
        let mut req = self.http.request(method.clone(), &url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = res.status();
        let v: Value = res
            .json()
            .unwrap_or_else(|e| panic!("{method} {path}: not JSON: {e}"));
        assert!(status.is_success(), "{method} {path}: {status} {}", v["value"]);
        v["value"].clone()
    }

    fn open(&mut self, chromium: Option<&Path>, profile: &Path) {
        let mut options = json!({
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1280,1800",
                format!("--user-data-dir={}", profile.display()),
            ],
        });
        if let Some(bin) = chromium {
            options["binary"] = json!(bin);
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": options,
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let v = self.cmd(reqwest::Method::POST, "/session", Some(caps));
        self.session = Some(v["sessionId"].as_str().expect("session id").to_string());
    }

    fn s(&self, path: &str) -> String {
        format!(
            "/session/{}{}",
            self.session.as_deref().expect("no session"),
            path
        )
    }

    fn go(&self, url: &str) {
        self.cmd(reqwest::Method::POST, &self.s("/url"), Some(json!({"url": url})));
    }

    fn js(&self, script: &str, args: Value) -> Value {
        self.cmd(
            reqwest::Method::POST,
            &self.s("/execute/sync"),
            Some(json!({"script": script, "args": args})),
        )
    }

    /// Polls `expr` (a JS expression) until it is truthy; returns its value.
    fn wait(&self, expr: &str, timeout: Duration, what: &str) -> Value {
        let start = Instant::now();
        loop {
            let v = self.js(&format!("return {expr};"), json!([]));
            let truthy = !matches!(&v, Value::Null | Value::Bool(false)) && v != json!("") && v != json!(0);
            if truthy {
                return v;
            }
            if start.elapsed() > timeout {
                let status = self.js(
                    "return [location.href, document.readyState, document.querySelector('#progress-text')?.textContent, \
                     Array.from(document.querySelectorAll('.field-error')).map(e => e.textContent).filter(Boolean), \
                     document.body?.innerText.slice(0, 300)]",
                    json!([]),
                );
                panic!("timed out waiting for {what}; page status: {status}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn find(&self, css: &str) -> String {
        let v = self.cmd(
            reqwest::Method::POST,
            &self.s("/element"),
            Some(json!({"using": "css selector", "value": css})),
        );
        v[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}"))
            .to_string()
    }

    /// A real click (pointer events), as a person would.
    fn click(&self, css: &str) {
        let id = self.find(css);
        self.cmd(
            reqwest::Method::POST,
            &self.s(&format!("/element/{id}/click")),
            Some(json!({})),
        );
    }

    /// Clears a text field and types `text` into it, key by key.
    fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css);
        self.cmd(
            reqwest::Method::POST,
            &self.s(&format!("/element/{id}/clear")),
            Some(json!({})),
        );
        self.cmd(
            reqwest::Method::POST,
            &self.s(&format!("/element/{id}/value")),
            Some(json!({"text": text})),
        );
    }

    /// Every URL this page load fetched (document, scripts, styles, API calls, event streams).
    fn requested(&self) -> Vec<String> {
        let v = self.js(
            "return performance.getEntries().filter(e => e.entryType === 'navigation' || e.entryType === 'resource').map(e => e.name)",
            json!([]),
        );
        v.as_array()
            .unwrap()
            .iter()
            .map(|u| u.as_str().unwrap().to_string())
            .collect()
    }

    /// Sends keys to the focused element.
    fn keys(&self, keys: &str) {
        let actions: Vec<Value> = keys
            .chars()
            .flat_map(|k| {
                let k = k.to_string();
                [
                    json!({"type": "keyDown", "value": k}),
                    json!({"type": "keyUp", "value": k}),
                ]
            })
            .collect();
        self.cmd(
            reqwest::Method::POST,
            &self.s("/actions"),
            Some(json!({"actions": [{"type": "key", "id": "keyboard", "actions": actions}]})),
        );
    }

    fn screenshot(&self, path: &Path) {
        let v = self.cmd(reqwest::Method::GET, &self.s("/screenshot"), None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().expect("screenshot data"))
            .expect("screenshot base64");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }

    fn browser_log(&self) -> Vec<Value> {
        let v = self.cmd(
            reqwest::Method::POST,
            &self.s("/se/log"),
            Some(json!({"type": "browser"})),
        );
        v.as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(id) = self.session.take() {
            let _ = self.http.delete(format!("{}/session/{id}", self.base)).send();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 2e-3 + 1e-3 * b.abs()
}

/// A number as the page writes it ("+0.23", "−1.05").
fn page_number(text: &str) -> f64 {
    text.trim()
        .replace('\u{2212}', "-")
        .trim_start_matches('+')
        .parse()
        .unwrap_or_else(|_| panic!("not a number on the page: {text:?}"))
}

#[test]
fn web_page_runs_t1_in_a_real_browser() {
    let Some(chromedriver) = env_path("CHROMEDRIVER").or_else(|| in_path(&["chromedriver"])) else {
        eprintln!(
            "skipping the web page test: chromedriver is not installed (set CHROMEDRIVER or add it to PATH)"
        );
        return;
    };
    let chromium =
        env_path("CHROME_BIN").or_else(|| in_path(&["chromium", "chromium-browser", "google-chrome"]));
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let model = root.join(MODEL);
    assert!(
        model.is_file(),
        "{} is missing: run scripts/fetch-models.sh",
        model.display()
    );

    let t0 = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut config = Config::new(ModelSource::Spec(model.display().to_string()));
    // This checkout's page, read from disk: the copy compiled in by build.rs lives in the target
    // dir, which worktrees sharing one target dir overwrite for each other.
    config.static_dir = Some(root.join("static"));
    let server = rt.block_on(Server::start(config)).expect("start the server");
    rt.block_on(server.ready()).expect("load the model");
    let base = server.url();
    println!("model loaded in {:.1} s", t0.elapsed().as_secs_f64());

    let profile = tempfile::tempdir().unwrap();
    let mut driver = Driver::start(&chromedriver);
    driver.open(chromium.as_deref(), profile.path());
    let d = &driver;

    // The page loads its seed templates; t1 with exact Shapley values.
    d.go(&format!("{base}/"));
    d.wait(
        "document.body.dataset.ready === '1' && !!document.querySelector('#seed-template option[value=t1]')",
        Duration::from_secs(20),
        "the page to load its templates",
    );
    d.click("#seed-template option[value=t1]");
    d.click("input[name=method][value=shapley_values]");
    let names = d.js(
        "return Array.from(document.querySelectorAll('#placeholders .ph')).map(p => p.dataset.name)",
        json!([]),
    );
    assert_eq!(
        names,
        json!(["name", "country", "job"]),
        "one row per placeholder of t1"
    );
    let request = d.js("return buildRequest()", json!([]));
    assert_eq!(request["method"], "shapley_values");
    assert_eq!(request["values"]["name"], "Georg");

    // The same request straight to the API, while the page runs it as a job.
    let direct = {
        let (url, body) = (format!("{base}/v1/attributions"), request.clone());
        std::thread::spawn(move || {
            let http = reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .unwrap();
            let res = http.post(url).json(&body).send().expect("direct API call");
            assert!(res.status().is_success(), "direct API call: {}", res.status());
            res.json::<Value>().expect("direct API call: JSON")
        })
    };
    let t_run = Instant::now();
    d.click("#run");
    d.wait(
        "document.querySelector('#progress-text').textContent.startsWith('Done') \
         || document.querySelector('#err-general').textContent",
        Duration::from_secs(50),
        "the job to finish",
    );
    let general = d.js(
        "return document.querySelector('#err-general').textContent",
        json!([]),
    );
    assert_eq!(general, "", "the job failed on the page");

    println!(
        "the page's job finished in {:.1} s",
        t_run.elapsed().as_secs_f64()
    );
    let api = direct.join().expect("direct API call");
    println!(
        "the direct call finished after {:.1} s",
        t_run.elapsed().as_secs_f64()
    );
    let tokens = api["output_tokens"].as_array().unwrap().len();
    let features = api["features"].as_array().unwrap().len();
    assert_eq!(features, 3);
    assert!(tokens >= 5, "t1's target has several tokens");

    // Heatmap: one cell per output token x feature, holding the API's numbers.
    let cells = d.js(
        "return Array.from(document.querySelectorAll('#heatmap .cell')).map(c => \
         [Number(c.dataset.row), Number(c.dataset.col), Number(c.dataset.value), c.querySelector('text').textContent])",
        json!([]),
    );
    let cells = cells.as_array().unwrap();
    assert_eq!(
        cells.len(),
        tokens * features,
        "one heatmap cell per output token x feature"
    );
    let mut seen = vec![false; tokens * features];
    for c in cells {
        let (r, f) = (c[0].as_u64().unwrap() as usize, c[1].as_u64().unwrap() as usize);
        let want = api["token_attr"][r][f].as_f64().unwrap();
        let got = c[2].as_f64().unwrap();
        assert!(close(got, want), "cell ({r}, {f}): page {got}, API {want}");
        let shown = page_number(c[3].as_str().unwrap());
        assert!(
            (shown - want).abs() <= 0.005 + 2e-3 + 1e-3 * want.abs(),
            "cell ({r}, {f}) reads {shown}, API {want}"
        );
        seen[r * features + f] = true;
    }
    assert!(
        seen.iter().all(|s| *s),
        "every (token, feature) pair has its cell"
    );
    let rows = d.js(
        "return Array.from(document.querySelectorAll('#heatmap .row-head title')).map(t => t.textContent)",
        json!([]),
    );
    assert_eq!(rows, api["output_tokens"], "row labels are the output tokens");

    // Bar chart: one bar per feature with the sequence attribution.
    let bars = d.js(
        "return Array.from(document.querySelectorAll('#bars .bar')).map(b => [b.dataset.feature, Number(b.dataset.value)])",
        json!([]),
    );
    let bars = bars.as_array().unwrap();
    assert_eq!(bars.len(), features, "one bar per feature");
    for (i, b) in bars.iter().enumerate() {
        assert_eq!(b[0], api["features"][i]["name"]);
        let want = api["seq_attr"][i].as_f64().unwrap();
        assert!(
            close(b[1].as_f64().unwrap(), want),
            "bar {i}: page {}, API {want}",
            b[1]
        );
    }

    // Progress reached 100%, and the probability of the target is shown.
    let progress = d.js(
        "const p = document.querySelector('#progress'); return [p.value, p.max, p.dataset.percent]",
        json!([]),
    );
    assert!(
        progress[1].as_f64().unwrap() > 1.0,
        "progress counted real work: {progress}"
    );
    assert_eq!(progress[0], progress[1], "progress bar full: {progress}");
    assert_eq!(progress[2], "100");
    let prob = d.js(
        "return document.querySelector('#target-prob').textContent",
        json!([]),
    );
    let lp = api["target_log_prob"].as_f64().unwrap();
    let shown: f64 = prob
        .as_str()
        .unwrap()
        .split("log p = ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .map(page_number)
        .expect("log p shown");
    assert!((shown - lp).abs() < 1e-3, "log p(target): page {shown}, API {lp}");

    d.js("window.scrollTo(0, 0)", json!([]));
    let shot = root.join("tests/artifacts/web-t1.png");
    d.screenshot(&shot);
    println!("screenshot: {}", shot.display());

    // Keyboard: the heatmap takes focus and the arrow keys read out cells.
    d.js("document.querySelector('#heatmap svg').focus()", json!([]));
    d.keys("\u{E015}\u{E014}"); // down, right
    let readout = d.js(
        "return document.querySelector('#heatmap-readout').textContent",
        json!([]),
    );
    let want = api["token_attr"][1][1].as_f64().unwrap();
    let shown = readout
        .as_str()
        .unwrap()
        .split(": ")
        .nth(1)
        .map(|s| s.split(' ').next().unwrap_or(""));
    let shown = page_number(shown.unwrap_or_else(|| panic!("readout: {readout}")));
    assert!(
        close(shown, want),
        "keyboard readout of cell (1, 1): {readout}, API {want}"
    );

    // Compare: the target's log p for each name; the prompt with "Georg" is t1's own prompt.
    d.click("#compare-run");
    d.wait(
        "document.querySelector('#compare-status').textContent.startsWith('Done') \
         || document.querySelector('#err-compare').textContent",
        Duration::from_secs(30),
        "the comparison",
    );
    let rows = d.js(
        "return Array.from(document.querySelectorAll('#compare-chart .compare-row')).map(r => [r.dataset.label, Number(r.dataset.value)])",
        json!([]),
    );
    let labels: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[0].as_str().unwrap())
        .collect();
    assert_eq!(
        labels,
        ["Georg", "John", "Maria", "Ahmed", "Zhang Wei"],
        "one row per value"
    );
    let georg = rows[0][1].as_f64().unwrap();
    assert!(
        (georg - lp).abs() < 1e-3,
        "compare log p for Georg {georg}, API {lp}"
    );
    d.js("window.scrollTo(0, 0)", json!([]));
    d.screenshot(&root.join("tests/artifacts/web-compare.png"));
    assert!(
        rows.as_array()
            .unwrap()
            .iter()
            .all(|r| r[1].as_f64().unwrap() < 0.0),
        "log-probabilities"
    );

    // The link holds the probe: opening it restores the form and the job's result.
    let link = d.js("return location.href", json!([]));
    let mut urls = d.requested();
    d.go("about:blank");
    d.go(link.as_str().unwrap());
    d.wait(
        "document.body.dataset.ready === '1' && document.querySelectorAll('#heatmap .cell').length",
        Duration::from_secs(20),
        "the shared link to show the result",
    );
    assert_eq!(
        d.js("return buildRequest()", json!([])),
        request,
        "the link restores the request"
    );
    let restored = d.js(
        "return document.querySelectorAll('#heatmap .cell').length",
        json!([]),
    );
    assert_eq!(restored, json!(tokens * features), "the link restores the result");
    let cmp = d.js("return [document.querySelector('#compare-ph').value, document.querySelector('#compare-values').value]", json!([]));
    assert_eq!(
        cmp,
        json!(["name", "Georg\nJohn\nMaria\nAhmed\nZhang Wei"]),
        "the link restores the comparison"
    );

    // An invalid template: the server's message next to the template field, the page intact.
    d.type_into("#template", "{name} from {country applied for a job as a {job}.");
    d.click("#run");
    let err = d.wait(
        "document.querySelector('#err-template').dataset.server === '1' \
         && document.querySelector('#err-template').textContent",
        Duration::from_secs(20),
        "the template error",
    );
    assert!(
        err.as_str().unwrap().contains('{'),
        "the error explains the braces: {err}"
    );
    let state = d.js(
        "return [document.querySelector('#template').getAttribute('aria-invalid'), \
         document.querySelector('#run').disabled, document.querySelectorAll('#heatmap .cell').length, \
         document.querySelector('#err-general').textContent]",
        json!([]),
    );
    assert_eq!(
        state,
        json!(["true", false, tokens * features, ""]),
        "error shown by the field, page usable"
    );
    d.screenshot(&root.join("tests/artifacts/web-invalid-template.png"));

    // Nothing left 127.0.0.1 (requests of both page loads), and no script error.
    urls.extend(d.requested());
    assert!(
        urls.iter().filter(|u| u.contains("/v1/")).count() >= 8,
        "the page's requests are recorded: {urls:?}"
    );
    for u in &urls {
        assert!(
            u.starts_with(&format!("{base}/")),
            "request outside the server: {u}"
        );
    }
    let errors: Vec<Value> = driver
        .browser_log()
        .into_iter()
        .filter(|e| e["level"] == "SEVERE")
        .collect();
    assert!(errors.is_empty(), "browser errors: {errors:?}");

    drop(driver);
    rt.block_on(server.shutdown());
}
