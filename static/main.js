// llm-attr web page: build an attribute request or an audit, run it as a job, draw the results as
// SVG. Plain JS modules, no dependencies, no external requests. This file wires the page up.
//
// Imports go one way, top to bottom (no module imports one above it):
//   main -> run, audit, sources -> results, auditview, export -> convergence, heatmap, bars -> charts
//        -> form, target, plan -> tokens -> link -> request -> state, template, dom, format
//        -> job -> api;  errors, progress, provenance beside them.
// state.js owns the shared state; modules that change inputs call changed(), and main.js decides
// what follows (save the link, mark results stale, refresh previews).

import { api } from "./api.js";
import { applyAudit, cancelAudit, drawAudit, fillValues, markAuditStale, refreshAuditControls, runAudit } from "./audit.js";
import { $, $$, debounce, el } from "./dom.js";
import { showError } from "./errors.js";
import { onExport } from "./export.js";
import { applyRequest, chatAllowed, forgetMethodSwap, currentSeed, fillSeeds, generate, loadSeed, onInputChanged, setMode, switchMode, updateMethodFields } from "./form.js";
import { pageState, readHash, saveState } from "./link.js";
import { previewInto } from "./plan.js";
import { METHODS, auditSweep, auditTargets, buildAudit, buildRequest, promptText, targetText } from "./request.js";
import { drawResult, markResultStale } from "./results.js";
import { cancelRun, forgetEnded, reopenJob, runJob } from "./run.js";
import { wireSources } from "./sources.js";
import { state, onChange, changed } from "./state.js";
import { drawSpaceWarning, drawTokens } from "./target.js";
import { tokenizeSoon } from "./tokens.js";

async function loadModelInfo() {
  try {
    const info = await api("GET", "/v1/model");
    state.model = info;
    const name = (info.spec || "").split(/[\\/]/).pop() || info.spec;
    const params = info.parameters ? `${Math.round(info.parameters / 1e6)}M parameters` : "";
    $("#model-info").textContent = [name, info.architecture, params, info.dtype].filter(Boolean).join(" · ");
    showChatAvailability();
    showGradientMethods();
    fillSeeds($("#seed-template").value);
  } catch (err) {
    if (err.status === 503) {
      $("#model-info").textContent = "Loading the model…";
      setTimeout(loadModelInfo, 1000);
    } else {
      $("#model-info").textContent = err.status === 401 ? "API key needed (see Connection)" : "Model not reachable";
    }
  }
}

/** A model without gradients (one an inference server serves) hides the gradient methods; one
 * of them chosen before falls back to feature ablation. */
function showGradientMethods() {
  const off = state.model?.gradients === false;
  for (const input of $$('input[name="method"]')) {
    if (!METHODS[input.value]?.gradient) continue;
    input.closest("label").hidden = off;
    if (off && input.checked) {
      const fa = $('input[name="method"][value="feature_ablation"]');
      fa.checked = true;
      fa.dispatchEvent(new Event("change", { bubbles: true }));
    }
  }
}

/** Chat mode is hidden where the model has no chat template, and warned about where it is unknown. */
function showChatAvailability() {
  $("#mode-chat-label").hidden = !chatAllowed() && state.mode !== "chat";
  const unknown = state.model && state.model.chat_template === undefined;
  const box = $("#chat-warning");
  box.hidden = state.mode !== "chat" || !(unknown || !chatAllowed());
  box.textContent = chatAllowed()
    ? "This server does not say whether the model has a chat template: it may refuse chat messages."
    : "This model has no chat template: the server will refuse chat messages.";
}

async function loadTemplates(hash = {}) {
  try {
    const { templates } = await api("GET", "/v1/templates");
    state.templates = templates || [];
  } catch (err) {
    state.templates = [];
    $("#err-template").textContent = `Seed templates unavailable: ${err.message}`;
  }
  const keep = $("#seed-template").value;
  fillSeeds(keep);
  if (hash.req) {
    const seed = state.templates.find((t) => t.id === hash.seed);
    const same = seed && (seed.template === hash.req.template || JSON.stringify(seed.messages) === JSON.stringify(hash.req.messages));
    $("#seed-template").value = same ? seed.id : "";
  } else if (!keep && state.templates.length && !$("#template").value) loadSeed(state.templates[0].id);
}

/** The tokens of a continuation `field`, and the leading-space warning (with its fix) about it. */
function previewContinuation(field, tokensBox, warningBox, prompt, seedNote = "") {
  const text = field.value;
  drawTokens(tokensBox, text);
  drawSpaceWarning(warningBox, prompt, text, {
    seedNote,
    fix: () => {
      field.value = ` ${text}`;
      changed();
    },
  });
}

/** The tokens and the leading-space warnings of the target, the contrast and the audit's targets. */
function previewTargets() {
  const prompt = promptText();
  const target = $("#target").value;
  const seed = currentSeed();
  const seedNote = seed && seed.target === target ? "This is the seed's target as Captum's tutorial wrote it, without the space." : "";
  previewContinuation($("#target"), $("#target-tokens"), $("#space-warning"), prompt, seedNote);
  previewContinuation($("#contrast_target"), $("#contrast-tokens"), $("#contrast-space-warning"), prompt);
  if (state.mode === "tokens") return;
  const targets = auditTargets();
  const box = $("#audit-target-tokens");
  box.replaceChildren(...targets.map((t) => {
    const row = el("div", { class: "target-row" });
    drawTokens(row, t);
    return row;
  }));
  const lacking = targets.find((t) => !/^\s/.test(t));
  drawSpaceWarning($("#audit-space-warning"), prompt, lacking ?? "", {
    fix: () => {
      $("#audit-targets").value = targets.map((t) => (/^\s/.test(t) ? t : ` ${t}`)).join("\n");
      $("#audit-targets").dataset.edited = "1";
      changed();
    },
  });
}

function previewCosts() {
  previewInto($("#plan"), buildRequest());
  const sweep = auditSweep();
  if (state.mode !== "tokens" && sweep.length && sweep.every(([, v]) => v.length) && auditTargets().length) {
    previewInto($("#audit-plan"), buildAudit());
  } else $("#audit-plan").replaceChildren();
}

const previewSoon = debounce(() => {
  previewTargets();
  previewCosts();
}, 300);

/** What follows any change of the inputs. */
function onInputs() {
  saveState();
  forgetEnded();
  refreshAuditControls();
  markResultStale(buildRequest());
  if (state.mode !== "tokens") markAuditStale(buildAudit());
  showChatAvailability();
  previewSoon();
}

/** Editing a field clears the server's message about it. */
function clearServerMessage(e) {
  const ids = (e.target.getAttribute?.("aria-describedby") || "").split(/\s+/);
  for (const id of ids) {
    const box = id ? document.getElementById(id) : null;
    if (box?.classList.contains("field-error") && box.dataset.server) {
      box.textContent = "";
      delete box.dataset.server;
      e.target.removeAttribute("aria-invalid");
    }
  }
}

async function share() {
  history.replaceState(null, "", `#${pageState()}`);
  try {
    await navigator.clipboard.writeText(location.href);
    $("#progress-text").textContent = "Link copied: it opens this probe (and re-runs its audit) with every setting.";
  } catch {
    $("#progress-text").textContent = "The address bar now holds a link to this probe.";
  }
}

function wire() {
  $("#probe").addEventListener("submit", runJob);
  $("#cancel").addEventListener("click", cancelRun);
  for (const id of ["template", "system", "user"]) $(`#${id}`).addEventListener("input", onInputChanged);
  $("#seed-template").addEventListener("change", (e) => e.target.value && loadSeed(e.target.value));
  $("#generate").addEventListener("click", generate);
  for (const input of $$("input[name=mode]")) input.addEventListener("change", () => switchMode(input.value));
  $("#text").addEventListener("input", tokenizeSoon);
  for (const input of $$("input[name=method]")) {
    input.addEventListener("change", () => {
      forgetMethodSwap();
      updateMethodFields();
    });
  }
  $("#baseline_mode").addEventListener("change", () => ($("#baseline_token").disabled = $("#baseline_mode").value === "remove"));
  $("#baseline_sampling").addEventListener("change", updateMethodFields);
  $("#target").addEventListener("input", () => ($("#generated").hidden = true));
  $("#audit-run").addEventListener("click", runAudit);
  wireSources();
  $("#audit-cancel").addEventListener("click", cancelAudit);
  for (const k of [1, 2]) {
    $(`#audit-ph${k}`).addEventListener("change", () => {
      refreshAuditControls();
      fillValues(k, true);
      if (k === 1) fillValues(2, false);
    });
  }
  // Edited lists stop following the form (a cleared field counts: "change" comes without "input").
  for (const id of ["audit-values1", "audit-values2", "audit-targets"]) {
    for (const kind of ["input", "change"]) $(`#${id}`).addEventListener(kind, (e) => (e.target.dataset.edited = "1"));
  }
  document.addEventListener("input", clearServerMessage);
  for (const scope of ["#probe", "#audit-card"]) {
    $(scope).addEventListener("input", changed);
    $(scope).addEventListener("change", changed);
  }
  $("#results").addEventListener("click", onExport);
  $("#share").addEventListener("click", share);
  const key = $("#api-key");
  key.value = sessionStorage.getItem("llm-attr-key") || "";
  key.addEventListener("change", () => {
    sessionStorage.setItem("llm-attr-key", key.value.trim());
    loadModelInfo();
    loadTemplates();
  });
  window.addEventListener("resize", debounce(() => {
    drawResult();
    drawAudit();
  }, 150));
  onChange(onInputs);
}

async function start() {
  wire();
  const hash = readHash();
  if (hash.req) applyRequest(hash.req);
  else {
    setMode("template");
    updateMethodFields();
  }
  loadModelInfo();
  await loadTemplates(hash);
  if (hash.audit) applyAudit(hash.audit);
  changed();
  if (hash.bad) showError({ message: "The link is damaged; starting from a seed template." });
  document.body.dataset.ready = "1";
  if (hash.audit && hash.rerun) runAudit();
  if (hash.job) reopenJob(hash.job, hash.req);
}

// The requests the form describes, for the browser console (and the page tests).
window.buildRequest = buildRequest;
window.buildAudit = buildAudit;
window.targetText = targetText;

start();
