#!/usr/bin/env bash
# The deployment files of ops/ agree with rtbridge and with each other
# (issue #9):
#   * yamllint --strict passes on every YAML file in ops/;
#   * every --flag and every rtbridge environment variable that the compose
#     file, the Kubernetes manifests, the systemd unit and the Dockerfile pass
#     to rtbridge exists in `rtbridge help` (names that another open issue
#     adds are listed in ops/pending-config.txt and reported as NOTEs while
#     this build lacks them);
#   * Kubernetes: probes on /readyz and /healthz at the container port,
#     terminationGracePeriodSeconds above preStop + --shutdown-timeout,
#     resources, non-root user = the image's, secrets only through
#     secretKeyRef, selectors of Service and PodDisruptionBudget match the
#     pods, the migration Job runs `migrate`, the ConfigMap matches
#     ops/alert-rules.json (ops/k8s/gen-alert-rules.sh);
#   * compose: one-shot migrate before two serve instances, nginx's upstream
#     and Prometheus's targets are exactly those instances, every mounted file
#     exists, stop_grace_period above --shutdown-timeout, TimescaleDB.
# Prints PASS:/FAIL:/NOTE: lines; run by test/run.sh.
set -u
# shellcheck source=test/sh/ops-lib/common.sh
. "$(dirname "$0")/ops-lib/common.sh"

cd "$ROOT" || exit 1
if command -v yamllint >/dev/null; then
    yaml=$(find ops -name '*.yml' -o -name '*.yaml' | sort | xargs)
    # shellcheck disable=SC2086
    if yamllint --strict -c ops/.yamllint.yml $yaml >"$tmp/yl" 2>&1; then
        pass "yamllint --strict: $yaml"
    else
        fail "yamllint --strict" "$(cat "$tmp/yl")"
    fi
else
    fail "yamllint is installed" "bash ops/install-deps.sh"
fi

"$BIN" help >"$tmp/help" 2>&1
sh ops/k8s/gen-alert-rules.sh --stdout >"$tmp/alert-rules.yaml"

python3 - "$tmp/help" "$tmp/alert-rules.yaml" <<'PY' || fails=$((fails + 1))
import json, os, re, shlex, sys, yaml
help_text = open(sys.argv[1]).read()
generated_rules = open(sys.argv[2]).read()
sys.path.insert(0, os.environ["OPS_LIB"])
from check import done, res

flags = set(re.findall(r"^\s+(?:-h, )?(--[a-z0-9-]+)", help_text, re.M))
envs = set(re.findall(r"\[env ([A-Z0-9_]+)", help_text))
def default_of(flag):
    m = re.search(r"^\s+%s .*default ([^,\]]+)" % re.escape(flag), help_text, re.M)
    return m.group(1) if m else None
def seconds(v):
    m = re.fullmatch(r"(\d+)(ms|s|m|h)?", str(v).strip())
    if not m:
        raise ValueError("not a duration: %r" % v)
    n, u = int(m.group(1)), m.group(2) or "ms"
    return n * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[u]
res(len(flags) > 20 and len(envs) > 20, "rtbridge help lists %d flags and %d variables" % (len(flags), len(envs)))
pending = set()
for line in open("ops/pending-config.txt"):
    if line.strip() and not line.startswith("#"):
        pending.add(line.split()[0])

# Every place that hands rtbridge flags or variables: (file, flags, env names).
uses = []
def flags_in(args):
    return [a.split("=", 1)[0] for a in args if isinstance(a, str) and a.startswith("--")]
compose = yaml.safe_load(open("ops/docker-compose.yml"))
for name, svc in compose["services"].items():
    if str(svc.get("image", "")).startswith("rtbridge"):
        uses.append(("ops/docker-compose.yml:" + name, flags_in(svc.get("command", [])),
                     list((svc.get("environment") or {}).keys())))
k8s = {}
for f in sorted(os.listdir("ops/k8s")):
    if f.endswith(".yaml"):
        for doc in yaml.safe_load_all(open("ops/k8s/" + f)):
            if doc and "kind" in doc:
                k8s.setdefault(doc["kind"], []).append((f, doc))
for kind in ("Deployment", "Job"):
    for f, doc in k8s.get(kind, []):
        for c in doc["spec"]["template"]["spec"]["containers"]:
            uses.append(("ops/k8s/%s:%s" % (f, c["name"]), flags_in(c.get("args", []) + c.get("command", [])),
                         [e["name"] for e in c.get("env", [])]))
unit = open("ops/systemd/rtbridge.service").read()
for line in unit.splitlines():
    m = re.match(r"Exec(?:Start|StartPre|StartPost|Stop)=\S*rtbridge\s+(.*)", line)
    if m:
        uses.append(("ops/systemd/rtbridge.service", flags_in(shlex.split(m.group(1))), []))
    m = re.match(r"Environment=(.*)", line)
    if m:
        uses.append(("ops/systemd/rtbridge.service", [], [kv.split("=")[0] for kv in shlex.split(m.group(1))]))
docker = re.sub(r"\\\n", " ", open("ops/Dockerfile").read())
for line in docker.splitlines():
    if re.match(r"(CMD|ENTRYPOINT) ", line):
        uses.append(("ops/Dockerfile", flags_in(json.loads(line.split(" ", 1)[1])), []))
    if re.match(r"ENV ", line):
        uses.append(("ops/Dockerfile", [], re.findall(r"([A-Z_][A-Z0-9_]*)=", line)))
unknown, waiting, n = [], set(), 0
for where, fl, ev in uses:
    for name in fl + [e for e in ev if e.startswith("RTBRIDGE_") or e == "DATABASE_URL"]:
        n += 1
        if name in flags or name in envs:
            continue
        if name in pending:
            waiting.add(name)
        else:
            unknown.append("%s: %s" % (where, name))
res(not unknown and n > 10, "every flag and variable handed to rtbridge exists in rtbridge help (%d uses in %d places)"
    % (n, len({w for w, _, _ in uses})), *unknown)
for name in sorted(waiting):
    print("NOTE: %s is used in ops/ but not in this build's help yet (ops/pending-config.txt)" % name)
landed = sorted(p for p in pending if p in flags or p in envs)
if landed:
    print("NOTE: now in rtbridge help, remove from ops/pending-config.txt: %s" % " ".join(landed))

# ---- Kubernetes ------------------------------------------------------------------------
need = {"Deployment", "Service", "PodDisruptionBudget", "Job", "ConfigMap"}
res(need <= set(k8s), "ops/k8s has %s" % ", ".join(sorted(need)), "missing: %s" % sorted(need - set(k8s)))
dep = k8s["Deployment"][0][1]
pod = dep["spec"]["template"]["spec"]
c = pod["containers"][0]
port = {p["name"]: p["containerPort"] for p in c["ports"]}
rp, lp = c["readinessProbe"]["httpGet"], c["livenessProbe"]["httpGet"]
res(rp["path"] == "/readyz" and lp["path"] == "/healthz" and rp["port"] in port and lp["port"] in port
    and port[rp["port"]] == 8080, "Deployment: readiness /readyz, liveness /healthz on port 8080",
    "readiness %s, liveness %s, ports %s" % (rp, lp, port))
env = {e["name"]: e for e in c.get("env", [])}
drain = seconds(env["RTBRIDGE_SHUTDOWN_TIMEOUT"]["value"]) if "RTBRIDGE_SHUTDOWN_TIMEOUT" in env \
    else seconds(default_of("--shutdown-timeout"))
pre = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
pre_s = int(pre[1]) if pre[:1] == ["sleep"] else 0
grace = pod["terminationGracePeriodSeconds"]
res(pre_s > 0 and grace > pre_s + drain, "Deployment: terminationGracePeriodSeconds %d > preStop %d s + --shutdown-timeout %g s"
    % (grace, pre_s, drain), "preStop %s" % pre)
res(c["resources"]["requests"].get("cpu") and c["resources"]["requests"].get("memory")
    and c["resources"]["limits"].get("memory"), "Deployment: resource requests and memory limit")
uid = re.search(r"useradd .*--uid (\d+)", docker).group(1)
res(str(pod["securityContext"].get("runAsUser")) == uid and pod["securityContext"].get("runAsNonRoot")
    and c["securityContext"].get("readOnlyRootFilesystem") and not c["securityContext"].get("allowPrivilegeEscalation"),
    "Deployment: non-root uid %s (the image's), read-only root, no privilege escalation" % uid)
secret_names = ["DATABASE_URL", "RTBRIDGE_AUTH_TOKEN", "RTBRIDGE_JWT_SECRET", "SLACK_WEBHOOK_URL",
                "ALERT_WEBHOOK_URL", "RTBRIDGE_SMTP_URL"]
plain = [n for n in secret_names if n not in env or "secretKeyRef" not in env[n].get("valueFrom", {})]
res(not plain, "Deployment: database URL, tokens and notification URLs come from a Secret", "not from a Secret: %s" % plain)
labels = dep["spec"]["template"]["metadata"]["labels"]
def selects(sel):
    return sel and all(labels.get(k) == v for k, v in sel.items())
svc, pdb = k8s["Service"][0][1], k8s["PodDisruptionBudget"][0][1]
res(selects(dep["spec"]["selector"]["matchLabels"]) and selects(svc["spec"]["selector"])
    and selects(pdb["spec"]["selector"]["matchLabels"]) and svc["spec"]["ports"][0]["targetPort"] in port,
    "Service and PodDisruptionBudget select the Deployment's pods")
job = k8s["Job"][0][1]["spec"]["template"]["spec"]
jc = job["containers"][0]
res(jc.get("args") == ["migrate"] and job["restartPolicy"] in ("OnFailure", "Never")
    and "secretKeyRef" in {e["name"]: e for e in jc["env"]}["DATABASE_URL"].get("valueFrom", {}),
    "migration Job runs `rtbridge migrate` with the Secret's DATABASE_URL")
mounts = {v["name"]: v for v in pod.get("volumes", [])}
cm_name = k8s["ConfigMap"][0][1]["metadata"]["name"]
rules_arg = c["args"][c["args"].index("--alert-rules") + 1] if "--alert-rules" in c["args"] else ""
mount = [m for m in c.get("volumeMounts", []) if mounts.get(m["name"], {}).get("configMap", {}).get("name") == cm_name]
res(mount and rules_arg == mount[0]["mountPath"] + "/alert-rules.json"
    and "alert-rules.json" in k8s["ConfigMap"][0][1]["data"],
    "the alert rules ConfigMap is mounted where --alert-rules points")
current = open("ops/k8s/alert-rules.yaml").read()
res(current == generated_rules, "ops/k8s/alert-rules.yaml matches ops/alert-rules.json",
    "run: sh ops/k8s/gen-alert-rules.sh")
if os.path.exists("ops/alert-rules.json"):
    data = k8s["ConfigMap"][0][1]["data"]["alert-rules.json"]
    try:
        same = json.loads(data) == json.load(open("ops/alert-rules.json"))
    except ValueError:
        same = False
    res(same, "the ConfigMap's alert-rules.json is ops/alert-rules.json, as JSON", "run: sh ops/k8s/gen-alert-rules.sh")
else:
    print("NOTE: ops/alert-rules.json does not exist in this tree yet (issue #7): the ConfigMap holds {}")

# ---- compose -------------------------------------------------------------------------------
s = compose["services"]
serve = [n for n, v in s.items() if str(v.get("image", "")).startswith("rtbridge") and (v.get("command") or ["serve"])[0] == "serve"]
mig = [n for n, v in s.items() if (v.get("command") or [None])[0] == "migrate"]
res(len(serve) == 2 and len(mig) == 1 and all(
    s[n]["depends_on"].get(mig[0], {}).get("condition") == "service_completed_successfully" for n in serve),
    "compose: one-shot migrate, then two serve instances (%s)" % ", ".join(serve))
res(s["db"]["image"].startswith("timescale/timescaledb") and "postgres:15" in open("ops/docker-compose.yml").read(),
    "compose: TimescaleDB, with a note on postgres:15")
conf = open("ops/nginx/rtbridge.conf").read()
upstream = sorted(re.findall(r"^\s*server ([a-z0-9-]+):8080", conf, re.M))
prom = yaml.safe_load(open("ops/prometheus/prometheus.yml"))
targets = sorted(t.split(":")[0] for sc in prom["scrape_configs"] for st in sc["static_configs"] for t in st["targets"])
res(upstream == sorted(serve) == targets, "nginx upstream and Prometheus targets are the serve instances",
    "nginx %s, prometheus %s, compose %s" % (upstream, targets, sorted(serve)))
missing = []
for n, v in s.items():
    for vol in v.get("volumes", []):
        src = vol.split(":")[0]
        if src.startswith("."):
            path = os.path.normpath(os.path.join("ops", src))
            if not os.path.exists(path) and path not in ("ops/alert-rules.json",):
                missing.append("%s: %s" % (n, path))
res(not missing, "compose: every mounted file exists", *missing)
grace_c = min(seconds(s[n].get("stop_grace_period", "10s")) for n in serve)
drain_c = max(seconds((s[n].get("environment") or {}).get("RTBRIDGE_SHUTDOWN_TIMEOUT", default_of("--shutdown-timeout")))
              for n in serve)
res(grace_c > drain_c, "compose: stop_grace_period %g s > --shutdown-timeout %g s" % (grace_c, drain_c))
done()
PY

[ $fails -eq 0 ]
