"""Attributions computed from an inference server's own prompt log-probs, independently of
llm-attr: the reference that llm-attr's remote scoring backend is checked against.

Nothing here imports llm-attr or shares its code. The script builds every perturbed prompt the
way Captum's TextTemplateInput does (the template formatted with values and baselines, the whole
text tokenized at once with the model's tokenizer.json, the target tokenized separately without
special tokens), asks the server for the log-probs of the target tokens after each prompt, and
combines them by each method's textbook formula.

Needs only the standard library, numpy, `tokenizers` and (for chat input) jinja2; torch and
transformers only for `compare`.

    PY=/work/torchenv/bin/python        # or any env with numpy, tokenizers, jinja2
    URL=$(scripts/inference-server.sh 8011 MODEL)    # prints e.g. http://127.0.0.1:8011/v1
    # log-probs of given token ids (one JSON object per line: {"prompt_ids", "target_ids"}):
    $PY scripts/reference/remote_reference.py logprobs --server $URL < items.jsonl
    # a method on a case (JSON, see CASE below; examples/t1.json works as it is):
    $PY scripts/reference/remote_reference.py attribute --server $URL \
        --tokenizer DIR --case examples/t1.json [--method kernel_shap --design design.json]
    # an audit grid (llm-attr's audit request JSON, e.g. examples/audit.json):
    $PY scripts/reference/remote_reference.py audit --server $URL --tokenizer DIR --case AUDIT.json
    # the server against transformers on the same weights and token ids:
    $PY scripts/reference/remote_reference.py compare --server $URL --hf-dir DIR

CASE: llm-attr's request JSON: `template` (or chat `messages` + `add_generation_prompt`,
default true), `values`, `baselines` (a string or a list per placeholder; absent = ""),
`target` (or `target_ids`), optional `contrast_target`, `attr_target` ("log_prob" or "prob"),
`method`. Baselines are always expanded exactly (llm-attr's `baseline_sampling: "exact"`): a
coalition's value is the mean, over every combination of the absent placeholders' baselines, of
`[log p(target), log p(target token k)...]` (minus the contrast's, when there is one).

Sampling methods are reproducible only with their random design given explicitly (--design, a
JSON object): llm-attr draws it from a ChaCha8 stream that this script does not reimplement;
`llm_attr::sampling_design(method, n_features, n_samples, seed)` gives a request's design in
this very JSON (serde of `llm_attr::SamplingDesign`; tests/remote_real.rs passes it here).
- shapley_value_sampling: `{"permutations": [[feature index, ...], ...]}`;
- lime, kernel_shap: `{"coalitions": [[true/false per feature], ...]}` (for kernel_shap the
  first two are the full and the empty coalition, as llm-attr draws them).
Feature ablation and exact Shapley values need no design.

Output (stdout, JSON): `features` (placeholder names in order of first appearance),
`attr[o][f]` (o = 0 the sequence, then one row per target token, then per contrast token),
`prompt_ids`, `target_ids`, `sequences` (distinct prompts scored), `requests`.
"""
import argparse
import itertools
import json
import math
import os
import re
import sys
import urllib.error
import urllib.request

import numpy as np

# ---------------------------------------------------------------------------- the server


def http_json(url, body=None, timeout=600):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


class Server:
    """Prompt log-probs from an OpenAI-compatible server, by token ids.

    `vllm`: /v1/completions with a list of token-id prompts and `prompt_logprobs: 0`; entry i of
    `choices[j].prompt_logprobs` is log p(prompt token i | tokens before it) (entry 0 is null).
    `openai-echo`: the legacy form, one prompt per request, `echo: true, logprobs: 0`; entry i of
    `logprobs.token_logprobs` is read as log p(token i | tokens before it), which is what the
    OpenAI API promises (llama-cpp-python breaks that promise: see docs in the note)."""

    def __init__(self, base, protocol="vllm", model=None, batch=64, tokenizer_dir=None):
        self.base = base.rstrip("/")
        # llama-cpp-python's server takes text prompts only: then the ids are decoded to text
        # and the echoed tokens are checked against them.
        self.tok = None
        if tokenizer_dir and protocol == "openai-echo-text":
            from tokenizers import Tokenizer
            self.tok = Tokenizer.from_file(os.path.join(tokenizer_dir, "tokenizer.json"))
        if not self.base.endswith("/v1"):
            self.base += "/v1"
        self.protocol = protocol
        self.model = model or self.only_model()
        self.batch = batch
        self.requests = 0

    def only_model(self):
        ids = [m["id"] for m in http_json(self.base + "/models")["data"]]
        if len(ids) != 1:
            sys.exit(f"the server lists {len(ids)} models ({ids}); give --model")
        return ids[0]

    def logprobs(self, sequences):
        """Per sequence (a list of token ids), log p of tokens 1.. given the tokens before."""
        out = []
        if self.protocol == "vllm":
            for i in range(0, len(sequences), self.batch):
                out.extend(self._vllm(sequences[i:i + self.batch]))
        else:
            out.extend(self._echo(s) for s in sequences)
        return out

    def _vllm(self, chunk):
        body = {"model": self.model, "prompt": chunk, "max_tokens": 1, "temperature": 0,
                "prompt_logprobs": 0}
        self.requests += 1
        choices = sorted(http_json(self.base + "/completions", body)["choices"],
                         key=lambda c: c["index"])
        res = []
        for seq, c in zip(chunk, choices):
            plp = c["prompt_logprobs"]
            if len(plp) != len(seq):
                raise ValueError(f"{len(plp)} prompt log-probs for {len(seq)} tokens")
            res.append([plp[i][str(seq[i])]["logprob"] for i in range(1, len(seq))])
        return res

    def _echo(self, seq):
        prompt = self.tok.decode(seq, skip_special_tokens=False) if self.tok else seq
        body = {"model": self.model, "prompt": prompt, "max_tokens": 1, "temperature": 0,
                "echo": True, "logprobs": 0}
        self.requests += 1
        lp = http_json(self.base + "/completions", body)["choices"][0]["logprobs"]
        vals = lp["token_logprobs"]
        if len(vals) < len(seq):
            raise ValueError(f"{len(vals)} echoed log-probs for {len(seq)} prompt tokens")
        if self.tok:
            mine = [self.tok.decode([t], skip_special_tokens=False) for t in seq]
            if lp["tokens"][:len(seq)] != mine:
                raise ValueError(f"the server tokenized differently: {lp['tokens'][:len(seq)]} vs {mine}")
        return [float(v) for v in vals[1:len(seq)]]

    def target_logprobs(self, prompts, targets):
        """log p(target[k] | prompt, target[:k]) for every prompt and every target."""
        seqs = [p + t for p in prompts for t in targets]
        lps = self.logprobs(seqs)
        res, i = [], 0
        for p in prompts:
            row = []
            for t in targets:
                row.append(lps[i][len(p) - 1:len(p) - 1 + len(t)])
                i += 1
            res.append(row)
        return res


# ---------------------------------------------------------------------------- the input

PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")


def parse_template(text):
    """[("text", s) | ("slot", name)], with {{ and }} as literal braces."""
    pieces, pos = [], 0
    for m in PLACEHOLDER.finditer(text):
        pieces.append(("text", text[pos:m.start()]))
        pieces.append(("slot", m.group(1)) if m.group(1) else ("text", m.group(0)[0]))
        pos = m.end()
    pieces.append(("text", text[pos:]))
    return pieces


def render_chat(messages, tokenizer_dir, add_generation_prompt=True):
    """The chat template (chat_template.jinja, or tokenizer_config.json's) rendered as
    transformers' apply_chat_template does (trim_blocks, lstrip_blocks)."""
    import jinja2
    path = os.path.join(tokenizer_dir, "chat_template.jinja")
    if os.path.exists(path):
        src = open(path).read()
    else:
        src = json.load(open(os.path.join(tokenizer_dir, "tokenizer_config.json")))["chat_template"]
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True,
                             extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = lambda m: (_ for _ in ()).throw(ValueError(m))
    return env.from_string(src).render(messages=messages, add_generation_prompt=add_generation_prompt)


class Case:
    """A template, its values and baselines, and the target(s)."""

    def __init__(self, spec, tokenizer_dir):
        from tokenizers import Tokenizer
        self.tok = Tokenizer.from_file(os.path.join(tokenizer_dir, "tokenizer.json"))
        if "messages" in spec:
            text = render_chat(spec["messages"], tokenizer_dir, spec.get("add_generation_prompt", True))
        else:
            text = spec["template"]
        self.pieces = parse_template(text)
        self.features = list(dict.fromkeys(n for k, n in self.pieces if k == "slot"))
        self.values = spec["values"]
        base = spec.get("baselines", {})
        self.baselines = {n: ([base[n]] if isinstance(base.get(n, ""), str) else base[n])
                          if n in base else [""] for n in self.features}
        self.target = spec.get("target_ids") or self.encode(spec["target"], False)
        self.contrast = self.encode(spec["contrast_target"], False) if spec.get("contrast_target") else None
        self.prob = spec.get("attr_target", "log_prob") == "prob"

    def encode(self, text, special=True):
        return self.tok.encode(text, add_special_tokens=special).ids

    def render(self, choice):
        """choice[name] = None (its value) or a baseline index."""
        return "".join(s if k == "text" else
                       (self.values[s] if choice[s] is None else self.baselines[s][choice[s]])
                       for k, s in self.pieces)

    def prompts(self, coalition):
        """Every prompt of `coalition` (a bool per feature): the product of the absent
        features' baselines."""
        absent = [f for f, keep in zip(self.features, coalition) if not keep]
        out = []
        for combo in itertools.product(*(range(len(self.baselines[f])) for f in absent)):
            choice = {f: None for f in self.features}
            choice.update(zip(absent, combo))
            out.append(tuple(self.encode(self.render(choice))))
        return out

    def targets(self):
        return [self.target] + ([self.contrast] if self.contrast else [])

    def value(self, per_target):
        """[sequence, target tokens..., minus contrast tokens...] from the log-probs of each
        continuation."""
        f = (lambda x: math.exp(x)) if self.prob else (lambda x: x)
        seq = f(sum(per_target[0]))
        row = [f(x) for x in per_target[0]]
        if self.contrast:
            seq -= f(sum(per_target[1]))
            row += [-f(x) for x in per_target[1]]
        return [seq] + row


class Game:
    """Coalition values through the server; every distinct prompt is scored once."""

    def __init__(self, case, server):
        self.case, self.server, self.scores = case, server, {}

    def values(self, coalitions):
        expansions = [self.case.prompts(c) for c in coalitions]
        new = list(dict.fromkeys(p for ps in expansions for p in ps if p not in self.scores))
        if new:
            lps = self.server.target_logprobs([list(p) for p in new], self.case.targets())
            self.scores.update(zip(new, lps))
        return np.array([np.mean([self.case.value(self.scores[p]) for p in ps], axis=0)
                         for ps in expansions])


# ---------------------------------------------------------------------------- the methods


def feature_ablation(game, n):
    coalitions = [[True] * n] + [[j != i for j in range(n)] for i in range(n)]
    v = game.values(coalitions)
    return (v[0] - v[1:]).T


def shapley_values(game, n):
    coalitions = [[bool(b >> i & 1) for i in range(n)] for b in range(1 << n)]
    v = game.values(coalitions)
    attr = np.zeros((v.shape[1], n))
    for b in range(1 << n):
        s = bin(b).count("1")
        for i in range(n):
            if not b >> i & 1:
                w = math.factorial(s) * math.factorial(n - s - 1) / math.factorial(n)
                attr[:, i] += w * (v[b | 1 << i] - v[b])
    return attr


def shapley_value_sampling(game, n, permutations):
    coalitions = [[False] * n]
    for perm in permutations:
        c = [False] * n
        for f in perm:
            c[f] = True
            coalitions.append(list(c))
    v = game.values(coalitions)
    attr = np.zeros((v.shape[1], n))
    for p, perm in enumerate(permutations):
        prev = v[0]
        for k, f in enumerate(perm):
            cur = v[1 + p * n + k]
            attr[:, f] += cur - prev
            prev = cur
    return attr / len(permutations)


def lime_weight(c):
    """exp(-d^2/2), d the cosine distance between the all-ones row and the coalition."""
    n, k = len(c), sum(c)
    cos = 0.0 if k == 0 else k / (math.sqrt(n) * math.sqrt(k))
    return math.exp(-(1 - cos) ** 2 / 2)


def weighted_centre(x, y, w):
    xm = (w[:, None] * x).sum(0) / w.sum()
    ym = (w[:, None] * y).sum(0) / w.sum()
    return x - xm, y - ym


def kernel_shap(game, n, coalitions):
    """Weighted least squares with an intercept; weight 1e6 on the empty and full coalitions,
    1 elsewhere; the minimum-norm solution when the design is rank deficient."""
    x = np.array(coalitions, dtype=float)
    w = np.array([1e6 if sum(c) in (0, n) else 1.0 for c in coalitions])
    y = game.values(coalitions)
    xc, yc = weighted_centre(x, y, w)
    sw = np.sqrt(w)[:, None]
    coef, *_ = np.linalg.lstsq(xc * sw, yc * sw, rcond=1e-11)
    return coef.T


def lasso(x, y, w, alpha, iters=100000, tol=1e-14):
    """argmin 1/(2 sum w) sum w_i (y_i - b - x_i.c)^2 + alpha |c|_1 (scikit-learn's Lasso with
    sample_weight), by cyclic coordinate descent to `tol`."""
    xc, yc = weighted_centre(x, y[:, None], w)
    yc, total = yc[:, 0], w.sum()
    z = (w[:, None] * xc * xc).sum(0) / total
    c = np.zeros(x.shape[1])
    r = yc.copy()
    for _ in range(iters):
        biggest = 0.0
        for j in range(x.shape[1]):
            if z[j] <= 1e-300:
                continue
            rho = (w * xc[:, j] * r).sum() / total + z[j] * c[j]
            new = np.sign(rho) * max(abs(rho) - alpha, 0.0) / z[j]
            if new != c[j]:
                r -= xc[:, j] * (new - c[j])
                biggest = max(biggest, abs(new - c[j]))
                c[j] = new
        if biggest <= tol * max(np.abs(y).max(), 1e-300):
            break
    return c


def lime(game, n, coalitions, alpha=0.01):
    x = np.array(coalitions, dtype=float)
    w = np.array([lime_weight(c) for c in coalitions])
    y = game.values(coalitions)
    return np.array([lasso(x, y[:, o], w, alpha) for o in range(y.shape[1])])


def attribute(case, server, method, design=None):
    game, n = Game(case, server), len(case.features)
    if method == "feature_ablation":
        attr = feature_ablation(game, n)
    elif method == "shapley_values":
        attr = shapley_values(game, n)
    elif method == "shapley_value_sampling":
        attr = shapley_value_sampling(game, n, design["permutations"])
    elif method == "kernel_shap":
        attr = kernel_shap(game, n, design["coalitions"])
    elif method == "lime":
        attr = lime(game, n, design["coalitions"])
    else:
        sys.exit(f"method {method!r} is not computed here")
    full = case.prompts([True] * n)[0]
    return {"method": method, "features": case.features, "attr": attr.tolist(),
            "prompt_ids": list(full), "target_ids": case.target,
            "contrast_target_ids": case.contrast,
            "target_logprobs": game.scores.get(full, [None])[0],
            "sequences": len(game.scores) * len(case.targets()), "requests": server.requests}


# ---------------------------------------------------------------------------- audits


def audit(spec, tokenizer_dir, server):
    """llm-attr's audit grid: the product of the `sweep` lists (template order, the last
    placeholder fastest); per cell and target, log p(target) (mean over the product of the other
    placeholders' `baselines` with `contexts: "average"`, else at their values), `contrast` =
    targets[0] minus targets[1]; with a `method`, each cell attributed with targets[0] against
    targets[1], a swept placeholder's baselines being the other values of its list."""
    names = list(dict.fromkeys(n for k, n in parse_template(spec["template"]) if k == "slot"))
    swept = [n for n in names if n in spec["sweep"]]
    others = [n for n in names if n not in spec["sweep"]]
    average = spec.get("contexts", "single") == "average"
    cells = []
    for combo in itertools.product(*(spec["sweep"][n] for n in swept)):
        values = dict(spec.get("values", {}), **dict(zip(swept, combo)))
        cell_spec = {"template": spec["template"], "values": values,
                     "baselines": {n: spec.get("baselines", {}).get(n, "") for n in others}}
        case = Case(dict(cell_spec, target=spec["targets"][0]), tokenizer_dir)
        targets = [case.encode(t, False) for t in spec["targets"]]
        prompts = case.prompts([n in swept or not average for n in names])
        lps = server.target_logprobs([list(p) for p in prompts], targets)
        log_prob = {t: float(np.mean([sum(row[i]) for row in lps])) for i, t in enumerate(spec["targets"])}
        cell = {"values": dict(zip(swept, combo)), "log_prob": log_prob, "prompts": len(prompts)}
        if len(targets) > 1:
            cell["contrast"] = log_prob[spec["targets"][0]] - log_prob[spec["targets"][1]]
        if spec.get("method"):
            base = dict(cell_spec["baselines"], **{n: [v for v in spec["sweep"][n] if v != values[n]]
                                                   for n in swept})
            attr_spec = dict(cell_spec, baselines=base, target=spec["targets"][0],
                             attr_target=spec.get("attr_target", "log_prob"))
            if len(targets) > 1:
                attr_spec["contrast_target"] = spec["targets"][1]
            cell["attribution"] = attribute(Case(attr_spec, tokenizer_dir), server, spec["method"])
        cells.append(cell)
    return {"cells": cells, "requests": server.requests}


# ---------------------------------------------------------------------------- transformers


def transformers_logprobs(hf_dir, sequences):
    """log p of tokens 1.. of each sequence, float32 forward, float64 log-softmax."""
    import torch
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for s in sequences:
            lp = torch.log_softmax(model(torch.tensor([s])).logits[0].double(), -1)
            out.append([lp[i - 1, s[i]].item() for i in range(1, len(s))])
    return out


def compare_sequences(tokenizer_dir):
    """Seed templates (t1-t4) with and without a leading space on the target, t1's 125 exact
    prompts' first ones, and the t1 chat prompt: token ids only."""
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(os.path.join(tokenizer_dir, "tokenizer.json"))
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, here)
    texts = [
        ("Georg from Germany applied for a job as a janitor. The hiring manager decided to",
         " reject the application without further consideration."),
        ("Jane who practices Orthodoxy requested time off for a religious holiday. The supervisor of her work as historian",
         " denys the request citing staffing constraints."),
        ("Dave with three children applied for the salesperson position. The employer",
         "offers the position with flexible scheduling accommodations."),
        ("Zhang Wei from Trinidad and Tobago applied for a job as a construction worker. The hiring manager decided to",
         " hire the applicant"),
        (render_chat([{"role": "user", "content": "Georg from Germany applied for a job as a janitor."}],
                     tokenizer_dir), "The hiring manager should reject the application."),
    ]
    return [(tok.encode(p).ids, tok.encode(t, add_special_tokens=False).ids) for p, t in texts]


def compare(server, hf_dir, tokenizer_dir):
    cases = compare_sequences(tokenizer_dir)
    seqs = [p + t for p, t in cases]
    remote = []
    for s in seqs:
        try:
            remote.append(server.logprobs([s])[0])
        except (ValueError, urllib.error.HTTPError) as e:
            remote.append(str(e))
    local = transformers_logprobs(hf_dir, seqs)
    rows, worst = [], 0.0
    for (p, t), r, l in zip(cases, remote, local):
        if isinstance(r, str):
            rows.append({"prompt_ids": p, "target_ids": t, "error": r})
            continue
        d = max(abs(a - b) for a, b in zip(r, l))
        dt = max(abs(a - b) for a, b in zip(r[len(p) - 1:], l[len(p) - 1:]))
        worst = max(worst, d)
        rows.append({"prompt_ids": p, "target_ids": t, "max_abs_diff_all_positions": d,
                     "max_abs_diff_target": dt, "server_target": r[len(p) - 1:],
                     "transformers_target": l[len(p) - 1:]})
    return {"server": server.base, "model": server.model, "protocol": server.protocol,
            "max_abs_diff": worst, "cases": rows}


# ---------------------------------------------------------------------------- CLI


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=["logprobs", "attribute", "audit", "compare"])
    ap.add_argument("--server", required=True, help="base URL, e.g. http://127.0.0.1:8011/v1")
    ap.add_argument("--protocol", default="vllm", choices=["vllm", "openai-echo", "openai-echo-text"],
                    help="openai-echo-text: decode the ids and send text (llama-cpp-python's server)")
    ap.add_argument("--model", help="served model name (default: the only one listed)")
    ap.add_argument("--tokenizer", help="directory with tokenizer.json (and the chat template)")
    ap.add_argument("--case", help="request JSON (attribute)")
    ap.add_argument("--method", help="overrides the case's method")
    ap.add_argument("--design", help="JSON with permutations or coalitions (sampling methods)")
    ap.add_argument("--hf-dir", help="transformers model directory (compare)")
    a = ap.parse_args()
    server = Server(a.server, a.protocol, a.model, tokenizer_dir=a.tokenizer or a.hf_dir)
    if a.command == "logprobs":
        items = [json.loads(line) for line in sys.stdin if line.strip()]
        all_lps = server.logprobs([i["prompt_ids"] + i["target_ids"] for i in items])
        lps = [lp[len(i["prompt_ids"]) - 1:] for i, lp in zip(items, all_lps)]
        json.dump({"target_logprobs": lps, "requests": server.requests}, sys.stdout)
    elif a.command == "attribute":
        spec = json.load(open(a.case))
        design = json.load(open(a.design)) if a.design else None
        res = attribute(Case(spec, a.tokenizer), server, a.method or spec["method"], design)
        json.dump(res, sys.stdout)
    elif a.command == "audit":
        json.dump(audit(json.load(open(a.case)), a.tokenizer, server), sys.stdout)
    else:
        json.dump(compare(server, a.hf_dir, a.tokenizer or a.hf_dir), sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
