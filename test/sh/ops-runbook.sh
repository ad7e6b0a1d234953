#!/usr/bin/env bash
# ops/RUNBOOK.md (issue #9):
#   * its flag/environment table and command list are what this binary's
#     `rtbridge help --markdown` and `rtbridge help` print (ops/gen-runbook.sh
#     --check), and the check does fail on a runbook that differs;
#   * it has the sections the issue asks for, and every troubleshooting entry
#     says how to confirm the symptom and how to fix it;
#   * its links to its own sections resolve; the metric names it uses are in
#     ops/prometheus/metrics.txt; the figures of its capacity table appear in
#     perf/RESULTS.md or the README.
# Prints PASS:/FAIL: lines; run by test/run.sh.
set -u
# shellcheck source=test/sh/ops-lib/common.sh
. "$(dirname "$0")/ops-lib/common.sh"
RB=$ROOT/ops/RUNBOOK.md

if sh "$ROOT/ops/gen-runbook.sh" --check "$BIN" >"$tmp/check" 2>&1; then
    pass "RUNBOOK flag table and command list match rtbridge help (ops/gen-runbook.sh --check)"
else
    fail "RUNBOOK flag table and command list match rtbridge help" "$(head -30 "$tmp/check")"
fi

# The check must catch a drifted runbook: a copy with one default changed.
mkdir -p "$tmp/ops"
cp "$ROOT/ops/gen-runbook.sh" "$tmp/ops/"
sed 's/^\(| `--max-conns N` | `RTBRIDGE_MAX_CONNS` | `\)[0-9]*`/\1123`/' "$RB" >"$tmp/ops/RUNBOOK.md"
if cmp -s "$RB" "$tmp/ops/RUNBOOK.md"; then
    fail "a drifted runbook is caught" "could not find the --max-conns row to alter"
elif sh "$tmp/ops/gen-runbook.sh" --check "$BIN" >/dev/null 2>&1; then
    fail "a drifted runbook is caught" "gen-runbook.sh --check passed a runbook with --max-conns default 123"
else
    sh "$tmp/ops/gen-runbook.sh" "$BIN" && cmp -s "$RB" "$tmp/ops/RUNBOOK.md" &&
        pass "a drifted runbook is caught, and regenerating it restores the table" ||
        fail "regenerating a drifted runbook restores the table"
fi

# Every variable of `rtbridge help` is in the runbook.
"$BIN" help >"$tmp/help"
missing=""
for v in $(grep -o '\[env [A-Z0-9_]*' "$tmp/help" | cut -c6-); do
    grep -q "\`$v\`" "$RB" || missing="$missing $v"
done
[ -z "$missing" ] && pass "every environment variable of rtbridge help is in the runbook" ||
    fail "every environment variable of rtbridge help is in the runbook" "missing:$missing"

# Every --flag the prose names is one of rtbridge's (or pending, see
# ops/pending-config.txt), apart from other programs' flags and the short
# spellings `rtbridge etl` takes.
others="--markdown --previous --batch-size --mode --source-url --target-url"
unknown=""
for f in $(grep -o -- '--[a-z][a-z0-9-]*' "$RB" | sort -u); do
    case " $others " in *" $f "*) continue ;; esac
    grep -q -- "^ *\(-h, \)\?$f[ =[]" "$tmp/help" && continue
    grep -q -- "^$f " "$ROOT/ops/pending-config.txt" && continue
    unknown="$unknown $f"
done
[ -z "$unknown" ] && pass "every flag the runbook names exists in rtbridge help (or ops/pending-config.txt)" ||
    fail "every flag the runbook names exists in rtbridge help" "unknown:$unknown"

python3 - "$RB" "$ROOT" <<'PY' || fails=$((fails + 1))
import os, re, sys
rb_path, root = sys.argv[1:3]
text = open(rb_path).read()
sys.path.insert(0, os.environ["OPS_LIB"])
from check import done, known_metrics, res, slug

heads = re.findall(r"^(#+) (.+)$", text, re.M)
slugs = {slug(h) for _, h in heads}
sections = {h: lvl for lvl, h in heads}
need = ["Configuration", "Commands", "Signals", "Start-up order and migrations", "Scaling out", "Capacity",
        "Monitoring", "Troubleshooting", "Upgrading and rolling back"]
trouble = ["WebSocket drops behind a proxy", "SSE delayed by buffering", "ETL lag growing",
           "Listener reconnect loops", "pg_notification_queue_usage() rising", "Slow consumers",
           "Alerts not firing", "Notifications failing"]
missing = [h for h in need + trouble if h not in sections]
res(not missing, "runbook has the %d sections and %d troubleshooting entries of the issue" % (len(need), len(trouble)),
    "missing: %s" % missing)

# Each troubleshooting entry: Symptom, Confirm (with a metric, a command or
# SQL), Fix.
body = text.split("\n## Troubleshooting", 1)[-1].split("\n## ", 1)[0]
entries = re.split(r"\n### ", body)[1:]
bad = []
for e in entries:
    title = e.splitlines()[0]
    parts = [p in e for p in ("**Symptom.**", "**Confirm.**", "**Fix.**")]
    confirm = e.split("**Confirm.**", 1)[-1].split("**Fix.**", 1)[0]
    has_check = re.search(r"`[^`]*(SELECT|curl|rtbridge |[a-z_]+_total|_seconds|_connected|_active|/health|journalctl|kubectl)[^`]*`",
                          confirm)
    if not all(parts) or not has_check:
        bad.append("%s: symptom/confirm/fix %s, confirming command or metric %s" % (title, parts, bool(has_check)))
res(not bad and len(entries) >= len(trouble),
    "every troubleshooting entry (%d) has symptom, a confirming metric or command, and a fix" % len(entries), *bad)

links = set(re.findall(r"\]\(#([^)]+)\)", text))
res(not (links - slugs), "links to runbook sections resolve (%d)" % len(links), "unresolved: %s" % sorted(links - slugs))

known = set(known_metrics(root))
used = {re.sub(r"_(bucket|sum|count)$", "", m) for m in
        re.findall(r"\b((?:bridge|realtime|rtbridge|process)_[a-z_]+?(?:_total|_seconds|_bytes|_fds|_connected|_leader|_depth|_active|_intents|_connections|_bucket))\b", text)}
res(used and not (used - known), "metric names in the runbook are in metrics.txt (%d)" % len(used),
    "unknown: %s" % sorted(used - known))

cap = text.split("\n## Capacity", 1)[-1].split("\nRules of thumb", 1)[0]
rows = [l for l in cap.splitlines() if l.startswith("| ") and not l.startswith("| what")]
sources = open(root + "/perf/RESULTS.md").read() + open(root + "/README.md").read()
figures = set()
for l in rows:
    figures |= set(re.findall(r"\d{1,3}(?: \d{3})+", l))
    figures |= set(re.findall(r"\d+\.\d+ (?:ms|KiB)", l))
absent = sorted(f for f in figures if f not in sources)
res(len(figures) > 8 and not absent, "capacity figures come from perf/RESULTS.md or the README (%d)" % len(figures),
    "not found there: %s" % absent)
done()
PY

[ $fails -eq 0 ]
