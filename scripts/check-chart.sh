#!/usr/bin/env bash
# Checks the Helm chart short of a Kubernetes API server: `helm lint --strict` (which also
# checks values against values.schema.json), `helm template` with the default values and
# with ci/all-on-values.yaml (every optional part on),
# the rendered manifests against the Kubernetes schemas of two versions
# (`kubernetes-validate --strict`), the values the chart must refuse, and the README's
# values table against values.yaml. Needs helm, kubernetes-validate and python3 with PyYAML
# (.ci/run installs them). Prints `chart: N passed, 0 failed` when all pass, exits 1 otherwise.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
chart=$repo/charts/skein
# The oldest Kubernetes the chart is checked against, and the newest the validator knows.
versions=${SKEIN_CHART_KUBE_VERSIONS:-1.29.0 1.37.0}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

passed=0
failed=0
check() {
  local name=$1
  shift
  if "$@" >"$work/out" 2>&1; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    echo "FAILED: $name" >&2
    sed 's/^/    /' "$work/out" >&2
  fi
}
refused() {
  local name=$1 says=$2
  shift 2
  if "$@" >"$work/out" 2>&1; then
    failed=$((failed + 1))
    echo "FAILED: $name: rendered, but the chart should refuse it" >&2
  elif ! grep -q -- "$says" "$work/out"; then
    failed=$((failed + 1))
    echo "FAILED: $name: refused without saying '$says':" >&2
    sed 's/^/    /' "$work/out" >&2
  else
    passed=$((passed + 1))
  fi
}

for tool in helm kubernetes-validate python3; do
  command -v "$tool" >/dev/null 2>&1 || { echo "check-chart.sh: $tool is not installed" >&2; exit 1; }
done

# Validates one rendered file against each version; only the Prometheus Operator's
# ServiceMonitor (a CRD: no Kubernetes schema) may go unvalidated, and it is checked below.
validate() {
  local file=$1 version out
  for version in $versions; do
    # One CI run saw kubernetes-validate exit non-zero with nothing but passes in its
    # output (not reproduced in dozens of runs since): a second try says whether the
    # manifest or the tool failed; a real schema error fails both.
    if ! out=$(kubernetes-validate --strict -k "$version" "$file" 2>&1); then
      echo "kubernetes-validate -k $version exited non-zero; trying once more. Its output:"
      echo "$out"
      out=$(kubernetes-validate --strict -k "$version" "$file" 2>&1) || { echo "$out"; return 1; }
    fi
    # Here-strings, not pipes: with pipefail, `echo | grep -q` can fail on SIGPIPE.
    if grep -v "Couldn't find schema for kind ServiceMonitor " <<<"$out" | grep -E '^(WARN|ERROR)' >/dev/null; then
      echo "$out"
      return 1
    fi
    grep -q "passed for resource statefulset/" <<<"$out" || { echo "$out"; return 1; }
  done
}

# The ServiceMonitor's fields as the Prometheus Operator's CRD (monitoring.coreos.com/v1)
# defines them, for the fields the chart sets.
service_monitor() {
  python3 - "$1" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
monitors = [d for d in docs if d.get("kind") == "ServiceMonitor"]
assert monitors, "no ServiceMonitor rendered"
for m in monitors:
    assert m["apiVersion"] == "monitoring.coreos.com/v1", m["apiVersion"]
    assert set(m) <= {"apiVersion", "kind", "metadata", "spec"}, set(m)
    spec = m["spec"]
    assert set(spec) <= {"endpoints", "selector", "namespaceSelector", "jobLabel"}, set(spec)
    assert spec["selector"]["matchLabels"], "an empty selector matches every Service"
    for e in spec["endpoints"]:
        assert set(e) <= {"port", "path", "interval", "scrapeTimeout", "scheme"}, set(e)
        assert e["port"] == "http" and e["path"] == "/metrics", e
    # The selected Service has the named port.
    services = [d for d in docs if d.get("kind") == "Service"
                and all(d["metadata"]["labels"].get(k) == v
                        for k, v in spec["selector"]["matchLabels"].items())]
    assert len(services) == 1, [s["metadata"]["name"] for s in services]
    assert any(p["name"] == "http" for p in services[0]["spec"]["ports"])
PY
}

# Every value of values.yaml has a row in the README's values table (its own, or one of a
# key above it: `resources` covers resources.requests.cpu), and every row names a value.
values_table() {
  python3 - "$chart/values.yaml" "$chart/README.md" <<'PY'
import re, sys, yaml
values = yaml.safe_load(open(sys.argv[1]))
def keys(node, prefix=""):
    if isinstance(node, dict) and node:
        for k, v in node.items():
            yield f"{prefix}{k}", not (isinstance(v, dict) and v)
            yield from keys(v, f"{prefix}{k}.")
every = dict(keys(values))
rows = set(re.findall(r"^\| `([A-Za-z0-9_.]+)` \|", open(sys.argv[2]).read(), re.M))
def covered(key):
    parts = key.split(".")
    return any(".".join(parts[:i]) in rows for i in range(1, len(parts) + 1))
missing = sorted(k for k, leaf in every.items() if leaf and not covered(k))
extra = sorted(rows - set(every))
assert not missing and not extra, f"README values table: missing {missing}, not in values.yaml {extra}"
PY
}

# appVersion is the crate version the image is built from.
app_version() {
  local crate chart_app
  crate=$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml" | head -n 1)
  chart_app=$(sed -n 's/^appVersion: "\(.*\)"/\1/p' "$chart/Chart.yaml")
  [ -n "$crate" ] && [ "$crate" = "$chart_app" ] || { echo "appVersion '$chart_app' is not the crate version '$crate'"; return 1; }
  grep -q '^apiVersion: v2$' "$chart/Chart.yaml" || { echo "Chart.yaml is not apiVersion v2"; return 1; }
}

check "Chart.yaml: apiVersion v2, appVersion = the crate version" app_version
check "helm lint --strict (defaults)" helm lint --strict "$chart"
check "helm lint --strict (all on)" helm lint --strict "$chart" -f "$chart/ci/all-on-values.yaml"
check "helm template (defaults)" \
  sh -c 'helm template skein "$1" --namespace skein >"$2"' _ "$chart" "$work/default.yaml"
check "helm template (all on)" \
  sh -c 'helm template skein "$1" --namespace skein -f "$1/ci/all-on-values.yaml" >"$2"' _ "$chart" "$work/all-on.yaml"
# The README's install, short of a cluster: renders everything, NOTES.txt included.
check "helm install --dry-run=client (as the README documents it)" \
  sh -c 'helm install skein "$1" --namespace mqtt --dry-run=client | grep -q "^NOTES:"' _ "$chart"
check "validate defaults ($versions)" validate "$work/default.yaml"
check "validate all on ($versions)" validate "$work/all-on.yaml"
check "ServiceMonitor (all on)" service_monitor "$work/all-on.yaml"
check "no ServiceMonitor by default" sh -c '! grep -q "kind: ServiceMonitor" "$1"' _ "$work/default.yaml"
check "README values table" values_table

refused "config names a setting the chart sets" "set by the chart" \
  helm template skein "$chart" --set config.peers=1@x:1
refused "config key not a setting name" "lower case" \
  helm template skein "$chart" --set config.MaxConnections=1
refused "no initial members" "initialMembers" \
  helm template skein "$chart" --set cluster.initialMembers=0
refused "unknown service type" "/service/mqtt/type" \
  helm template skein "$chart" --set service.mqtt.type=ExternalName
refused "unknown anti-affinity" "podAntiAffinity" \
  helm template skein "$chart" --set podAntiAffinity=maybe
refused "a TLS listener without a certificate" "need tls.existingSecret" \
  helm template skein "$chart" --set ports.mqtts=8883
refused "client certificates without a CA" "needs tls.clientCaKey" \
  helm template skein "$chart" --set ports.wss=8084 --set tls.existingSecret=t --set tls.clientCert=required
refused "a listener on the MQTT Service's port" "serves both on one port" \
  helm template skein "$chart" --set ports.ws=1883
refused "ignore as the authenticator's error outcome" "ignore is for auth.httpAcl" \
  helm template skein "$chart" --set auth.http.onError=ignore
refused "a value the chart does not have (values.schema.json)" "additional properties 'replicas'" \
  helm template skein "$chart" --set replicas=5

echo "chart: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
