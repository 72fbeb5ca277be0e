#!/usr/bin/env bash
# Lints the deployment files, with no Docker engine, cluster or Prometheus needed:
#   - Dockerfile: hadolint, failing on warnings and errors;
#   - every manifest under deploy/kubernetes (kustomization.yaml files aside): the API
#     schemas of Kubernetes $WEIR_K8S_VERSION (default 1.30.0), strict (unknown fields
#     fail); with kubectl on PATH, also what each kustomization renders;
#   - each ConfigMap's pipeline.toml: valid TOML, its shutdown_timeout below the grace
#     period and its metrics port the container's of every Deployment that mounts it;
#   - deploy/prometheus/alerts.yaml: groups of rules with alert, expr, for and
#     labels.severity; each expr parses as PromQL and names only metrics the README
#     documents (and `promtool check rules`, when promtool is installed).
# One line per check; exits non-zero when any fails.
#
#   scripts/lint-deploy.sh VENV        # or WEIR_VENV=VENV scripts/lint-deploy.sh
#
# VENV is a Python virtual environment (created when missing) into which
# deploy/requirements.txt is installed.
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${1:-${WEIR_VENV:-}}"
if [ -z "$venv" ]; then
    echo "usage: scripts/lint-deploy.sh VENV (or set WEIR_VENV): a Python venv for the linters" >&2
    exit 2
fi
k8s_version="${WEIR_K8S_VERSION:-1.30.0}"

if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r deploy/requirements.txt
bin="$venv/bin"

passed=0
failed=0
skipped=0
out="$(mktemp)"
trap 'rm -f "$out"' EXIT

# check NAME COMMAND...: runs the command; prints `ok   NAME`, or `FAIL NAME` and what the
# command printed.
check() {
    local name="$1"
    shift
    if "$@" >"$out" 2>&1; then
        echo "ok   $name"
        passed=$((passed + 1))
    else
        echo "FAIL $name"
        sed 's/^/     /' "$out"
        failed=$((failed + 1))
    fi
}

skip() {
    echo "skip $1"
    skipped=$((skipped + 1))
}

# Python checks print their own `ok`/`FAIL` lines; this counts them.
tally() {
    local lines rc=0
    lines="$("$@" 2>&1)" || rc=$?
    printf '%s\n' "$lines"
    passed=$((passed + $(grep -c '^ok ' <<<"$lines" || true)))
    failed=$((failed + $(grep -c '^FAIL ' <<<"$lines" || true)))
    if [ "$rc" -ne 0 ] && ! grep -q '^FAIL ' <<<"$lines"; then
        echo "FAIL $1 exited with $rc"
        failed=$((failed + 1))
    fi
}

# kubernetes-validate exits 0 on a kind it has no schema for (a warning): any output in
# --quiet mode is a failure here.
k8s_validate() {
    local said
    said="$("$bin/kubernetes-validate" --strict --quiet --kubernetes-version "$k8s_version" "$1" 2>&1)" || {
        printf '%s\n' "$said"
        return 1
    }
    if [ -n "$said" ]; then
        printf '%s\n' "$said"
        return 1
    fi
}

kustomize_validate() {
    local rendered rc=0
    rendered="$(mktemp --suffix=.yaml)"
    kubectl kustomize "$1" >"$rendered" && k8s_validate "$rendered" || rc=$?
    rm -f "$rendered"
    return "$rc"
}

# The Dockerfile.
check "hadolint Dockerfile (failure threshold: warning)" \
    "$bin/hadolint" --no-color --failure-threshold warning Dockerfile

# The Kubernetes manifests, each file, then each kustomization as rendered.
mapfile -t manifests < <(find deploy/kubernetes -type f \( -name '*.yaml' -o -name '*.yml' \) \
    ! -name kustomization.yaml ! -name kustomization.yml | sort)
if [ "${#manifests[@]}" -eq 0 ]; then
    echo "FAIL no manifests under deploy/kubernetes"
    failed=$((failed + 1))
fi
for manifest in "${manifests[@]}"; do
    check "$manifest against Kubernetes $k8s_version" k8s_validate "$manifest"
done
mapfile -t kustomizations < <(find deploy/kubernetes -type f -name kustomization.yaml -printf '%h\n' | sort)
for dir in "${kustomizations[@]}"; do
    if command -v kubectl >/dev/null 2>&1; then
        check "kubectl kustomize $dir, rendered, against Kubernetes $k8s_version" kustomize_validate "$dir"
    else
        skip "kubectl kustomize $dir (kubectl is not installed)"
    fi
done

# The pipeline files in ConfigMaps, against the Deployments that mount them.
tally "$bin/python" - "${manifests[@]}" <<'PY'
import re, sys, tomllib, yaml

def seconds(text):
    """A humantime duration as weir's config takes it ("30s", "1m 30s", "500ms")."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+)\s*(ms|s|m|h)", text)
    if not parts or re.sub(r"(\d+)\s*(ms|s|m|h)|\s", "", text):
        raise ValueError(f"cannot read the duration {text!r}")
    return sum(int(n) * units[u] for n, u in parts)

docs = []
for path in sys.argv[1:]:
    with open(path) as f:
        docs += [(path, d) for d in yaml.safe_load_all(f) if d]
deployments = [(p, d) for p, d in docs if d.get("kind") == "Deployment"]
for path, cm in docs:
    if cm.get("kind") != "ConfigMap":
        continue
    name = cm["metadata"]["name"]
    for key, text in (cm.get("data") or {}).items():
        if not key.endswith(".toml"):
            continue
        label = f"{path}: {key} of ConfigMap {name}"
        try:
            pipeline = tomllib.loads(text)
            problems = []
            timeout = seconds(pipeline.get("shutdown_timeout", "30s"))
            listen = pipeline.get("metrics", {}).get("listen")
            if listen is None:
                problems.append("no [metrics] listen: the probes need it")
            elif not listen.startswith("0.0.0.0:"):
                problems.append(f"metrics.listen {listen} is not reachable from outside the pod (0.0.0.0:PORT)")
            users = 0
            for dpath, dep in deployments:
                spec = dep["spec"]["template"]["spec"]
                mounted = {v["name"] for v in spec.get("volumes", []) if v.get("configMap", {}).get("name") == name}
                if not mounted:
                    continue
                users += 1
                grace = spec.get("terminationGracePeriodSeconds", 30)
                if grace <= timeout:
                    problems.append(f"{dpath}: terminationGracePeriodSeconds {grace} is not above shutdown_timeout ({timeout:g} s)")
                ports = {p["containerPort"] for c in spec["containers"] for p in c.get("ports", [])}
                if listen and int(listen.rsplit(":", 1)[1]) not in ports:
                    problems.append(f"{dpath}: no containerPort {listen.rsplit(':', 1)[1]} (metrics.listen)")
            if users == 0:
                problems.append(f"no Deployment mounts the ConfigMap {name}")
            if problems:
                print(f"FAIL {label}")
                for p in problems:
                    print(f"     {p}")
            else:
                print(f"ok   {label}: TOML, shutdown_timeout {timeout:g} s, metrics {listen}")
        except (tomllib.TOMLDecodeError, ValueError) as e:
            print(f"FAIL {label}")
            print(f"     {e}")
PY

# The alert rules.
rules=deploy/prometheus/alerts.yaml
tally "$bin/python" - "$rules" README.md <<'PY'
import re, sys, yaml, promql_parser

rules_path, readme_path = sys.argv[1], sys.argv[2]
# Metric names as the README writes them: at the start of a code span (`weir_connected`,
# `weir_sink_healthy{sink}`).
with open(readme_path) as f:
    documented = set(re.findall(r"`(weir_[a-z0-9_]+)", f.read()))
DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")
SEVERITIES = {"critical", "warning", "info"}

def fail(label, problems):
    print(f"FAIL {label}")
    for p in problems:
        print(f"     {p}")

try:
    with open(rules_path) as f:
        doc = yaml.safe_load(f)
except yaml.YAMLError as e:
    fail(f"{rules_path} parses as YAML", [str(e)])
    sys.exit(1)
groups = doc.get("groups") if isinstance(doc, dict) else None
if not isinstance(groups, list) or not groups:
    fail(f"{rules_path}: groups", ["no `groups` list at the top"])
    sys.exit(1)
problems, count = [], 0
for i, group in enumerate(groups):
    if not isinstance(group, dict) or not isinstance(group.get("name"), str):
        problems.append(f"group {i}: no name")
    if not isinstance(group, dict) or not isinstance(group.get("rules"), list) or not group["rules"]:
        problems.append(f"group {i}: no rules")
    else:
        count += len(group["rules"])
if problems:
    fail(f"{rules_path}: groups", problems)
    sys.exit(1)
print(f"ok   {rules_path}: YAML, {len(groups)} group(s) of {count} rule(s)")

seen = set()
for group in groups:
    for j, rule in enumerate(group["rules"]):
        name = rule.get("alert") if isinstance(rule, dict) else None
        label = f"alert {name}" if isinstance(name, str) and name else f"rule {j} of group {group['name']}"
        problems = []
        if not isinstance(rule, dict):
            fail(label, ["not a mapping"])
            continue
        if not isinstance(name, str) or not name:
            problems.append("no `alert` name (recording rules do not belong in this file)")
        elif name in seen:
            problems.append("a second alert of this name")
        seen.add(name)
        if not isinstance(rule.get("for"), str) or not DURATION.match(rule["for"]):
            problems.append(f"`for` is {rule.get('for')!r}, not a duration such as 5m")
        severity = (rule.get("labels") or {}).get("severity")
        if severity not in SEVERITIES:
            problems.append(f"labels.severity is {severity!r}, not one of {sorted(SEVERITIES)}")
        metrics = []
        expr = rule.get("expr")
        if not isinstance(expr, str) or not expr.strip():
            problems.append("no `expr`")
        else:
            try:
                def visit(node):
                    if isinstance(node, promql_parser.VectorSelector):
                        metrics.append(node.name)
                promql_parser.walk(promql_parser.parse(expr), visit)
            except ValueError as e:
                problems.append(f"expr does not parse as PromQL: {e}")
            else:
                if not metrics:
                    problems.append("expr names no metric")
                for metric in metrics:
                    base = re.sub(r"_(bucket|sum|count)$", "", metric or "")
                    if metric not in documented and base not in documented:
                        problems.append(f"{metric or 'a selector without a metric name'} is not a metric the README documents")
        if problems:
            fail(label, problems)
        else:
            print(f"ok   {label}: {', '.join(sorted(set(metrics)))} (documented), for {rule['for']}, {severity}")
PY
if command -v promtool >/dev/null 2>&1; then
    check "promtool check rules $rules" promtool check rules "$rules"
else
    skip "promtool check rules $rules (promtool is not installed; the expressions were parsed above)"
fi

echo "lint-deploy: $passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
