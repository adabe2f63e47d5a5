//! End to end: the web page in headless Chromium, driven over WebDriver (plain HTTP + JSON),
//! against the server started in-process with the real model. Checks the target's tokens and the
//! leading-space warning, the cost preview against POST /v1/plan, runs t1 with Shapley values and
//! checks what the page drew against a direct API call, marks the result out of date when an input
//! changes, runs audits (sorted rows, a two-placeholder grid, intervals over contexts) against
//! direct POST /v1/audits jobs, restores and re-runs an audit from the link, runs a chat request
//! where the model has a chat template, shows an invalid template's error next to the field (in
//! characters), keeps the heatmap's legend whole at a phone's width, runs a contrast (" reject"
//! rather than " hire") against a direct API call and restores it from the link, and checks that
//! no request left 127.0.0.1. Screenshots go to tests/artifacts/ (1400x1000 and 390x844).
//! Skips (with a message) only when chromedriver is not installed.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use llm_attr::api::{Config, ModelSource, Server};
use serde_json::{json, Value};

const MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
/// How long a model run may take: generous, as the test shares its CPUs with builds.
const SLOW: u64 = 400;
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
                "--disable-dev-shm-usage", "--window-size=1400,1000",
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

    /// A real click (pointer events), as a person would: scrolled to the middle of the view first,
    /// clear of the sticky run box.
    fn click(&self, css: &str) {
        let id = self.find(css);
        self.js(
            "arguments[0].scrollIntoView({block: 'center'})",
            json!([{ ELEMENT: id }]),
        );
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

    /// Resizes the browser window (the page sees its inner size).
    fn resize(&self, width: u32, height: u32) {
        self.cmd(
            reqwest::Method::POST,
            &self.s("/window/rect"),
            Some(json!({"width": width, "height": height})),
        );
    }

    /// Sets a form control's value as a script would and tells the page (input and change).
    fn set(&self, css: &str, value: &str) {
        self.js(
            "const e = document.querySelector(arguments[0]); e.value = arguments[1]; \
             e.dispatchEvent(new Event('input', {bubbles: true})); \
             e.dispatchEvent(new Event('change', {bubbles: true}));",
            json!([css, value]),
        );
    }

    fn text(&self, css: &str) -> String {
        self.js(
            "return document.querySelector(arguments[0])?.textContent ?? ''",
            json!([css]),
        )
        .as_str()
        .unwrap_or_default()
        .to_string()
    }

    fn visible(&self, css: &str) -> bool {
        self.js(
            "const e = document.querySelector(arguments[0]); return !!e && !e.hidden && e.offsetParent !== null",
            json!([css]),
        ) == json!(true)
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

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(SLOW))
        .build()
        .unwrap()
}

/// POSTs `body`; (status, JSON).
fn post(base: &str, path: &str, body: &Value) -> (u16, Value) {
    let res = http()
        .post(format!("{base}{path}"))
        .json(body)
        .send()
        .unwrap_or_else(|e| panic!("POST {path}: {e}"));
    let status = res.status().as_u16();
    (status, res.json().unwrap_or(Value::Null))
}

/// Runs an audit straight through the API (POST, then polls the job) and returns its result.
fn audit_direct(base: &str, body: &Value) -> Value {
    let (status, job) = post(base, "/v1/audits", body);
    assert_eq!(status, 202, "POST /v1/audits: {job}");
    let id = job["id"].as_str().expect("job id").to_string();
    let start = Instant::now();
    loop {
        let j: Value = http()
            .get(format!("{base}/v1/audits/{id}"))
            .send()
            .and_then(|r| r.json())
            .expect("GET /v1/audits/{id}");
        match j["state"].as_str() {
            Some("done") => return j["result"].clone(),
            Some("failed") | Some("cancelled") => panic!("direct audit ended: {j}"),
            _ => {}
        }
        assert!(
            start.elapsed() < Duration::from_secs(SLOW),
            "direct audit did not end"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The heatmap holds one cell per row of the API's `token_attr` x feature, with its numbers, and
/// the bar chart one bar per feature with its `seq_attr`.
fn assert_charts_match(d: &Driver, api: &Value) {
    let rows = api["token_attr"].as_array().unwrap().len();
    let features = api["features"].as_array().unwrap().len();
    let cells = d.js(
        "return Array.from(document.querySelectorAll('#heatmap .cell')).map(c => \
         [Number(c.dataset.row), Number(c.dataset.col), Number(c.dataset.value), c.querySelector('text').textContent])",
        json!([]),
    );
    let cells = cells.as_array().unwrap();
    assert_eq!(cells.len(), rows * features, "one heatmap cell per row x feature");
    let mut seen = vec![false; rows * features];
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
    assert!(seen.iter().all(|s| *s), "every (row, feature) pair has its cell");

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
}

/// The log p a line of the facts shows: "… (log p = −1.234567)…".
fn shown_log_p(d: &Driver, css: &str) -> f64 {
    let text = d.text(css);
    text.split("log p = ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .map(page_number)
        .unwrap_or_else(|| panic!("no log p in {css}: {text:?}"))
}

/// The target's tokens are shown before a run; the seed's target (Captum's, without a leading
/// space) gets the warning, and adding the space clears it.
fn check_leading_space(d: &Driver) {
    let tokens = d.wait(
        "document.querySelectorAll('#target-tokens .tok').length",
        Duration::from_secs(10),
        "the target's tokens",
    );
    assert!(
        tokens.as_u64().unwrap() >= 5,
        "t1's target has several tokens: {tokens}"
    );
    let warning = d.wait(
        "!document.querySelector('#space-warning').hidden && document.querySelector('#space-warning').textContent",
        Duration::from_secs(10),
        "the leading-space warning",
    );
    let warning = warning.as_str().unwrap();
    assert!(warning.contains("No space before the target"), "{warning}");
    assert!(
        warning.contains("toreject"),
        "the warning shows the joined words: {warning}"
    );
    assert!(
        warning.contains("Captum"),
        "the warning says the seed is Captum's: {warning}"
    );
    let first_marked = d.js(
        "return !!document.querySelector('#target-tokens .tok:first-child .space-mark')",
        json!([]),
    );
    assert_eq!(
        first_marked,
        json!(false),
        "no space is drawn where the text has none"
    );
    d.click("#space-warning button");
    d.wait(
        "document.querySelector('#space-warning').hidden \
         && !!document.querySelector('#target-tokens .tok:first-child .space-mark')",
        Duration::from_secs(10),
        "the warning to clear and the first token to show its space",
    );
    let target = d.js("return buildRequest().target", json!([]));
    assert!(
        target.as_str().unwrap().starts_with(" reject"),
        "the fix adds the space: {target}"
    );
    let spoken = d.js(
        "return document.querySelector('#target-tokens .tok').getAttribute('aria-label')",
        json!([]),
    );
    assert_eq!(
        spoken, "“reject”, after a space",
        "screen readers hear the token, not ␣"
    );
}

/// The cost preview shows the server's plan for the form's request.
fn check_cost_preview(d: &Driver, base: &str) {
    let request = d.js("return buildRequest()", json!([]));
    let (status, plan) = post(base, "/v1/plan", &request);
    assert_eq!(status, 200, "POST /v1/plan: {plan}");
    let shown = d.wait(
        "document.querySelector('#plan').dataset.plan",
        Duration::from_secs(10),
        "the cost preview",
    );
    let shown: Value = serde_json::from_str(shown.as_str().unwrap()).unwrap();
    for key in [
        "features",
        "coalitions",
        "distinct_sequences",
        "tokens",
        "tokens_after_reuse",
    ] {
        assert_eq!(
            shown[key], plan[key],
            "cost preview {key}: page {shown}, API {plan}"
        );
    }
    assert_eq!(plan["features"], 3);
    assert_eq!(
        plan["coalitions"], 8,
        "exact Shapley over 3 features: 2^3 coalitions"
    );
    let text = d.text("#plan");
    let prompts = plan["distinct_sequences"].as_u64().unwrap();
    assert!(
        text.replace(',', "")
            .contains(&format!("{prompts} distinct prompts")),
        "the preview says how many prompts: {text}"
    );
    let left = plan["tokens_after_reuse"].as_u64().unwrap();
    assert!(
        left < plan["tokens"].as_u64().unwrap(),
        "t1's prompts share a prefix: {plan}"
    );
    assert!(
        text.replace(',', "").contains(&format!("({left} to compute)")),
        "the preview says what shared-prefix reuse leaves: {text}"
    );
}

/// Editing an input marks the result out of date; undoing the edit makes it current again.
fn check_stale(d: &Driver) {
    assert!(!d.visible("#result-stale"), "a fresh result is not out of date");
    d.type_into("#placeholders .ph input[type=text]", "Greg");
    d.wait(
        "!document.querySelector('#result-stale').hidden && document.querySelector('#summary').classList.contains('stale')",
        Duration::from_secs(5),
        "the result to be marked out of date",
    );
    d.screenshot(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/artifacts/web-stale.png"));
    d.type_into("#placeholders .ph input[type=text]", "Georg");
    d.wait(
        "document.querySelector('#result-stale').hidden && !document.querySelector('#summary').classList.contains('stale')",
        Duration::from_secs(5),
        "the result to be current again",
    );
}

/// Waits for the page's audit and returns the rows of `placeholder`'s chart: [label, value, rank].
fn run_page_audit(d: &Driver, placeholder: &str) -> Vec<Value> {
    d.click("#audit-run");
    d.wait(
        "(document.querySelector('#audit-status').textContent.startsWith('Done') \
          && !document.querySelector('#audit-chart').classList.contains('stale') \
          && document.querySelector('#audit-run').disabled === false) \
         || document.querySelector('#err-audit').textContent",
        Duration::from_secs(SLOW),
        "the audit",
    );
    assert_eq!(d.text("#err-audit"), "", "the audit failed on the page");
    let rows = d.js(
        "return Array.from(document.querySelectorAll(`#audit-chart svg.audit-summary[data-placeholder='${arguments[0]}'] .audit-row`))\
         .map(r => [r.dataset.label, Number(r.dataset.value), Number(r.dataset.rank), !!r.querySelector('.ci')])",
        json!([placeholder]),
    );
    rows.as_array().unwrap().clone()
}

/// The page's sorted rows hold the API's summary, highest first, with both targets named.
fn assert_rows_match(rows: &[Value], api: &Value, placeholder: &str) {
    let mut summary = api["summary"][placeholder].as_array().unwrap().clone();
    summary.sort_by_key(|s| s["rank"].as_u64().unwrap());
    assert_eq!(
        rows.len(),
        summary.len(),
        "one row per value of {{{placeholder}}}"
    );
    for (row, s) in rows.iter().zip(&summary) {
        assert_eq!(row[0], s["value"], "rows sorted by the API's rank");
        let want = s["contrast"].as_f64().expect("a contrast of two targets");
        let got = row[1].as_f64().unwrap();
        assert!(close(got, want), "{}: page {got}, API {want}", s["value"]);
        assert_eq!(row[2], s["rank"]);
    }
    let values: Vec<f64> = rows.iter().map(|r| r[1].as_f64().unwrap()).collect();
    assert!(
        values.windows(2).all(|w| w[0] >= w[1]),
        "highest first: {values:?}"
    );
}

/// Audits: one placeholder (sorted rows named by both targets), averaged over contexts (intervals),
/// two placeholders (a grid).
fn check_audits(d: &Driver, base: &str, root: &Path) {
    d.type_into("#audit-targets", " hire\n reject");
    let audit = d.js("return buildAudit()", json!([]));
    assert_eq!(
        audit["targets"],
        json!([" hire", " reject"]),
        "targets kept with their spaces"
    );
    assert_eq!(
        audit["sweep"],
        json!({"name": ["Georg", "John", "Maria", "Ahmed", "Zhang Wei"]}),
        "the sweep defaults to the placeholder's value and baselines"
    );
    let api = audit_direct(base, &audit);
    let rows = run_page_audit(d, "name");
    assert_rows_match(&rows, &api, "name");
    let measure = d.text("#audit-chart svg.audit-summary .audit-measure");
    assert!(
        measure.contains("␣hire") && measure.contains("␣reject"),
        "the chart names both targets: {measure}"
    );
    d.js(
        "document.querySelector('#audit-card').scrollIntoView()",
        json!([]),
    );
    d.screenshot(&root.join("tests/artifacts/web-audit.png"));

    // A changed target makes the audit's charts out of date.
    d.type_into("#audit-targets", " hire\n fire");
    d.wait(
        "!document.querySelector('#audit-stale').hidden && document.querySelector('#audit-chart').classList.contains('stale')",
        Duration::from_secs(5),
        "the audit to be marked out of date",
    );
    d.type_into("#audit-targets", " hire\n reject");
    d.wait(
        "document.querySelector('#audit-stale').hidden",
        Duration::from_secs(5),
        "the audit to be current again",
    );

    // Averaged over the other placeholders' baselines: every row has its interval.
    d.click("#audit-average");
    let audit = d.js("return buildAudit()", json!([]));
    assert_eq!(audit["contexts"], "average");
    let api = audit_direct(base, &audit);
    let rows = run_page_audit(d, "name");
    assert_rows_match(&rows, &api, "name");
    assert!(
        rows.iter().all(|r| r[3] == json!(true)),
        "every row has its interval: {rows:?}"
    );
    assert!(api["n_contexts"].as_u64().unwrap() > 1, "{}", api["n_contexts"]);
    d.js(
        "document.querySelector('#audit-card').scrollIntoView()",
        json!([]),
    );
    d.screenshot(&root.join("tests/artifacts/web-audit-average.png"));
    d.click("#audit-average");

    // Two placeholders: a grid with one cell per pair, holding the API's contrasts.
    d.set("#audit-ph2", "country");
    d.type_into("#audit-values2", "Germany\nTogo");
    let audit = d.js("return buildAudit()", json!([]));
    assert_eq!(audit["sweep"]["country"], json!(["Germany", "Togo"]));
    let api = audit_direct(base, &audit);
    run_page_audit(d, "name");
    let cells = d.js(
        "return Array.from(document.querySelectorAll('#audit-chart .grid-cell')).map(c => [c.dataset.row, c.dataset.col, Number(c.dataset.value)])",
        json!([]),
    );
    let cells = cells.as_array().unwrap();
    assert_eq!(cells.len(), 10, "5 names x 2 countries");
    for c in cells {
        let cell = api["cells"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["values"]["name"] == c[0] && x["values"]["country"] == c[1])
            .unwrap_or_else(|| panic!("no API cell for {c}"));
        let want =
            cell["log_prob"][" hire"].as_f64().unwrap() - cell["log_prob"][" reject"].as_f64().unwrap();
        assert!(close(c[2].as_f64().unwrap(), want), "grid cell {c}: API {want}");
    }
    d.js(
        "document.querySelector('#audit-card').scrollIntoView()",
        json!([]),
    );
    d.screenshot(&root.join("tests/artifacts/web-audit-grid.png"));
    // Back to one placeholder, for the link.
    d.set("#audit-ph2", "");
    run_page_audit(d, "name");
}

/// The gradient methods are offered with a template too (a hidden one could not be clicked),
/// and their request leaves out the baselines, which they do not use; gradient SHAP takes
/// samples, never repeats. Ends on Shapley values.
fn check_gradient_request(d: &Driver) {
    for method in ["integrated_gradients", "gradient_x_input", "gradient_shap"] {
        d.click(&format!("input[name=method][value={method}]"));
        let request = d.js("return buildRequest()", json!([]));
        assert_eq!(request["method"], method);
        assert_eq!(request["values"]["name"], "Georg", "{request}");
        assert!(request.get("baselines").is_none(), "{request}");
    }
    d.set("#n_samples", "12");
    let request = d.js("return buildRequest()", json!([]));
    assert_eq!(request["n_samples"], 12, "{request}");
    assert!(request.get("num_trials").is_none(), "{request}");
    let trials = d.js("return document.querySelector('#num_trials').disabled", json!([]));
    assert_eq!(trials, json!(true));
    d.set("#n_samples", "");
    d.click("input[name=method][value=shapley_values]");
    let request = d.js("return buildRequest()", json!([]));
    assert!(request.get("baselines").is_some(), "{request}");
}

/// Presses Explain and waits for the run to end; fails if it left a message under any field.
fn run_on_page(d: &Driver, what: &str) {
    d.click("#run");
    d.wait(
        "document.querySelector('#progress-text').textContent.startsWith('Done') \
         || document.querySelector('.field-error[data-server]')?.textContent",
        Duration::from_secs(SLOW),
        what,
    );
    let errors = d.js(
        "return Array.from(document.querySelectorAll('.field-error')).map(e => e.textContent).filter(Boolean)",
        json!([]),
    );
    assert_eq!(errors, json!([]), "{what} failed on the page");
}

/// Chat mode where the model has a chat template: messages instead of a template, run as a job.
fn check_chat(d: &Driver, base: &str, root: &Path) {
    let model: Value = http()
        .get(format!("{base}/v1/model"))
        .send()
        .and_then(|r| r.json())
        .expect("GET /v1/model");
    let has = model["chat_template"].clone();
    if has != json!(true) {
        eprintln!("skipping the chat check: /v1/model does not say the model has a chat template ({has})");
        return;
    }
    d.click("input[name=mode][value=chat]");
    d.type_into("#system", "You are a hiring manager.");
    d.type_into(
        "#user",
        "{name} from {country} applied for a job as a {job}. Do you hire them?",
    );
    d.type_into("#target", " Yes");
    d.click("input[name=method][value=feature_ablation]");
    let request = d.js("return buildRequest()", json!([]));
    assert!(request.get("template").is_none(), "{request}");
    assert_eq!(request["messages"][0]["role"], "system");
    assert_eq!(request["messages"][1]["role"], "user");
    run_on_page(d, "the chat job");
    let roles = d.js(
        "return Array.from(document.querySelectorAll('#prompt-view .role')).map(r => r.textContent)",
        json!([]),
    );
    assert_eq!(roles, json!(["system", "user", "assistant"]));
    assert!(
        !d.visible("#result-stale"),
        "a new result is current, though the one before it was out of date"
    );
    d.js("window.scrollTo(0, 0)", json!([]));
    d.screenshot(&root.join("tests/artifacts/web-chat.png"));
}

/// The Sources card: a pasted context of three sentences with leave-one-out; the page tints one
/// mark per sentence with the API's scores, lists the top one first, and shows a pressed
/// sentence's share of each answer token (its column of token_attr).
fn check_sources(d: &Driver, base: &str) {
    let context = "Ada fixed the lamp. Tom rang the bell.\n\nThe ferry left at noon.";
    d.type_into("#src-context", context);
    d.type_into("#src-question", "Who fixed the lamp?");
    d.type_into("#src-answer", "Ada");
    d.set("#src-method", "feature_ablation");
    let request = d.js(
        "return import('./sources.js').then(m => m.pasteRequest())",
        json!([]),
    );
    assert_eq!(request["split"], json!({"context": "sentence"}), "{request}");
    let (status, api) = post(base, "/v1/attributions", &request);
    assert_eq!(status, 200, "{api}");
    d.click("#src-run");
    d.wait(
        "document.querySelectorAll('#sources-text mark.source').length",
        Duration::from_secs(SLOW),
        "the sources view",
    );
    let marks = d.js(
        "return Array.from(document.querySelectorAll('#sources-text mark.source')).map(m => m.textContent)",
        json!([]),
    );
    assert_eq!(
        marks,
        json!([
            "Ada fixed the lamp.",
            "Tom rang the bell.",
            "The ferry left at noon."
        ])
    );
    let seq: Vec<f64> = api["seq_attr"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let best = (0..seq.len()).max_by(|&a, &b| seq[a].total_cmp(&seq[b])).unwrap();
    let first = d.js(
        "return Number(document.querySelector('#sources-top li').dataset.feature)",
        json!([]),
    );
    assert_eq!(first, json!(best), "the top source, as the API scores it");
    d.click("#sources-text mark.source");
    let chips = d.js(
        "return Array.from(document.querySelectorAll('#sources-row .chip')).map(c => Number(c.dataset.value))",
        json!([]),
    );
    let column: Vec<Value> = api["token_attr"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row[0].clone())
        .collect();
    assert_eq!(chips.as_array().unwrap().len(), column.len());
    for (c, w) in chips.as_array().unwrap().iter().zip(&column) {
        assert!(
            close(c.as_f64().unwrap(), w.as_f64().unwrap()),
            "{chips} vs {column:?}"
        );
    }
}

/// A contrast: t1's " reject" rather than " hire", with feature ablation (a few prompts). A contrast
/// equal to the target is refused next to its field; the request carries the contrast and the
/// cost preview counts it; the page shows the API's numbers; the link restores it; a blank field
/// leaves it out of the request.
fn check_contrast(d: &Driver, base: &str, root: &Path) {
    d.set("#seed-template", "t1");
    d.click("input[name=method][value=feature_ablation]");
    d.type_into("#target", " reject");
    d.type_into("#contrast_target", " reject");
    d.click("#run");
    let err = d.wait(
        "document.querySelector('#err-contrast_target').dataset.server === '1' \
         && document.querySelector('#err-contrast_target').textContent",
        Duration::from_secs(20),
        "the server's message about the contrast",
    );
    assert!(err.as_str().unwrap().contains("same"), "{err}");

    d.type_into("#contrast_target", " hire");
    let request = d.js("return buildRequest()", json!([]));
    assert_eq!(request["target"], " reject", "{request}");
    assert_eq!(request["contrast_target"], " hire", "{request}");
    check_contrast_plan(d, base, &request);
    let api = run_contrast(d, base, &request);
    d.js("window.scrollTo(0, 0)", json!([]));
    d.screenshot(&root.join("tests/artifacts/web-contrast.png"));
    check_contrast_link(d, &request, &api);

    for blank in ["", "  "] {
        d.set("#contrast_target", blank);
        let request = d.js("return buildRequest()", json!([]));
        assert!(
            request.get("contrast_target").is_none() && request["target"] == " reject",
            "a blank contrast ({blank:?}) is left out: {request}"
        );
    }
    d.wait(
        "!document.querySelector('#result-stale').hidden",
        Duration::from_secs(5),
        "the contrast's result to be out of date without the contrast",
    );
}

/// The cost preview shows the plan of the request with its contrast, which scores more tokens than
/// the target alone.
fn check_contrast_plan(d: &Driver, base: &str, request: &Value) {
    let (status, plan) = post(base, "/v1/plan", request);
    assert_eq!(status, 200, "POST /v1/plan: {plan}");
    let mut alone = request.clone();
    alone.as_object_mut().unwrap().remove("contrast_target");
    let (status, without) = post(base, "/v1/plan", &alone);
    assert_eq!(status, 200, "POST /v1/plan: {without}");
    assert!(
        plan["tokens"].as_u64().unwrap() > without["tokens"].as_u64().unwrap(),
        "the contrast is scored too: {plan} against {without}"
    );
    d.wait(
        &format!(
            "JSON.parse(document.querySelector('#plan').dataset.plan || '{{}}').tokens === {}",
            plan["tokens"]
        ),
        Duration::from_secs(10),
        "the cost preview to count the contrast",
    );
}

/// Runs the contrast on the page, then the same request through the API: the charts hold the
/// API's numbers, the contrast's rows (marked −) follow the target's, and the facts give both
/// log-probabilities and their difference. Returns the API's response.
fn run_contrast(d: &Driver, base: &str, request: &Value) -> Value {
    run_on_page(d, "the contrast's job");
    let (status, api) = post(base, "/v1/attributions", request);
    assert_eq!(status, 200, "POST /v1/attributions: {api}");
    assert_charts_match(d, &api);
    assert!(!d.visible("#result-stale"), "the contrast's result is current");

    let target = api["output_tokens"].as_array().unwrap();
    let contrast = api["contrast_output_tokens"]
        .as_array()
        .expect("contrast_output_tokens");
    let rows = d.js(
        "return Array.from(document.querySelectorAll('#heatmap .row-head')).map(r => \
         [r.querySelector('title').textContent, r.hasAttribute('data-contrast'), r.textContent.slice(r.querySelector('title').textContent.length)])",
        json!([]),
    );
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), target.len() + contrast.len(), "{rows:?}");
    for (k, row) in rows.iter().enumerate() {
        let (want, is_contrast) = match k.checked_sub(target.len()) {
            Some(c) => (&contrast[c], true),
            None => (&target[k], false),
        };
        assert_eq!(row[0], *want, "row {k} is the token {want}");
        assert_eq!(row[1], is_contrast, "row {k}: {row}");
        assert_eq!(
            row[2].as_str().unwrap().starts_with('−'),
            is_contrast,
            "a contrast row is marked −: {row}"
        );
    }

    let (lt, lc) = (
        api["target_log_prob"].as_f64().unwrap(),
        api["contrast_log_prob"].as_f64().unwrap(),
    );
    assert!(
        (shown_log_p(d, "#target-prob") - lt).abs() < 1e-3,
        "log p(target): API {lt}"
    );
    assert!(
        (shown_log_p(d, "#contrast-prob") - lc).abs() < 1e-3,
        "log p(contrast): API {lc}"
    );
    let difference = d.text("#contrast-difference");
    let (what, shown) = difference.rsplit_once(" = ").expect("the difference");
    assert_eq!(what, "log p(target) − log p(contrast)");
    assert!(
        (page_number(shown) - (lt - lc)).abs() < 1e-3,
        "{difference}: API {}",
        lt - lc
    );
    assert!(
        d.text("#bars")
            .contains("attribution to log p(target) − log p(contrast)"),
        "the bars' axis names the difference"
    );
    assert!(
        d.text("#heatmap .legend-contrast").contains("negated"),
        "the legend says the contrast's rows are negated"
    );
    let provenance = d.text("#provenance");
    assert!(provenance.contains("rather than “ hire”"), "{provenance}");
    api
}

/// The link holds the contrast: opening it restores the field and reopens the result with the
/// contrast's rows.
fn check_contrast_link(d: &Driver, request: &Value, api: &Value) {
    d.wait(
        "new URLSearchParams(location.hash.slice(1)).get('req') === JSON.stringify(buildRequest()) \
         && new URLSearchParams(location.hash.slice(1)).has('job')",
        Duration::from_secs(5),
        "the link to hold the contrast and its job",
    );
    let link = d.js("return location.href", json!([]));
    d.go("about:blank");
    d.go(link.as_str().unwrap());
    d.wait(
        "document.body.dataset.ready === '1' && document.querySelectorAll('#heatmap .cell').length",
        Duration::from_secs(20),
        "the link to reopen the contrast's result",
    );
    assert_eq!(
        d.js("return buildRequest()", json!([])),
        *request,
        "the link restores the request"
    );
    assert_eq!(
        d.js(
            "return document.querySelector('#contrast_target').value",
            json!([])
        ),
        " hire"
    );
    let contrast_rows = d.js(
        "return document.querySelectorAll('#heatmap .row-head[data-contrast]').length",
        json!([]),
    );
    assert_eq!(
        contrast_rows,
        json!(api["contrast_output_tokens"].as_array().unwrap().len())
    );
}

/// At a phone's width the heatmap's legend fits its chart, and a wide chart keeps its row labels.
fn check_mobile(d: &Driver, root: &Path) {
    d.resize(390, 844);
    d.wait(
        "document.querySelector('#heatmap svg.heatmap')?.width.baseVal.value < 600",
        Duration::from_secs(5),
        "the heatmap to be drawn for a phone",
    );
    let fits = d.js(
        "const s = document.querySelector('#heatmap svg.heatmap'); const b = s.querySelector('.legend-caption').getBBox(); \
         const scrolls = document.querySelector('#heatmap').classList.contains('scrolls'); \
         return [b.x >= 0 && b.x + b.width <= s.width.baseVal.value, scrolls, \
                 !!document.querySelector('#heatmap .sticky-col'), !document.querySelector('#heatmap-card .scroll-hint').hidden]",
        json!([]),
    );
    assert_eq!(fits[0], json!(true), "the legend fits the chart: {fits}");
    assert_eq!(
        fits[1], fits[2],
        "a scrolling heatmap keeps its row labels: {fits}"
    );
    assert_eq!(fits[1], fits[3], "a scrolling heatmap says so: {fits}");
    d.js(
        "document.querySelector('#heatmap-card').scrollIntoView()",
        json!([]),
    );
    d.screenshot(&root.join("tests/artifacts/web-mobile-heatmap.png"));
    d.js(
        "document.querySelector('#audit-card').scrollIntoView()",
        json!([]),
    );
    d.screenshot(&root.join("tests/artifacts/web-mobile-audit.png"));
    d.resize(1400, 1000);
}
/// The server, started in-process with the real model and serving this checkout's page, and a
/// headless Chromium on that page (t1's seed loaded). Closed in order by [`Page::close`].
struct Page {
    driver: Driver,
    _profile: tempfile::TempDir,
    server: Server,
    rt: tokio::runtime::Runtime,
    base: String,
}

impl Page {
    /// None (with a message) when chromedriver is not installed.
    fn open() -> Option<Page> {
        let Some(chromedriver) = env_path("CHROMEDRIVER").or_else(|| in_path(&["chromedriver"])) else {
            eprintln!(
                "skipping the web page test: chromedriver is not installed (set CHROMEDRIVER or add it to PATH)"
            );
            return None;
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
        // The page loads its seed templates.
        driver.go(&format!("{base}/"));
        driver.wait(
            "document.body.dataset.ready === '1' && !!document.querySelector('#seed-template option[value=t1]')",
            Duration::from_secs(20),
            "the page to load its templates",
        );
        Some(Page {
            driver,
            _profile: profile,
            server,
            rt,
            base,
        })
    }

    fn close(self) {
        drop(self.driver);
        self.rt.block_on(self.server.shutdown());
    }
}

#[test]
fn web_page_runs_t1_in_a_real_browser() {
    let t_test = Instant::now();
    let Some(page) = Page::open() else { return };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (d, base) = (&page.driver, page.base.clone());
    // t1 with exact Shapley values.
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
    check_leading_space(d);
    check_cost_preview(d, &base);
    check_gradient_request(d);
    let request = d.js("return buildRequest()", json!([]));
    assert_eq!(request["method"], "shapley_values");
    assert_eq!(request["values"]["name"], "Georg");
    assert!(
        request.get("num_trials").is_none()
            && d.js("return document.querySelector('#num_trials').disabled", json!([])) == json!(true),
        "Repeats is off for exact Shapley values with exact baselines"
    );
    d.js("window.scrollTo(0, 0)", json!([]));
    d.screenshot(&root.join("tests/artifacts/web-before-run.png"));

    // The same request straight to the API, while the page runs it as a job.
    let direct = {
        let (url, body) = (format!("{base}/v1/attributions"), request.clone());
        std::thread::spawn(move || {
            let http = reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(SLOW))
                .build()
                .unwrap();
            let res = http.post(url).json(&body).send().expect("direct API call");
            assert!(res.status().is_success(), "direct API call: {}", res.status());
            res.json::<Value>().expect("direct API call: JSON")
        })
    };
    let t_run = Instant::now();
    d.click("#run");
    let focused = d.js(
        "return document.activeElement?.id || document.activeElement?.tagName",
        json!([]),
    );
    assert!(
        focused == json!("cancel") || focused == json!("run"),
        "focus stays on a button while Explain disables itself: {focused}"
    );
    d.wait(
        "document.querySelector('#progress-text').textContent.startsWith('Done') \
         || document.querySelector('#err-general').textContent",
        Duration::from_secs(SLOW),
        "the job to finish",
    );
    let general = d.js(
        "return document.querySelector('#err-general').textContent",
        json!([]),
    );
    assert_eq!(general, "", "the job failed on the page");
    let focused = d.js(
        "return document.activeElement?.id || document.activeElement?.tagName",
        json!([]),
    );
    assert_ne!(focused, json!("BODY"), "focus is not dropped to <body>");

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

    assert_charts_match(d, &api);
    let rows = d.js(
        "return Array.from(document.querySelectorAll('#heatmap .row-head title')).map(t => t.textContent)",
        json!([]),
    );
    assert_eq!(rows, api["output_tokens"], "row labels are the output tokens");

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
    let lp = api["target_log_prob"].as_f64().unwrap();
    let shown = shown_log_p(d, "#target-prob");
    assert!((shown - lp).abs() < 1e-3, "log p(target): page {shown}, API {lp}");
    let provenance = d.text("#provenance");
    for part in [
        "SmolLM2",
        "Shapley values",
        "seed 0",
        "repeats 1",
        "“ reject the application",
    ] {
        assert!(
            provenance.contains(part),
            "the facts line says {part}: {provenance}"
        );
    }
    assert!(
        d.text("#progress-text").starts_with("Done"),
        "the run ended with its summary"
    );

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

    check_stale(d);
    check_audits(d, &base, root);
    // The link is written a moment after each change: wait for the audit the form holds now
    // (the one-placeholder audit), not the grid's that ran before it.
    d.wait(
        "new URLSearchParams(location.hash.slice(1)).get('audit') === JSON.stringify(buildAudit()) \
         && new URLSearchParams(location.hash.slice(1)).get('rerun') === '1'",
        Duration::from_secs(5),
        "the link to hold the audit",
    );

    // The link holds the probe: opening it restores the form and the job's result.
    d.wait(
        "new URLSearchParams(location.hash.slice(1)).get('req') === JSON.stringify(buildRequest()) \
         && new URLSearchParams(location.hash.slice(1)).has('job')",
        Duration::from_secs(5),
        "the link to hold the form and the job",
    );
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
    // The link restores the audit and runs it again.
    let rows = d.wait(
        "document.querySelectorAll('#audit-chart .audit-row').length",
        Duration::from_secs(SLOW),
        "the shared link to re-run the audit",
    );
    assert_eq!(rows, json!(5), "the link re-runs the audit");
    let audit = d.js("return buildAudit()", json!([]));
    assert_eq!(
        audit["targets"],
        json!([" hire", " reject"]),
        "the link restores the audit"
    );
    check_mobile(d, root);

    // An invalid template: the server's message next to the template field, the page intact.
    // "ü" is two bytes: the server counts bytes, the page says characters.
    let bad = "Müller {name} from {country applied for a job as a {job}.";
    d.type_into("#template", bad);
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
    let brace = bad.find("{country").unwrap();
    let character = bad[..brace].chars().count() + 1;
    assert!(
        err.as_str().unwrap().contains(&format!("character {character}")),
        "the error counts characters, like the page: {err}"
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
    check_chat(d, &base, root);
    urls.extend(d.requested());
    let t_contrast = Instant::now();
    check_contrast(d, &base, root);
    println!(
        "the contrast check took {:.1} s",
        t_contrast.elapsed().as_secs_f64()
    );
    check_sources(d, &base);

    // Nothing left 127.0.0.1 (requests of every page load), and no script error.
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
    let errors: Vec<Value> = d
        .browser_log()
        .into_iter()
        .filter(|e| e["level"] == "SEVERE")
        // Chromium logs every 4xx answer; the page shows those by their fields (checked above).
        .filter(|e| {
            !(e["source"] == "network" && e["message"].as_str().is_some_and(|m| m.contains("status of 4")))
        })
        .collect();
    assert!(errors.is_empty(), "script errors: {errors:?}");
    page.close();
    println!(
        "web_page_runs_t1_in_a_real_browser took {:.1} s",
        t_test.elapsed().as_secs_f64()
    );
}

/// The page's modules import each other one way: no module reaches itself through its imports.
#[test]
fn page_modules_import_one_way() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("static");
    let mut imports = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "js") {
            let text = std::fs::read_to_string(&path).unwrap();
            let deps: Vec<String> = text
                .split("from \"./")
                .skip(1)
                .map(|s| s.split('"').next().unwrap().to_string())
                .collect();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            imports.insert(name, deps);
        }
    }
    assert!(imports.len() > 10, "the page's modules: {imports:?}");
    // Depth-first search; `path` is the chain of imports from the start module.
    fn visit(m: &str, imports: &std::collections::BTreeMap<String, Vec<String>>, path: &mut Vec<String>) {
        if let Some(at) = path.iter().position(|p| p == m) {
            panic!("import loop: {} -> {m}", path[at..].join(" -> "));
        }
        path.push(m.to_string());
        for dep in imports.get(m).into_iter().flatten() {
            visit(dep, imports, path);
        }
        path.pop();
    }
    for m in imports.keys() {
        visit(m, &imports, &mut Vec::new());
    }
}

/// Presses Explain and waits for the run to end; returns the seconds the page says it took
/// ("Done: … in 2.3 s.").
fn run_timed(d: &Driver, what: &str) -> f64 {
    run_on_page(d, what);
    let done = d.text("#progress-text");
    done.rsplit_once(" in ")
        .and_then(|(_, s)| s.strip_suffix(" s."))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no seconds in {done:?}"))
}

/// Every-token mode runs with its defaults: the replacement token is id 0, so the cost preview
/// has a plan, not an error; the page's change from Shapley values to sampling is said next to
/// the methods and undone when the mode is switched back.
fn check_token_mode_defaults(d: &Driver, base: &str) {
    d.set("#seed-template", "t1");
    d.click("input[name=method][value=shapley_values]");
    d.click("input[name=mode][value=tokens]");
    let note = d.wait(
        "!document.querySelector('#method-note').hidden && document.querySelector('#method-note').textContent",
        Duration::from_secs(5),
        "the note on the method the page chose",
    );
    assert!(
        note.as_str().unwrap().contains("Shapley value sampling"),
        "{note}"
    );
    let request = d.js("return buildRequest()", json!([]));
    assert_eq!(request["method"], "shapley_value_sampling", "{request}");
    let (status, plan) = post(base, "/v1/plan", &request);
    assert_eq!(
        status, 200,
        "every-token mode's defaults run as they are: {plan} for {request}"
    );
    d.wait(
        "!!document.querySelector('#plan').dataset.plan && !document.querySelector('#plan').classList.contains('plan-error')",
        Duration::from_secs(20),
        "a cost preview, not an error, for every-token mode's defaults",
    );
    d.click("input[name=mode][value=template]");
    let back = d.js(
        "return [buildRequest().method, document.querySelector('#method-note').hidden]",
        json!([]),
    );
    assert_eq!(
        back,
        json!(["shapley_values", true]),
        "switching back undoes the change"
    );
}

/// An empty placeholder value is flagged next to its field before any run, and Explain stops
/// there, focused on it; "Empty is intended" lets it run. A placeholder added to the template
/// gets the same flag.
fn check_empty_values(d: &Driver) {
    d.set("#seed-template", "t1");
    d.click("input[name=method][value=feature_ablation]");
    d.type_into(".ph[data-name=name] input[type=text]", "x");
    d.js(
        "const e = document.querySelector('.ph[data-name=name] input[type=text]'); e.value = ''; \
         e.dispatchEvent(new Event('input', {bubbles: true}));",
        json!([]),
    );
    let note = d.wait(
        "!document.querySelector('.ph[data-name=name] .empty-value').hidden \
         && document.querySelector('.ph[data-name=name] .empty-value').textContent",
        Duration::from_secs(5),
        "the empty value to be flagged before the run",
    );
    assert!(note.as_str().unwrap().contains("{name} is empty"), "{note}");
    d.click("#run");
    let err = d.wait(
        "document.querySelector('.field-error[data-field=\"values.name\"]').textContent",
        Duration::from_secs(5),
        "Explain to stop at the empty value",
    );
    assert!(err.as_str().unwrap().contains("empty"), "{err}");
    let state = d.js(
        "return [document.activeElement === document.querySelector('.ph[data-name=name] input[type=text]'), \
         document.querySelector('#progress-text').textContent]",
        json!([]),
    );
    assert_eq!(state[0], json!(true), "the empty field has the focus: {state}");
    assert!(state[1].as_str().unwrap().starts_with("Not started"), "{state}");
    d.click(".ph[data-name=name] .empty-value input[type=checkbox]");
    run_on_page(d, "a run with an empty value that is intended");
    let request = d.js("return buildRequest()", json!([]));
    assert_eq!(request["values"]["name"], "", "{request}");

    d.type_into(
        "#template",
        "{name} from {country} applied for a job as a {job}, age {age}.",
    );
    d.wait(
        "!!document.querySelector('.ph[data-name=age]') && !document.querySelector('.ph[data-name=age] .empty-value').hidden",
        Duration::from_secs(5),
        "a new placeholder's empty value to be flagged",
    );
    d.set("#seed-template", "t1");
}

/// Integrated gradients that do not add up: every-token mode, `<|endoftext|>` as the replacement,
/// a few steps. The API's `warnings` says so, and the page shows it above the result with each
/// row's convergence delta against f(input) − f(baseline); the method's line says what its
/// settings mean. The cost preview for the same request then expects about the time it took.
fn check_convergence_warning(d: &Driver, base: &str, root: &Path) {
    d.click("input[name=mode][value=tokens]");
    d.type_into(
        "#text",
        "Georg from Germany applied for the job. The manager decided to",
    );
    d.type_into("#target", " hire");
    d.type_into("#contrast_target", " reject");
    d.type_into("#baseline_token", "<|endoftext|>");
    d.click("input[name=method][value=integrated_gradients]");
    d.type_into("#n_steps", "4");
    let request = d.js("return buildRequest()", json!([]));
    assert_eq!(request["n_steps"], 4, "{request}");
    assert_eq!(request["baseline_token"], "<|endoftext|>", "{request}");
    let (status, api) = post(base, "/v1/attributions", &request);
    assert_eq!(status, 200, "POST /v1/attributions: {api}");
    let warnings = api["warnings"].as_array().expect("a warnings list");
    assert!(
        warnings.iter().any(|w| w["code"] == "convergence_delta"),
        "the API warns of the convergence delta {}: {warnings:?}",
        api["convergence_delta"]
    );
    let seconds = run_timed(d, "integrated gradients");
    let shown = d.wait(
        "!document.querySelector('#result-warnings').hidden && document.querySelector('#result-warnings').textContent",
        Duration::from_secs(5),
        "the warning that the attributions do not add up",
    );
    let shown = shown.as_str().unwrap();
    assert!(
        shown.contains("do not add up") && shown.contains("more steps"),
        "{shown}"
    );
    let delta = d.text("#convergence");
    assert!(
        delta.contains("f(input) − f(baseline)") && delta.contains('%'),
        "{delta}"
    );
    let first = api["convergence_delta"][0].as_f64().unwrap();
    assert!(
        delta.contains(&format!("{:.6}", first.abs())),
        "row 1's delta {first} is shown: {delta}"
    );
    let method = d.text("#method-fact");
    assert!(method.contains("4 steps from the replacement token"), "{method}");
    let provenance = d.text("#provenance");
    assert!(
        provenance.contains("steps 4") && !provenance.contains("seed") && !provenance.contains("repeats"),
        "the provenance gives the settings integrated gradients uses: {provenance}"
    );
    d.js("window.scrollTo(0, 0)", json!([]));
    d.screenshot(&root.join("tests/artifacts/web-convergence.png"));

    // The estimate for the same request is this page's own measured gradient rate (the preview
    // is redrawn when the run ends).
    let start = Instant::now();
    let fits = |text: &str| preview_seconds(text).is_some_and(|n| (n - seconds).abs() <= 1.0);
    let mut expected = d.text("#plan .plan-seconds");
    while !fits(&expected) && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
        expected = d.text("#plan .plan-seconds");
    }
    assert!(
        fits(&expected),
        "the preview expects what the run took ({seconds} s): {expected:?}"
    );
}

/// The seconds a cost preview expects: "about 12 s" (12), "under a second" (0.5).
fn preview_seconds(text: &str) -> Option<f64> {
    if text == "under a second" {
        return Some(0.5);
    }
    text.strip_prefix("about ")?.strip_suffix(" s")?.parse().ok()
}

/// A cancelled audit keeps the last finished one: its chart marked out of date, its exports
/// working, the status saying so. The CSV holds what the chart shows.
fn check_audit_cancel(d: &Driver) {
    d.set("#seed-template", "t1");
    d.type_into("#audit-targets", " hire\n reject");
    let rows = run_page_audit(d, "name");
    assert_eq!(rows.len(), 5);
    // A 30 × 30 audit, cancelled as soon as it runs.
    let names: Vec<String> = (1..=30).map(|k| format!("Name{k}")).collect();
    let countries: Vec<String> = (1..=30).map(|k| format!("Country{k}")).collect();
    d.set("#audit-ph2", "country");
    d.set("#audit-values1", &names.join("\n"));
    d.set("#audit-values2", &countries.join("\n"));
    d.click("#audit-run");
    d.wait(
        "!document.querySelector('#audit-cancel').disabled",
        Duration::from_secs(5),
        "the audit to run",
    );
    d.click("#audit-cancel");
    let status = d.wait(
        "document.querySelector('#audit-run').disabled === false && document.querySelector('#audit-status').textContent",
        Duration::from_secs(60),
        "the cancelled audit to end",
    );
    assert!(status.as_str().unwrap().starts_with("Cancelled"), "{status}");
    assert!(
        status.as_str().unwrap().contains("last finished audit"),
        "{status}"
    );
    let kept = d.js(
        "return [document.querySelectorAll('#audit-chart .audit-row').length, \
         document.querySelector('#audit-chart').classList.contains('stale'), !document.querySelector('#audit-stale').hidden]",
        json!([]),
    );
    assert_eq!(kept, json!([5, true, true]), "the last chart kept, out of date");
    d.js(
        "window.__exports = []; const make = URL.createObjectURL; \
         URL.createObjectURL = (b) => { b.text().then(t => window.__exports.push(t)); return make.call(URL, b); };",
        json!([]),
    );
    d.click("#audit-exports button[data-format=csv]");
    let csv = d.wait("window.__exports[0]", Duration::from_secs(5), "the audit's CSV");
    let head = csv
        .as_str()
        .unwrap()
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    for column in ["name", "measure", "value", "ci_low", "rank", "contexts", "model"] {
        assert!(
            head.split(',').any(|c| c == column),
            "{column} in the CSV: {head}"
        );
    }
    for column in ["method", "seed", "num_trials"] {
        assert!(
            !head.split(',').any(|c| c == column),
            "no {column} in an audit's CSV: {head}"
        );
    }
    d.set("#audit-ph2", "");
    d.set("#audit-values1", "Georg\nJohn\nMaria\nAhmed\nZhang Wei");
    d.set("#seed-template", "t1");
}

/// At a phone's width: after Explain the result is in view (not 3,000 px below the form); the
/// heatmap legend's numbers and the audit's captions are whole.
fn check_phone_flow(d: &Driver, root: &Path) {
    d.resize(390, 844);
    d.set("#seed-template", "t1");
    d.click("input[name=method][value=feature_ablation]");
    d.js("window.scrollTo(0, 0)", json!([]));
    run_on_page(d, "a run on a phone");
    let top = d.js(
        "const r = document.querySelector('#summary').getBoundingClientRect(); return [r.top, window.innerHeight]",
        json!([]),
    );
    let (y, h) = (top[0].as_f64().unwrap(), top[1].as_f64().unwrap());
    let layout = d.js(
        "return Array.from(document.querySelector('#results').children).filter(e => !e.hidden).map(e => [e.id, Math.round(e.getBoundingClientRect().top), Math.round(e.getBoundingClientRect().height)])",
        json!([]),
    );
    assert!(
        (-1.0..h * 0.5).contains(&y),
        "the result is in view after Explain: {top}; what #results shows: {layout}"
    );
    d.screenshot(&root.join("tests/artifacts/web-mobile-result.png"));
    let ticks = d.js(
        "const s = document.querySelector('#heatmap svg.heatmap'); const w = s.width.baseVal.value; \
         return Array.from(s.querySelectorAll('text')).filter(t => t.parentNode === s && t.getAttribute('y') > s.querySelector('.legend').getAttribute('y')) \
         .map(t => { const b = t.getBBox(); return [t.textContent, b.x >= 0 && b.x + b.width <= w]; })",
        json!([]),
    );
    let ticks = ticks.as_array().unwrap();
    assert!(ticks.len() >= 5, "{ticks:?}");
    for t in ticks {
        assert_eq!(t[1], json!(true), "the legend's {} is whole", t[0]);
    }
    // Two swept placeholders (20 prompts): each row's mean has its interval, and the captions say so.
    d.type_into("#audit-targets", " hire\n reject");
    d.set("#audit-ph2", "country");
    d.set("#audit-values2", "Germany\nTogo");
    run_page_audit(d, "name");
    let heads = d.js(
        "return Array.from(document.querySelectorAll('#audit-chart svg.audit-summary > text')) \
         .filter(t => t.classList.contains('audit-head') || +t.getAttribute('y') < 60).map(t => t.textContent)",
        json!([]),
    );
    let heads: Vec<&str> = heads
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let joined = heads.join(" ");
    assert!(
        joined.contains("95% intervals of the means") && !joined.contains('…'),
        "the audit's captions are whole: {heads:?}"
    );
    d.js(
        "document.querySelector('#audit-chart').scrollIntoView()",
        json!([]),
    );
    d.screenshot(&root.join("tests/artifacts/web-mobile-audit-intervals.png"));
    d.set("#audit-ph2", "");
    d.resize(1400, 1000);
}

/// Issue 24's fixes, each checked on its own (a failing check does not hide the others): what
/// misleads is said, stale and silent states are gone, the phone flow reaches its result.
#[test]
fn web_page_flags_what_misleads() {
    let t_test = Instant::now();
    let Some(page) = Page::open() else { return };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (d, base) = (&page.driver, page.base.as_str());
    type Check<'a> = Box<dyn Fn() + 'a>;
    let checks: Vec<(&str, Check)> = vec![
        (
            "every-token mode's defaults",
            Box::new(|| check_token_mode_defaults(d, base)),
        ),
        ("empty values", Box::new(|| check_empty_values(d))),
        (
            "convergence warning and gradient estimate",
            Box::new(|| check_convergence_warning(d, base, root)),
        ),
        ("cancelled audit", Box::new(|| check_audit_cancel(d))),
        ("phone flow", Box::new(|| check_phone_flow(d, root))),
    ];
    let mut failed = Vec::new();
    for (name, check) in &checks {
        let t = Instant::now();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(check));
        println!(
            "check {name}: {} in {:.1} s",
            if outcome.is_ok() { "ok" } else { "FAILED" },
            t.elapsed().as_secs_f64()
        );
        if outcome.is_err() {
            failed.push(*name);
            // A clean page for the next check.
            d.resize(1400, 1000);
            d.go(&format!("{base}/"));
            d.wait(
                "document.body.dataset.ready === '1'",
                Duration::from_secs(20),
                "the page to reload",
            );
        }
    }
    drop(checks);
    page.close();
    println!(
        "web_page_flags_what_misleads took {:.1} s",
        t_test.elapsed().as_secs_f64()
    );
    assert!(failed.is_empty(), "failed checks: {failed:?}");
}
