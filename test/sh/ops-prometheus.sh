#!/usr/bin/env bash
# ops/prometheus/ (issue #9):
#   * promtool check config (scrape config + rule files) and check rules pass;
#   * promtool test rules: the unit tests of every alert pass, and every
#     alert has at least one test where it fires;
#   * every alert links a section that exists in ops/RUNBOOK.md;
#   * every metric the rules and the Grafana dashboard use is listed in
#     ops/prometheus/metrics.txt, and every dashboard query parses (promtool
#     checks it as a recording rule);
#   * against a live `rtbridge serve` (with one alert rule, so its families show):
#     `promtool check metrics` accepts the scrape and every family of
#     metrics.txt is there with its type.
# Prints PASS:/FAIL: lines; run by test/run.sh.
set -u
# shellcheck source=test/sh/ops-lib/common.sh
. "$(dirname "$0")/ops-lib/common.sh"
P=$ROOT/ops/prometheus
# run NAME CMD...: PASS when CMD exits 0, else FAIL with its output.
run() {
    local name=$1
    shift
    if "$@" >"$tmp/out" 2>&1; then pass "$name"; else fail "$name" "$(tail -30 "$tmp/out")"; fi
}

if ! command -v promtool >/dev/null; then
    fail "promtool is installed" "bash ops/install-deps.sh (package prometheus)"
    exit 1
fi

run "promtool check config prometheus.yml" promtool check config "$P/prometheus.yml"
run "promtool check rules rtbridge-rules.yml" promtool check rules "$P/rtbridge-rules.yml"
run "promtool test rules rtbridge-rules.test.yml" sh -c "cd '$P' && promtool test rules rtbridge-rules.test.yml"

# Python does the structural checks; it prints PASS:/FAIL: lines itself.
python3 - "$P" "$ROOT/ops/RUNBOOK.md" "$tmp/dash-rules.yml" <<'PY'
import json, os, re, sys, yaml
P, runbook, dash_rules = sys.argv[1:4]
sys.path.insert(0, os.environ["OPS_LIB"])
from check import done, known_metrics, res, slug

rules = yaml.safe_load(open(P + "/rtbridge-rules.yml"))
tests = yaml.safe_load(open(P + "/rtbridge-rules.test.yml"))
alerts = [r for g in rules["groups"] for r in g["rules"] if "alert" in r]
fired = {c["alertname"] for t in tests["tests"] for c in t.get("alert_rule_test", []) if c.get("exp_alerts")}
quiet = {c["alertname"] for t in tests["tests"] for c in t.get("alert_rule_test", []) if not c.get("exp_alerts")}
names = [a["alert"] for a in alerts]
res(not [n for n in names if n not in fired], "every alert has a test where it fires (%d alerts)" % len(names),
    "never fires in a test: %s" % [n for n in names if n not in fired])
res(not [n for n in names if n not in quiet], "every alert has a test where it stays quiet",
    "never quiet in a test: %s" % [n for n in names if n not in quiet])

# Runbook anchors: GitHub-style slugs of the headings.
try:
    heads = [l.lstrip("#").strip() for l in open(runbook) if l.startswith("#")]
except OSError:
    heads = []
slugs = {slug(h) for h in heads}
bad = []
for a in alerts:
    link = a.get("annotations", {}).get("runbook", "")
    m = re.fullmatch(r"RUNBOOK\.md#([a-z0-9_-]+)", link)
    if not m or m.group(1) not in slugs:
        bad.append("%s -> %r" % (a["alert"], link))
res(not bad, "every alert links an existing ops/RUNBOOK.md section", *bad)

known = known_metrics(os.environ["OPS_LIB"] + "/../../..")
def metrics_of(expr):
    out = set()
    for tok in re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(?=[{\[)\s]|$)", expr):
        if re.match(r"(bridge|realtime|rtbridge|process)_", tok):
            base = re.sub(r"_(bucket|sum|count)$", "", tok)
            out.add(base if base in known and known[base] == "histogram" else tok)
    return out
used_rules = set().union(*(metrics_of(a["expr"]) for a in alerts))
dash = json.load(open(P + "/rtbridge-dashboard.json"))
targets = [(p["title"], t["expr"]) for p in dash["panels"] for t in p.get("targets", [])]
used_dash = set().union(*(metrics_of(e) for _, e in targets))
unknown = sorted((used_rules | used_dash) - set(known))
res(not unknown, "rules and dashboard use only metrics listed in metrics.txt (%d used)" % len(used_rules | used_dash),
    "not in metrics.txt: %s" % unknown)
ids = [p["id"] for p in dash["panels"]]
res(len(ids) == len(set(ids)) and len(targets) > 10 and dash.get("uid"),
    "dashboard: %d panels, %d queries, unique ids, a uid" % (len(ids), len(targets)))
ds_bad = [p["title"] for p in dash["panels"] if p["type"] != "row" and p.get("datasource", {}).get("uid") != "${datasource}"]
res(not ds_bad, "every panel uses the $datasource variable", *ds_bad)
# Each query as a recording rule, so promtool parses it ($instance -> .*).
rec = {"groups": [{"name": "dashboard", "rules": [
    {"record": "dashboard:q%d" % i, "expr": e.replace("$instance", ".*")} for i, (_, e) in enumerate(targets)]}]}
yaml.safe_dump(rec, open(dash_rules, "w"))
done()
PY
[ $? -eq 0 ] || fails=$((fails + 1))
run "every dashboard query parses (promtool check rules)" promtool check rules "$tmp/dash-rules.yml"

# ---- a live scrape ----------------------------------------------------------------------

ops_db rt_ops_prom_$$ || { fail "create and migrate a database"; exit 1; }
port=$(ops_freeport)
pid=""
# One log-only rule, so the alert evaluator's families are served too.
cat >"$tmp/rules.json" <<'JSON'
[{"name": "ops_probe", "description": "never fires", "severity": "info",
  "condition": {"sql": "SELECT 0"}, "operator": ">", "threshold": 1, "channels": ["log"]}]
JSON
ops_serve pid "$port" --alert-rules "$tmp/rules.json"
up=0
ops_wait_ready "http://127.0.0.1:$port/readyz" "$pid" && up=1
if [ $up -eq 0 ]; then
    fail "server ready" "$(tail -3 "$tmp/pid.log")"
else
    code=$(curl -s -o "$tmp/metrics" -w '%{http_code}' "http://127.0.0.1:$port/metrics")
    if [ "$code" != 200 ]; then
        fail "GET /metrics" "HTTP $code"
    else
        run "promtool check metrics accepts a live scrape" sh -c "promtool check metrics < '$tmp/metrics'"
        missing=""
        while read -r name type _; do
            case "$name" in '#'* | '') continue ;; esac
            grep -q "^# TYPE $name $type\$" "$tmp/metrics" || missing="$missing $name($type)"
        done <"$P/metrics.txt"
        [ -z "$missing" ] && pass "every family of metrics.txt is served with its type" ||
            fail "every family of metrics.txt is served with its type" "missing:$missing"
    fi
fi
ops_stop pid
[ $fails -eq 0 ]
