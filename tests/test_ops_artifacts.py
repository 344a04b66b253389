"""What operators run: the Prometheus alert rules, the Grafana dashboard, the Kubernetes manifests.

1. The rules pass ``promtool check rules``, and ``promtool test rules`` runs deploy/prometheus/alerts_test.yml,
   which has a test in which each alert fires. Each alert links a runbook section of docs/OPERATIONS.md.
2. A real Prometheus (Debian's ``prometheus`` package, the same as promtool's) on loopback scrapes a real
   prefork worker's port and ``acr-ingest metrics`` while jobs run against the emulator; through its HTTP API
   the series are there, a 401 auth hold makes the token-rejected alert fire and then clear, and fingerprint
   uploads with no worker consuming their queue make the queue-not-consumed alert fire for that queue alone, and
   clear once a fingerprint worker runs.
3. Every metric that an alert or a dashboard panel names is one that live scrape shows (and docs/METRICS.md
   documents), and every dashboard expression is valid PromQL to that Prometheus.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
import yaml

from ingest.devtools.processes import ChildProcess, free_port
from ingest.worker.routing import FINGERPRINT_QUEUE, POLL_QUEUE, QUEUE
from tests.conftest import MEDIA, REDIS_URL, TOKEN, WORKDIR
from tests.faults.conftest import WorkerProcess, beat_process, producer_for
from tests.fingerprint_audio import write_wav
from tests.helpers import app_queues, wait_for, worker_queues

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERT_TESTS = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "acr-ingest.json"
OPERATIONS = ROOT / "docs" / "OPERATIONS.md"
METRICS_DOC = ROOT / "docs" / "METRICS.md"
ACR_INGEST = str(Path(sys.executable).with_name("acr-ingest"))
BROKER = REDIS_URL.rsplit("/", 1)[0] + "/14"  # this module's worker, beat and exporter (tests run one at a time)
INSTALL_HINT = "Debian: apt-get install prometheus (it ships promtool too); .ci/run installs it"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed ({INSTALL_HINT})")
    return path


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule for group in doc["groups"] for rule in group["rules"]]


# --- PromQL: which metrics an expression names ---------------------------------------------------------------

_LABEL_LISTS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_KEYWORDS = {
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
}


def metric_names(expr: str) -> set[str]:
    """The metric names in a PromQL expression: identifiers that are not functions, aggregations, keywords,
    label names (in matchers and label lists), durations or Grafana's $variables."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings (label values)
    e = re.sub(r"\{[^}]*\}", " ", e)  # label matchers
    e = _LABEL_LISTS.sub(" ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)  # range and subquery durations
    e = re.sub(r"\$\{?\w+\}?", "1", e)  # Grafana variables ($__rate_interval, ${bucket})
    names = set()
    for m in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", e):
        if e[m.end() :].lstrip().startswith("("):
            continue  # a function or an aggregation
        if m.group().lower() not in _KEYWORDS:
            names.add(m.group())
    return names


def test_metric_names_reads_promql() -> None:
    expr = (
        'sum by (kind, outcome) (rate(acr_ingest_jobs_total{outcome!="held", kind=~"up.*"}[$__rate_interval]))'
        " / on () group_left sum(rate(acr_ingest_api_calls_total[5m] offset 1h)) > 1e3"
        ' or absent(acr_ingest_last_poll_timestamp_seconds) and time() - max(up{job="x"}) > bool 0'
    )
    assert metric_names(expr) == {
        "acr_ingest_jobs_total",
        "acr_ingest_api_calls_total",
        "acr_ingest_last_poll_timestamp_seconds",
        "up",
    }


def documented_metrics() -> set[str]:
    """The metric names in docs/METRICS.md's tables (first column)."""
    return set(re.findall(r"^\| `(acr_ingest_[a-z_]+)` \|", METRICS_DOC.read_text(encoding="utf-8"), re.M))


# --- 1. the rules, checked by promtool ------------------------------------------------------------------------


def test_alert_rules_pass_promtool_check() -> None:
    out = subprocess.run([_tool("promtool"), "check", "rules", str(ALERTS)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in out.stdout


def test_every_alert_fires_in_a_promtool_unit_test_and_they_all_pass() -> None:
    alerts = {rule["alert"] for rule in _rules()}
    assert {
        "AcrIngestApiDown",
        "AcrIngestTokenRejected",
        "AcrIngestFilesStuckProcessing",
        "AcrIngestOutboxNotDraining",
        "AcrIngestRejectedMessages",
        "AcrIngestQueueNotConsumed",
        "AcrIngestNoPoll",
        "AcrIngestRateLimitedShareHigh",
    } <= alerts
    tests = yaml.safe_load(ALERT_TESTS.read_text(encoding="utf-8"))
    assert tests["rule_files"] == ["alerts.yml"]
    fired = {c["alertname"] for t in tests["tests"] for c in t["alert_rule_test"] if c["exp_alerts"]}
    quiet = {c["alertname"] for t in tests["tests"] for c in t["alert_rule_test"] if not c["exp_alerts"]}
    assert fired == alerts, f"alerts without a test in which they fire: {sorted(alerts - fired)}"
    assert quiet == alerts, f"alerts never seen staying quiet: {sorted(alerts - quiet)}"

    started = time.monotonic()
    out = subprocess.run(
        [_tool("promtool"), "test", "rules", ALERT_TESTS.name], cwd=ALERT_TESTS.parent, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout
    assert time.monotonic() - started < 30


def test_every_alert_has_a_summary_and_a_runbook_section_in_operations_md() -> None:
    text = OPERATIONS.read_text(encoding="utf-8")
    # GitHub's anchors: the heading lowercased, punctuation dropped, spaces as hyphens.
    anchors = {
        re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in re.findall(r"^#+ (.+)$", text, re.M)
    }
    for rule in _rules():
        notes = rule["annotations"]
        assert notes["summary"].strip() and notes["description"].strip(), rule["alert"]
        path, _, anchor = notes["runbook_url"].partition("#")
        assert path == "docs/OPERATIONS.md", rule["alert"]
        assert anchor == rule["alert"].lower(), rule["alert"]
        assert anchor in anchors, f"{rule['alert']}: no section '{anchor}' in docs/OPERATIONS.md"
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]


def test_alerts_name_only_documented_metrics() -> None:
    documented = documented_metrics()
    assert "acr_ingest_last_poll_timestamp_seconds" in documented and len(documented) >= 15
    for rule in _rules():
        names = metric_names(rule["expr"])
        assert names, rule["alert"]
        assert names <= documented, f"{rule['alert']} names undocumented metrics: {sorted(names - documented)}"


# --- 2. a real Prometheus scraping a real worker and exporter -------------------------------------------------


@dataclass
class Prometheus:
    base: str
    process: ChildProcess

    def get(self, path: str, **params: str) -> Any:
        self.process.check()
        answer = requests.get(f"{self.base}{path}", params=params, timeout=10)
        body = answer.json()
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.get("/api/v1/query", query=expr)
        result: list[dict[str, Any]] = data["result"]
        return result

    def scalar(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def rule_state(self, alert: str) -> str:
        for group in self.get("/api/v1/rules", type="alert")["groups"]:
            for rule in group["rules"]:
                if rule["name"] == alert:
                    return str(rule["state"])
        raise AssertionError(f"Prometheus has no rule {alert}")

    def names(self) -> set[str]:
        return set(self.get("/api/v1/label/__name__/values"))


def _fast_rules(folder: Path) -> Path:
    """alerts.yml with every `for:` at 1s and every range of minutes made as many seconds ([10m] -> [10s]): the
    production durations would make this test wait minutes for what it checks, the alerts' firing and clearing
    on the real gauges. The expressions are otherwise the file's own."""
    doc = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    for group in doc["groups"]:
        for rule in group["rules"]:
            rule["for"] = "1s"
            rule["expr"] = re.sub(r"\[(\d+)m\]", r"[\1s]", rule["expr"])
    path = folder / "alerts.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


@dataclass
class Stack:
    prometheus: Prometheus
    worker_port: int
    exporter_port: int
    fingerprint_worker_port: int  # a target of the worker job from the start, down until a test starts that worker
    env: dict[str, str]
    jobs: int


@pytest.fixture(scope="module")
def stack(emulator: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A prefork worker with its metrics port, one beat, `acr-ingest metrics` and a Prometheus scraping the
    two every second; a few uploads (two answered 429, so the shared limit defers calls) already counted."""
    folder = tmp_path_factory.mktemp("ops")
    redis.Redis.from_url(BROKER).flushdb()
    worker_port, exporter_port, prometheus_port, fingerprint_port = free_port(), free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "ACR_INGEST_BROKER_URL": BROKER,
        "ACR_INGEST_METRICS_PORT": str(worker_port),
        "ACR_INGEST_METRICS_DIR": str(folder / "counters"),
        "ACR_INGEST_RATE_LIMIT": "50",  # the shared limit, which the injected 429s drain: limiter waits
    }
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "rule_files": [str(_fast_rules(folder))],
        "scrape_configs": [
            {
                "job_name": "acr-ingest-worker",
                "static_configs": [{"targets": [f"127.0.0.1:{worker_port}", f"127.0.0.1:{fingerprint_port}"]}],
            },
            {"job_name": "acr-ingest-state", "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"]}]},
        ],
    }
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    prometheus_bin = _tool("prometheus")
    with beat_process(env):
        # The deployments' main worker: its queues, not ingest.fingerprint (the fingerprint-worker's: a test starts it).
        worker = WorkerProcess("ops", env, concurrency=2, queues=f"{QUEUE},{POLL_QUEUE}")
        exporter = ChildProcess(
            "metrics-exporter",
            [ACR_INGEST, "metrics", "--host", "127.0.0.1", "--port", str(exporter_port)],
            log=WORKDIR / f"ops-exporter-{exporter_port}.log",
            # State only: the worker's counters are scraped from its own port (both would count them twice).
            env={k: v for k, v in env.items() if k not in ("ACR_INGEST_METRICS_DIR", "ACR_INGEST_METRICS_PORT")},
        )
        prom = Prometheus(
            f"http://127.0.0.1:{prometheus_port}",
            ChildProcess(
                "prometheus",
                [
                    prometheus_bin,
                    f"--config.file={folder / 'prometheus.yml'}",
                    f"--storage.tsdb.path={folder / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{prometheus_port}",
                    "--log.level=warn",
                ],
                log=WORKDIR / f"prometheus-{prometheus_port}.log",
                cwd=folder,
            ),
        )
        try:
            worker.wait_ready()
            wait_for(lambda: _ready(prom), timeout=30, what="Prometheus ready")
            wait_for(
                lambda: exporter.check() or prom.scalar('count(up{job=~"acr-ingest-.*"} == 1)') == 2,
                timeout=30,
                what=lambda: f"both targets up: {prom.get('/api/v1/targets')}",
            )
            n = 4
            emulator.set_faults(burst_429=2, retry_after=1)  # the next two API requests answer 429
            producer = producer_for(BROKER)
            for i in range(n):
                producer.upload_url(
                    f"https://cdn.example.com/ops{i}.mp3", title=f"O{i}", bucket_id=7_700_001, ref=f"o{i}"
                )
            wait_for(
                lambda: (
                    prom.scalar('sum(acr_ingest_jobs_total{kind="upload_url", outcome="succeeded"})') == n
                    and (prom.scalar("sum(acr_ingest_limiter_waits_total)") or 0) >= 1
                ),
                timeout=60,
                what=lambda: f"{n} uploads and a limiter wait seen by Prometheus: {_ours(prom)}",
            )
            emulator.faults.reset()
            yield Stack(prom, worker_port, exporter_port, fingerprint_port, env, n)
        finally:
            for proc in (prom.process, exporter):
                proc.stop()
            worker.stop()


def _ready(prom: Prometheus) -> bool:
    prom.process.check()
    try:
        return requests.get(f"{prom.base}/-/ready", timeout=2).status_code == 200
    except requests.ConnectionError:
        return False


def _ours(prom: Prometheus) -> dict[str, float]:
    return {
        f"{s['metric']['__name__']}{ {k: v for k, v in s['metric'].items() if k not in ('__name__', 'job')} }": float(
            s["value"][1]
        )
        for s in prom.query('{__name__=~"acr_ingest_.*"}')
    }


def test_prometheus_scrapes_the_series_and_the_auth_hold_alert_fires_and_clears(stack: Stack, emulator: Any) -> None:
    prom = stack.prometheus
    # The series, from both targets: the worker's counters and last poll, the exporter's state.
    by_job = {(s["metric"]["__name__"], s["metric"]["job"]) for s in prom.query('{__name__=~"acr_ingest_.*"}')}
    for name in documented_metrics():
        job = "acr-ingest-state" if name in _STATE_GAUGES else "acr-ingest-worker"
        assert (name, job) in by_job, f"{name} not scraped from {job}"
    # The two injected 429s (one may go to another test's worker polling the same emulator in a full run).
    assert prom.scalar("sum(acr_ingest_api_rate_limited_total)") in (1, 2)
    assert prom.scalar('sum(acr_ingest_files{bucket="7700001"})') == stack.jobs
    assert prom.scalar('acr_ingest_state_up{source="database"}') == 1
    # The beat is up: a poll ran within the last few seconds (the poll interval here is 0.5 s).
    wait_for(
        lambda: (prom.scalar("time() - max(acr_ingest_last_poll_timestamp_seconds)") or 1e9) < 10,
        timeout=30,
        what="a recent poll",
    )
    wait_for(lambda: prom.rule_state("AcrIngestNoPoll") == "inactive", timeout=30, what="AcrIngestNoPoll quiet")
    assert prom.rule_state("AcrIngestTokenRejected") == "inactive"

    # A 401: the API stops accepting our token; the next job holds all work. Several jobs, because one probe
    # per recheck interval may call the API and a lone job retrying at that interval is that probe each time:
    # the runs the hold defers (the gauge below) are the others'.
    emulator.set_tokens({"some-other-token"})
    held = 4
    for i in range(held):
        producer_for(BROKER).upload_url(
            f"https://cdn.example.com/held{i}.mp3", title=f"H{i}", bucket_id=7_700_001, ref=f"held{i}"
        )
    wait_for(
        lambda: prom.rule_state("AcrIngestTokenRejected") == "firing",
        timeout=30,
        what=lambda: f"AcrIngestTokenRejected firing: {prom.get('/api/v1/alerts')}",
    )
    firing = [a for a in prom.get("/api/v1/alerts")["alerts"] if a["labels"]["alertname"] == "AcrIngestTokenRejected"]
    assert [a["state"] for a in firing] == ["firing"]
    assert firing[0]["labels"]["severity"] == "critical"
    assert firing[0]["annotations"]["runbook_url"] == "docs/OPERATIONS.md#acringesttokenrejected"
    wait_for(
        lambda: (prom.scalar("max(acr_ingest_auth_held_tasks)") or 0) >= 1, timeout=30, what="runs deferred by the hold"
    )

    # The operator puts a valid token in place: the next probe lifts the hold, and the alert clears.
    emulator.set_tokens({TOKEN})
    wait_for(
        lambda: prom.rule_state("AcrIngestTokenRejected") == "inactive",
        timeout=30,
        what=lambda: f"AcrIngestTokenRejected cleared: {_ours(prom)}",
    )
    assert prom.scalar("max(acr_ingest_auth_held)") == 0
    wait_for(
        lambda: prom.scalar('sum(acr_ingest_jobs_total{kind="upload_url", outcome="succeeded"})') == stack.jobs + held,
        timeout=30,
        what="the held uploads ran after the hold",
    )
    assert not [a for a in prom.get("/api/v1/alerts")["alerts"] if a["labels"]["alertname"] == "AcrIngestTokenRejected"]


def _alerts(prom: Prometheus, name: str) -> list[dict[str, Any]]:
    return [a for a in prom.get("/api/v1/alerts")["alerts"] if a["labels"]["alertname"] == name]


def test_a_queue_no_worker_consumes_alerts_for_that_queue_and_clears_once_a_worker_takes_it(stack: Stack) -> None:
    """Fingerprint uploads while no fingerprint-worker runs: the main worker keeps taking its own queues, yet
    AcrIngestQueueNotConsumed fires for ingest.fingerprint (and for no other queue); a worker of that queue
    starts, takes the jobs, and the alert clears."""
    prom = stack.prometheus
    name = "AcrIngestQueueNotConsumed"
    wait_for(lambda: prom.rule_state(name) == "inactive", timeout=30, what=lambda: f"{name} quiet: {_ours(prom)}")
    # The main worker's series for the queue it does not consume is there at 0: "nothing taken", not "no data".
    assert prom.scalar(f'sum(acr_ingest_queue_tasks_total{{queue="{FINGERPRINT_QUEUE}"}})') == 0
    n = 3
    producer = producer_for(BROKER)
    for i in range(n):
        write_wav(MEDIA / f"ops-fp{i}.wav", 1.0, rate=8000, channels=1, seed=i)
        producer.upload_file(f"ops-fp{i}.wav", title=f"FP{i}", bucket_id=7_700_002, ref=f"fp{i}", send_as="fingerprint")
    wait_for(
        lambda: prom.scalar(f'acr_ingest_queue_depth{{queue="{FINGERPRINT_QUEUE}"}}') == n,
        timeout=30,
        what=lambda: f"{n} messages waiting in {FINGERPRINT_QUEUE}: {_ours(prom)}",
    )
    wait_for(
        lambda: [a["state"] for a in _alerts(prom, name)] == ["firing"],
        timeout=60,
        what=lambda: f"{name} firing: {prom.get('/api/v1/alerts')}",
    )
    [firing] = _alerts(prom, name)
    assert firing["labels"]["queue"] == FINGERPRINT_QUEUE and firing["labels"]["severity"] == "critical"
    assert firing["annotations"]["summary"] == f"Messages wait in queue {FINGERPRINT_QUEUE} and no worker takes them"
    assert firing["annotations"]["runbook_url"] == "docs/OPERATIONS.md#acringestqueuenotconsumed"
    # Meanwhile the main worker takes its queues (the beat's polls): a busy worker does not hide the idle queue.
    polls = prom.scalar(f'sum(acr_ingest_queue_tasks_total{{queue="{POLL_QUEUE}"}})') or 0
    wait_for(
        lambda: (prom.scalar(f'sum(acr_ingest_queue_tasks_total{{queue="{POLL_QUEUE}"}})') or 0) > polls,
        timeout=30,
        what="the main worker taking polls",
    )

    # The fingerprint-worker starts (as the deployments run it): it takes the jobs, and the alert clears.
    fingerprint_worker = WorkerProcess(
        "ops-fp",
        {
            **stack.env,
            "ACR_INGEST_METRICS_PORT": str(stack.fingerprint_worker_port),
            "ACR_INGEST_METRICS_DIR": str(WORKDIR / f"ops-fp-counters-{stack.fingerprint_worker_port}"),
        },
        concurrency=2,
        queues=FINGERPRINT_QUEUE,
    )
    try:
        fingerprint_worker.wait_ready(timeout=60)
        wait_for(
            lambda: prom.rule_state(name) == "inactive" and not _alerts(prom, name),
            timeout=60,
            what=lambda: f"{name} cleared: {_ours(prom)}",
        )
        wait_for(
            lambda: (
                prom.scalar(
                    f'sum(acr_ingest_queue_tasks_total{{queue="{FINGERPRINT_QUEUE}", '
                    f'instance="127.0.0.1:{stack.fingerprint_worker_port}"}})'
                )
                == n
            ),
            timeout=30,
            what=lambda: f"the fingerprint worker's {n} tasks counted: {_ours(prom)}",
        )
        # The alert may clear on the count before the exporter's next scrape shows the queue empty.
        wait_for(
            lambda: prom.scalar(f'acr_ingest_queue_depth{{queue="{FINGERPRINT_QUEUE}"}}') == 0,
            timeout=30,
            what=lambda: f"{FINGERPRINT_QUEUE} drained: {_ours(prom)}",
        )
    finally:
        fingerprint_worker.stop()


_STATE_GAUGES = {
    "acr_ingest_files",
    "acr_ingest_oldest_processing_age_seconds",
    "acr_ingest_auth_held",
    "acr_ingest_auth_held_tasks",
    "acr_ingest_api_down",
    "acr_ingest_outbox_backlog",
    "acr_ingest_rejected_messages",
    "acr_ingest_queue_depth",
    "acr_ingest_state_up",
}


# --- 3. the dashboard and the alerts name only what a live scrape shows ---------------------------------------


def _dashboard_queries() -> list[tuple[str, str]]:
    """(where, expression) for every panel target and every templating query of the dashboard."""
    doc = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    found = []
    for panel in doc["panels"]:
        for target in panel.get("targets", []):
            found.append((f"panel {panel['title']!r} {target['refId']}", target["expr"]))
    for var in doc["templating"]["list"]:
        if var["type"] == "query":
            found.append((f"variable {var['name']}", var["query"]["query"]))
    return found


def test_the_dashboard_names_only_metrics_a_live_scrape_shows(stack: Stack) -> None:
    scraped = stack.prometheus.names()
    assert {"acr_ingest_jobs_total", "acr_ingest_queue_depth", "acr_ingest_last_poll_timestamp_seconds"} <= scraped
    queries = _dashboard_queries()
    assert len(queries) >= 15
    named: set[str] = set()
    for where, expr in queries:
        m = re.fullmatch(r"label_values\((\w+), *\w+\)", expr)  # Grafana's variable query, not PromQL
        names = {m[1]} if m else metric_names(expr)
        assert names, f"{where}: names no metric: {expr}"
        assert names <= scraped, f"{where} names metrics no scrape shows: {sorted(names - scraped)}"
        named |= names
        if not m:  # valid PromQL: Prometheus evaluates it (Grafana's interval variables made concrete)
            stack.prometheus.query(expr.replace("$__rate_interval", "1m").replace("$bucket", ".*"))
    # The issue's panels: throughput, API calls, 429s and waits, files, oldest processing, queues, outbox, holds.
    assert {
        "acr_ingest_jobs_total",
        "acr_ingest_api_calls_total",
        "acr_ingest_api_rate_limited_total",
        "acr_ingest_limiter_waits_total",
        "acr_ingest_files",
        "acr_ingest_oldest_processing_age_seconds",
        "acr_ingest_queue_depth",
        "acr_ingest_outbox_backlog",
        "acr_ingest_auth_held",
        "acr_ingest_api_down",
    } <= named
    assert named <= documented_metrics(), f"undocumented in docs/METRICS.md: {sorted(named - documented_metrics())}"


def test_the_alerts_name_only_metrics_a_live_scrape_shows(stack: Stack) -> None:
    scraped = stack.prometheus.names()
    for rule in _rules():
        names = metric_names(rule["expr"])
        assert names <= scraped, f"{rule['alert']} names metrics no scrape shows: {sorted(names - scraped)}"


# --- 4. the Kubernetes manifests, validated offline ------------------------------------------------------------

K8S = ROOT / "deploy" / "kubernetes"
K8S_VERSION = "1.31.0"  # the schemas kubernetes-validate checks against (strict: unknown fields fail)
KEDA_SCHEMA = Path(__file__).resolve().parent / "fixtures" / "keda-v1alpha1.schema.json"
OVERLAYS = {"redis": "redis", "rabbitmq": "rabbitmq"}  # overlay directory -> the KEDA trigger it must use
_KUSTOMIZE_KEYS = {"apiVersion", "kind", "namespace", "resources", "patches"}
# The worker Deployments and the queues each serves: the fingerprint uploads' extraction on pods of its own.
WORKER_DEPLOYMENTS = {
    "acr-ingest-worker": {QUEUE, POLL_QUEUE},
    "acr-ingest-fingerprint-worker": {FINGERPRINT_QUEUE},
}


def kustomize(folder: Path) -> list[dict[str, Any]]:
    """What ``kustomize build`` makes of these files, for the features they use: ``resources`` (files and
    directories, recursively), ``namespace`` and ``patches`` of JSON 6902 operations with a target. Any other
    kustomization key fails, so a feature added to the manifests must be taught here first (no kustomize or
    kubectl binary here to build them)."""
    k = yaml.safe_load((folder / "kustomization.yaml").read_text(encoding="utf-8"))
    assert set(k) <= _KUSTOMIZE_KEYS, f"{folder}: kustomization keys this test cannot build: {set(k) - _KUSTOMIZE_KEYS}"
    assert (k["apiVersion"], k["kind"]) == ("kustomize.config.k8s.io/v1beta1", "Kustomization")
    docs: list[dict[str, Any]] = []
    for entry in k["resources"]:
        path = (folder / entry).resolve()
        if path.is_dir():
            docs.extend(kustomize(path))
        else:
            docs.extend(d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d)
    for patch in k.get("patches", []):
        target = patch["target"]
        hits = [d for d in docs if d["kind"] == target["kind"] and d["metadata"]["name"] == target["name"]]
        assert len(hits) == 1, f"{folder}: patch target {target} matches {len(hits)} resources"
        for op in yaml.safe_load(patch["patch"]):
            _json_patch(hits[0], op)
    if "namespace" in k:
        for d in docs:
            if d["kind"] != "Namespace":
                d["metadata"]["namespace"] = k["namespace"]
    return docs


def _json_patch(doc: dict[str, Any], op: dict[str, Any]) -> None:
    *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].lstrip("/").split("/")]
    node: Any = doc
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if op["op"] == "remove":
        assert last in node, f"patch removes {op['path']}, which is not there"
        del node[last]
    elif op["op"] in ("add", "replace"):
        node[last] = op["value"]
    else:
        raise AssertionError(f"JSON patch op {op['op']!r} not supported by this test")


def _by_kind(docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for d in docs:
        key = (d["kind"], d["metadata"]["name"])
        assert key not in out, f"{key} twice"
        out[key] = d
    return out


def _keda_validator() -> Any:
    import jsonschema

    schema = json.loads(KEDA_SCHEMA.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _validate(doc: dict[str, Any]) -> list[str]:
    """Errors of one resource: Kubernetes' own against its schemas, KEDA's against ours."""
    import kubernetes_validate

    if doc["apiVersion"].startswith("keda.sh/"):
        return [f"{e.json_path}: {e.message}" for e in _keda_validator().iter_errors(doc)]
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{'.'.join(map(str, exc.path))}: {exc.message}"]
    return []


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_kubernetes_manifests_validate_against_the_schemas(overlay: str) -> None:
    docs = kustomize(K8S / overlay)
    errors = [f"{d['kind']}/{d['metadata']['name']}: {e}" for d in docs for e in _validate(d)]
    assert not errors, "\n".join(errors)
    # The validators do reject what they do not know, so a pass means something.
    broken = json.loads(json.dumps(_by_kind(docs)[("Deployment", "acr-ingest-worker")]))
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"exec": {"command": ["x"]}}
    assert _validate(broken)
    keda = json.loads(json.dumps(_by_kind(docs)[("ScaledObject", "acr-ingest-worker")]))
    keda["spec"]["triggers"][0]["metadata"]["listLength" if overlay == "redis" else "value"] = 20  # not a string
    keda["spec"]["maxReplicas"] = 3  # KEDA's is maxReplicaCount
    assert len(_validate(keda)) == 2


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_kubernetes_deployment_shape(overlay: str) -> None:
    objs = _by_kind(kustomize(K8S / overlay))
    assert all(d["metadata"].get("namespace") == "acr-ingest" for k, d in objs.items() if k[0] != "Namespace")
    pod = lambda name: objs[("Deployment", name)]["spec"]["template"]["spec"]  # noqa: E731
    container = lambda name: pod(name)["containers"][0]  # noqa: E731

    # The migration runs `acr-ingest db upgrade` once; workers, beat and Flower run our commands.
    job = objs[("Job", "acr-ingest-migrate")]["spec"]["template"]["spec"]
    assert job["containers"][0]["command"] == ["acr-ingest", "db", "upgrade"]
    assert job["restartPolicy"] in ("OnFailure", "Never")

    # Workers of both kinds: stopped gracefully for longer than the longest upload; ready when `acr-ingest health`
    # passes; no liveness probe (it would restart every worker when the vendor's API is down); counters scraped per
    # pod; the same media (extraction reads the source file); the count KEDA's.
    from ingest.settings import Settings

    # The production defaults (this test run's environment shortens the timeouts).
    default = {name: field.default for name, field in Settings.model_fields.items()}
    longest_upload = 2 * default["read_timeout"] + default["connect_timeout"] + default["soft_shutdown_timeout"]
    assert longest_upload >= 120
    media = {m["name"]: m["mountPath"] for m in container("acr-ingest-worker")["volumeMounts"]}["media"]
    for name in WORKER_DEPLOYMENTS:
        worker = container(name)
        assert worker["command"][:2] == ["acr-ingest", "worker"], name
        assert pod(name)["terminationGracePeriodSeconds"] > longest_upload, name
        assert worker["readinessProbe"]["exec"]["command"] == ["acr-ingest", "health"], name
        assert "livenessProbe" not in worker, name
        env = {e["name"]: e.get("value") for e in worker["env"]}
        assert env["ACR_INGEST_METRICS_PORT"] == "9465" and env["ACR_INGEST_METRICS_DIR"], name
        assert {"name": "metrics", "containerPort": 9465} in worker["ports"], name
        annotations = objs[("Deployment", name)]["spec"]["template"]["metadata"]["annotations"]
        assert annotations == {"prometheus.io/scrape": "true", "prometheus.io/port": "9465"}, name
        assert {m["name"]: m["mountPath"] for m in worker["volumeMounts"]}["media"] == media, name
        assert worker["resources"]["requests"]["cpu"] and worker["resources"]["limits"]["memory"], name
        assert "replicas" not in objs[("Deployment", name)]["spec"], f"KEDA owns {name}'s count"
    # Each kind serves its queues, and together they serve every queue once (tests/test_deploy.py has the why).
    served = {name: worker_queues(container(name)["command"]) for name in WORKER_DEPLOYMENTS}
    assert served == WORKER_DEPLOYMENTS
    deployed_workers = {
        k[1] for k, d in objs.items() if k[0] == "Deployment" and "worker" in container(k[1])["command"]
    }
    assert deployed_workers == set(WORKER_DEPLOYMENTS)
    assert set().union(*served.values()) == app_queues()

    # The token is a file from a Secret, mounted where ACR_INGEST_ACCESS_TOKEN_FILE points.
    config = objs[("ConfigMap", "acr-ingest-config")]["data"]
    token_file = Path(config["ACR_INGEST_ACCESS_TOKEN_FILE"])
    assert objs[("Secret", "acr-ingest-token")]["stringData"].keys() == {token_file.name}
    for name in (*WORKER_DEPLOYMENTS, "acr-ingest-beat"):
        mounts = {m["name"]: m for m in container(name)["volumeMounts"]}
        volumes = {v["name"]: v for v in pod(name)["volumes"]}
        assert mounts["token"]["mountPath"] == str(token_file.parent) and mounts["token"]["readOnly"]
        assert volumes["token"]["secret"]["secretName"] == "acr-ingest-token"
    for d in objs.values():  # no token, password or URL with credentials outside the Secrets
        if d["kind"] != "Secret":
            assert "REPLACE_ME" not in json.dumps(d) and 'ACR_INGEST_ACCESS_TOKEN"' not in json.dumps(d)

    # Exactly one beat, and a rollout never runs two; one state exporter.
    beat = objs[("Deployment", "acr-ingest-beat")]["spec"]
    assert beat["replicas"] == 1 and beat["strategy"] == {"type": "Recreate"}
    assert container("acr-ingest-beat")["command"] == ["acr-ingest", "beat"]
    assert objs[("Deployment", "acr-ingest-metrics")]["spec"]["replicas"] == 1
    assert container("acr-ingest-metrics")["command"][:2] == ["acr-ingest", "metrics"]

    # Flower behind its basic auth, from a Secret; a ClusterIP Service only.
    flower = container("acr-ingest-flower")
    assert flower["command"][:2] == ["acr-ingest", "flower"]
    assert {"secretRef": {"name": "acr-ingest-flower"}} in flower["envFrom"]
    assert "FLOWER_BASIC_AUTH" in objs[("Secret", "acr-ingest-flower")]["stringData"]
    assert objs[("Service", "acr-ingest-flower")]["spec"].get("type", "ClusterIP") == "ClusterIP"

    # KEDA scales each worker Deployment on the length of the job queue it serves (the poll's is not work that
    # waits: one message per interval), with the broker's own scaler: one ScaledObject per Deployment.
    scaled_objects = [d for k, d in objs.items() if k[0] == "ScaledObject"]
    targets = [d["spec"]["scaleTargetRef"]["name"] for d in scaled_objects]
    assert sorted(targets) == sorted(WORKER_DEPLOYMENTS), "one ScaledObject per worker Deployment"
    for so in scaled_objects:
        scaled = so["spec"]
        target = scaled["scaleTargetRef"]
        assert (target["kind"], target["apiVersion"]) == ("Deployment", "apps/v1")
        assert scaled["minReplicaCount"] >= 1  # a worker also consumes the poll queue, or holds retries' countdowns
        watched = []
        for trigger in scaled["triggers"]:
            assert trigger["type"] == OVERLAYS[overlay]
            if overlay == "redis":
                watched.append(trigger["metadata"]["listName"])
            else:
                assert trigger["metadata"]["mode"] == "QueueLength"
                watched.append(trigger["metadata"]["queueName"])
                auth = objs[("TriggerAuthentication", trigger["authenticationRef"]["name"])]["spec"]
                assert auth["secretTargetRef"] == [
                    {"parameter": "host", "name": "acr-ingest-env", "key": "ACR_INGEST_BROKER_URL"}
                ]
        assert set(watched) == served[target["name"]] - {POLL_QUEUE}, f"{target['name']} scales on {watched}"
