"""What operators run: the Prometheus alert rules, the Grafana dashboard, the Kubernetes manifests.

1. The rules pass ``promtool check rules``, and ``promtool test rules`` runs deploy/prometheus/alerts_test.yml,
   which has a test in which each alert fires. Each alert links a runbook section of docs/OPERATIONS.md.
2. A real Prometheus (Debian's ``prometheus`` package, the same as promtool's) on loopback scrapes a real
   prefork worker's port and ``acr-ingest metrics`` while jobs run against the emulator; through its HTTP API
   the series are there, and a 401 auth hold makes the token-rejected alert fire and then clear.
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
from tests.conftest import REDIS_URL, TOKEN, WORKDIR
from tests.faults.conftest import WorkerProcess, beat_process, producer_for
from tests.helpers import wait_for

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
