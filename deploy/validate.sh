#!/usr/bin/env bash
# Validates the Kubernetes manifests offline against the API schemas of Kubernetes 1.37
# (kubernetes-validate from PyPI ships them; kubeconform is not in any registry reachable here),
# and checks that docker-compose.yml is well-formed YAML with the services it promises.
set -euo pipefail
cd "$(dirname "$0")"
venv="${KUBE_VALIDATE_VENV:-${TMPDIR:-/tmp}/llm-attr-kube-validate}"
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "kubernetes-validate==1.37.0"
fi
"$venv/bin/kubernetes-validate" --strict --kubernetes-version 1.37 k8s/redis.yaml k8s/llm-attr.yaml k8s/hpa.yaml \
  k8s/remote/vllm.yaml
"$venv/bin/python" - <<'PY'
import yaml
c = yaml.safe_load(open("docker-compose.yml"))
services = set(c["services"])
assert {"redis", "replica-a", "replica-b", "lb"} <= services, services
for r in ("replica-a", "replica-b"):
    env = c["services"][r]["environment"]
    assert env["LLM_ATTR_REDIS_URL"].startswith("redis://"), env
print("docker-compose.yml: services", sorted(services))
r = yaml.safe_load(open("docker-compose.remote.yml"))
env = r["services"]["llm-attr"]["environment"]
assert env["LLM_ATTR_MODEL"].startswith("http://vllm:"), env
assert "gpu" in r["services"]["vllm"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"]
# The remote overlay's patch names the base Deployment's container and a model URL.
k = yaml.safe_load(open("k8s/remote/kustomization.yaml"))
assert "../" in k["resources"] and "vllm.yaml" in k["resources"], k
p = yaml.safe_load(open("k8s/remote/llm-attr-remote.yaml"))
c = p["spec"]["template"]["spec"]["containers"][0]
assert c["name"] == "llm-attr" and c["env"][0]["value"].startswith("http://vllm:"), c
print("docker-compose.remote.yml and k8s/remote: remote model settings present")
PY
