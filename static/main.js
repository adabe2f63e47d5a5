// llm-attr web page: build an attribute request, run it as a job, draw the results as SVG.
// Plain JS modules, no dependencies, no external requests. This file wires the page up.
// Modules: dom, format, template, state (no page logic); api (server); errors (messages by
// field); form (placeholders, target), tokens (token mode), request (form <-> request, URL);
// job (run, progress, cancel); results, charts, heatmap, bars, compare (drawing); export.

import { api } from "./api.js";
import { fillCompareValues, runCompare } from "./compare.js";
import { $, $$, el, debounce } from "./dom.js";
import { showError } from "./errors.js";
import { onExport } from "./export.js";
import { onTemplateInput, loadSeed, generate } from "./form.js";
import { runJob, cancelJob, reopenJob } from "./job.js";
import { applyRequest, buildRequest, pageState, saveState, readHash, onMethodChange } from "./request.js";
import { drawAll } from "./results.js";
import { state, valuesOf } from "./state.js";
import { parseTemplate, renderTemplate } from "./template.js";
import { setMode, tokenizeSoon } from "./tokens.js";

async function loadModelInfo() {
  try {
    const info = await api("GET", "/v1/model");
    const name = (info.spec || "").split(/[\\/]/).pop() || info.spec;
    const params = info.parameters ? `${Math.round(info.parameters / 1e6)}M parameters` : "";
    $("#model-info").textContent = [name, info.architecture, params, info.dtype].filter(Boolean).join(" · ");
  } catch (err) {
    if (err.status === 503) {
      $("#model-info").textContent = "Loading the model…";
      setTimeout(loadModelInfo, 1000);
    } else {
      $("#model-info").textContent = err.status === 401 ? "API key needed (see Connection)" : "Model not reachable";
    }
  }
}

async function start() {
  $("#probe").addEventListener("submit", runJob);
  $("#cancel").addEventListener("click", cancelJob);
  $("#template").addEventListener("input", () => {
    delete $("#err-template").dataset.server;
    onTemplateInput();
    saveState();
  });
  $("#seed-template").addEventListener("change", (e) => e.target.value && loadSeed(e.target.value));
  $("#generate").addEventListener("click", generate);
  for (const input of $$("input[name=mode]")) {
    input.addEventListener("change", () => {
      if (input.value === "tokens" && $("#text").value === "") {
        const { names, error } = parseTemplate($("#template").value);
        if (!error) $("#text").value = renderTemplate($("#template").value, valuesOf(names));
      }
      setMode(input.value);
      saveState();
    });
  }
  $("#text").addEventListener("input", () => {
    tokenizeSoon();
    saveState();
  });
  $("#baseline_token").addEventListener("input", saveState);
  $("#compare-run").addEventListener("click", runCompare);
  $("#compare-cancel").addEventListener("click", () => state.compareAbort?.abort());
  $("#compare-ph").addEventListener("change", () => {
    fillCompareValues(true);
    saveState();
  });
  $("#compare-values").addEventListener("input", (e) => {
    e.target.dataset.edited = "1";
    saveState();
  });
  for (const input of $$("input[name=method]")) input.addEventListener("change", onMethodChange);
  for (const id of ["target", "max_new_tokens", "n_samples", "seed", "attr_target", "baseline_sampling", "num_trials"]) {
    $(`#${id}`).addEventListener("input", saveState);
    $(`#${id}`).addEventListener("change", saveState);
  }
  $("#target").addEventListener("input", () => ($("#generated").hidden = true));
  // Editing a field clears its server message.
  document.addEventListener("input", (e) => {
    const ids = (e.target.getAttribute?.("aria-describedby") || "").split(/\s+/);
    for (const id of ids) {
      const box = id && document.getElementById(id);
      if (box?.classList.contains("field-error") && box.dataset.server) {
        box.textContent = "";
        delete box.dataset.server;
        e.target.removeAttribute("aria-invalid");
      }
    }
  });
  $("#results").addEventListener("click", onExport);
  $("#share").addEventListener("click", async () => {
    history.replaceState(null, "", `#${pageState()}`);
    try {
      await navigator.clipboard.writeText(location.href);
      $("#progress-text").textContent = "Link copied: it opens this probe with every setting.";
    } catch {
      $("#progress-text").textContent = "The address bar now holds a link to this probe.";
    }
  });
  const key = $("#api-key");
  key.value = sessionStorage.getItem("llm-attr-key") || "";
  key.addEventListener("change", () => {
    sessionStorage.setItem("llm-attr-key", key.value.trim());
    loadModelInfo();
    loadTemplates();
  });
  window.addEventListener("resize", debounce(drawAll, 150));

  const hash = readHash();
  if (hash.req) applyRequest(hash.req);
  else onMethodChange();
  loadModelInfo();
  await loadTemplates(hash);
  if (hash.cmp && state.names.includes(hash.cmp.placeholder)) {
    $("#compare-ph").value = hash.cmp.placeholder;
    if (Array.isArray(hash.cmp.values)) {
      $("#compare-values").value = hash.cmp.values.join("\n");
      $("#compare-values").dataset.edited = "1";
    }
  }
  if (hash.bad) showError({ message: "The link is damaged; starting from a seed template." });
  if (hash.job) reopenJob(hash.job, hash.req);
  document.body.dataset.ready = "1";
}

async function loadTemplates(hash = {}) {
  try {
    const { templates } = await api("GET", "/v1/templates");
    state.templates = templates || [];
  } catch (err) {
    state.templates = [];
    $("#err-template").textContent = `Seed templates unavailable: ${err.message}`;
  }
  const sel = $("#seed-template");
  const keep = sel.value;
  sel.replaceChildren(el("option", { value: "", text: "Your own template" }),
    ...state.templates.map((t) => el("option", { value: t.id, text: `${t.id} · ${t.title}` })));
  if (hash.req) {
    const seed = state.templates.find((t) => t.id === hash.seed && t.template === hash.req.template);
    sel.value = seed ? seed.id : "";
  } else if (keep) sel.value = keep;
  else if (state.templates.length && !$("#template").value) loadSeed(state.templates[0].id);
}

// The request the form describes, for the browser console (and the page tests).
window.buildRequest = buildRequest;

start();
