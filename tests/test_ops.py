"""ops/: Prometheus configuration and rules (promtool), the dashboard against the metrics
the server declares, runbooks, the compose file and the systemd unit.

The promtool tests need the ``promtool`` binary (``apt-get install prometheus``, or a
Prometheus release tarball); without it they are skipped, saying so.
"""

from __future__ import annotations

import asyncio
import configparser
import json
import re
import shutil
import socket
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_metrics import in_process_server, post_purchases

from processor.cache.layout import LISTPACK_ENTRIES_MIN, LISTPACK_VALUE_BYTES_MIN
from processor.runtime import metrics
from processor.runtime.settings import Settings
from processor.service.tls import is_loopback

ROOT = Path(__file__).resolve().parent.parent
OPS = ROOT / "ops"
PROMETHEUS = OPS / "prometheus"
DASHBOARD = OPS / "grafana" / "dashboard.json"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool is not installed (apt-get install prometheus); .ci/run installs it",
)

# PromQL words that look like metric names but are not.
PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "bool", "offset", "inf", "nan", "Inf", "NaN",
}  # fmt: skip
FOLLOWED_BY = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")


def promtool(*arguments: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *arguments],
        cwd=PROMETHEUS,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def metric_names(expr: str) -> set[str]:
    """The metric (and recording rule) names a PromQL expression selects."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range and subquery durations
    expr = FOLLOWED_BY.sub("", expr)  # grouping label lists
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        before = expr[match.start() - 1] if match.start() else " "
        if before.isdigit() or before == ".":  # 1e-3, 5m
            continue
        if expr[match.end() :].lstrip().startswith("("):  # a function or aggregation
            continue
        if match.group() not in PROMQL_WORDS:
            names.add(match.group())
    return names


def rules() -> list[dict[str, Any]]:
    loaded = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    return [rule for group in loaded["groups"] for rule in group["rules"]]


def recorded_names() -> set[str]:
    return {rule["record"] for rule in rules() if "record" in rule}


def alert_names() -> set[str]:
    return {rule["alert"] for rule in rules() if "alert" in rule}


def dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    found = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            found.append((panel["title"], target["expr"]))
    return found


# --------------------------------------------------------------------------- promtool


@needs_promtool
def test_prometheus_configs_are_valid() -> None:
    checked = promtool("check", "config", "prometheus.yml", "prometheus-compose.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr


@needs_promtool
def test_alert_rules_are_valid() -> None:
    checked = promtool("check", "rules", "alerts.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr


@needs_promtool
def test_alert_rule_unit_tests_pass() -> None:
    checked = promtool("test", "rules", "alerts_test.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr


@needs_promtool
def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    # promtool has no query linter of its own; a rule file of the queries gets them parsed.
    queries = [expr.replace("$__rate_interval", "5m") for _, expr in dashboard_queries()]
    group = {"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{index}", "expr": expr} for index, expr in enumerate(queries)
    ]}  # fmt: skip
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [group]}))
    checked = promtool("check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr


@needs_promtool
@pytest.mark.integration
async def test_live_metrics_pass_promtool_check_metrics(schema_url: str, redis_url: str) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with in_process_server(schema_url, redis_url) as served:
        exposition = metrics.start_exposition(f"127.0.0.1:{port}")
        try:
            outcomes = await post_purchases(
                served.address, served.cards, 20, channel_count=2, key=served.key
            )
            assert set(outcomes.values()) == {"OK"}
            await asyncio.sleep(metrics.SAMPLE_INTERVAL_SECONDS + 0.2)
            text = await asyncio.to_thread(_scrape, f"http://127.0.0.1:{port}/metrics")
        finally:
            exposition.shutdown()
            exposition.server_close()
    assert "grpc_server_handled_total{" in text and "loyalty_transactions_total{" in text
    checked = promtool("check", "metrics", stdin=text)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    exported = {
        match.group(1) for match in re.finditer(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", text, re.M)
    }
    own = {name for name in exported if not name.startswith(("process_", "python_"))}
    assert own <= metrics.exported_names(), own - metrics.exported_names()


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


# --------------------------------------------------------------------------- names


def test_metric_names_are_read_from_promql() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le, grpc_method) "
        '(rate(loyalty_commit_seconds_bucket{le!="1",'
        'reason=~"a|b"}[5m] offset 1h))) / on (job) group_left (x) up > 1e-3 and '
        "loyalty:latency_slow:ratio_rate5m unless vector(0.2)"
    )
    assert metric_names(expr) == {
        "loyalty_commit_seconds_bucket",
        "up",
        "loyalty:latency_slow:ratio_rate5m",
    }


def test_every_dashboard_query_names_a_metric_the_server_exports() -> None:
    queries = dashboard_queries()
    assert len(queries) >= 10
    known = metrics.exported_names() | recorded_names()
    for title, expr in queries:
        names = metric_names(expr)
        if expr.strip().startswith("vector("):
            continue
        assert names, (title, expr)
        assert names <= known, (title, names - known)


def test_the_dashboard_has_the_panels_an_operator_needs() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = " ".join(expr for _, expr in dashboard_queries())
    for needed in (
        "grpc_server_handled_total",  # throughput, errors by code
        "grpc_server_handling_seconds_bucket",  # latency p50 / p99
        "loyalty_batch_size_bucket",
        "loyalty_commit_seconds_bucket",
        "loyalty_cache_hits_total",
        "loyalty_queue_depth",
        "loyalty_points_issued_total",
    ):
        assert needed in queries, needed
    assert "histogram_quantile(0.5," in queries and "histogram_quantile(0.99," in queries
    assert dashboard["uid"] and dashboard["templating"]["list"][0]["type"] == "datasource"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_every_rule_names_metrics_the_server_exports() -> None:
    known = metrics.exported_names() | recorded_names() | {"up"}
    for rule in rules():
        names = metric_names(rule["expr"])
        assert names <= known, (rule.get("alert") or rule.get("record"), names - known)


# --------------------------------------------------------------------------- alerts and runbooks


def test_the_required_alerts_exist() -> None:
    assert {
        "AvailabilityBudgetBurn", "LatencyBudgetBurn", "DatabaseDown", "CacheErrors",
        "CommitLatencyHigh", "Overloaded",
    } <= alert_names()  # fmt: skip


def test_every_alert_has_a_runbook_and_a_summary() -> None:
    for rule in rules():
        if "alert" not in rule:
            continue
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], rule["alert"]
        assert rule["labels"]["severity"] in ("page", "ticket"), rule["alert"]
        assert annotations["runbook_url"] == f"ops/runbooks/{rule['alert']}.md"
        runbook = (ROOT / annotations["runbook_url"]).read_text()
        assert runbook.startswith(f"# {rule['alert']}\n")
        for section in ("## What it means", "## How to check", "## What to do"):
            assert section in runbook, (rule["alert"], section)


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    loaded = yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())
    firing, quiet = set(), set()
    for test in loaded["tests"]:
        for case in test.get("alert_rule_test", []):
            (firing if case["exp_alerts"] else quiet).add(case["alertname"])
    assert firing >= alert_names(), alert_names() - firing
    assert quiet >= alert_names(), alert_names() - quiet


def test_every_alert_rule_and_panel_selects_the_processors_scrape_job() -> None:
    # In a Prometheus shared with other programs, a rule or panel reads only the series of
    # the scrape job "loyalty" (prometheus.yml's): grpc_server_* names are everyone's.
    queries = [rule["expr"] for rule in rules()] + [expr for _, expr in dashboard_queries()]
    for expr in queries:
        for name, selector in re.findall(r"\b((?:grpc_server|loyalty)_\w+)(\{[^}]*\})?", expr):
            assert selector.startswith('{job="loyalty"'), (name, expr)


def test_burn_rate_alerts_use_two_windows_each() -> None:
    for rule in rules():
        if rule.get("alert") in ("AvailabilityBudgetBurn", "LatencyBudgetBurn"):
            windows = re.findall(r"ratio_rate(\w+)", rule["expr"])
            assert len(windows) == 4 and len(set(windows)) == 4, rule["expr"]


@pytest.mark.parametrize(
    ("file", "target"),
    [("prometheus.yml", "127.0.0.1:8000"), ("prometheus-compose.yml", "processor:8000")],
)
def test_each_scrape_config_names_only_the_server_that_runs_where_it_is_used(
    file: str, target: str
) -> None:
    config = yaml.safe_load((PROMETHEUS / file).read_text())
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "loyalty"]
    targets = {target for static in job["static_configs"] for target in static["targets"]}
    assert targets == {target}  # no target down by design
    assert Settings().metrics_listen == "127.0.0.1:8000"
    assert config["rule_files"] == ["alerts.yml"]


def test_compose_runs_prometheus_with_its_own_scrape_config() -> None:
    compose = yaml.safe_load((OPS / "compose.yaml").read_text())
    command = compose["services"]["prometheus"]["command"]
    assert "--config.file=/etc/prometheus/prometheus-compose.yml" in command


# --------------------------------------------------------------------------- compose and systemd


def test_compose_runs_the_stack_with_the_dashboard_provisioned() -> None:
    compose = yaml.safe_load((OPS / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "redis", "processor", "prometheus", "grafana"} <= set(services)
    # The account cache's buckets stay compact listpacks only under these settings.
    redis_flags = services["redis"]["command"]
    for name, minimum in (
        ("--hash-max-listpack-value", LISTPACK_VALUE_BYTES_MIN),
        ("--hash-max-listpack-entries", LISTPACK_ENTRIES_MIN),
    ):
        assert int(redis_flags[redis_flags.index(name) + 1]) >= minimum, name
    processor = services["processor"]
    assert processor["build"]["dockerfile"] == "ops/Dockerfile"
    assert (OPS / "Dockerfile").exists() and (OPS / "Dockerfile.dockerignore").exists()
    assert processor["environment"]["LOYALTY_METRICS_LISTEN"].endswith(":8000")
    grace = float(processor["environment"]["LOYALTY_GRACE_SECONDS"])
    assert _seconds(processor["stop_grace_period"]) > grace
    mounts = " ".join(services["grafana"]["volumes"])
    assert "./grafana/dashboard.json:" in mounts and "./grafana/provisioning:" in mounts
    assert "./prometheus:/etc/prometheus" in " ".join(services["prometheus"]["volumes"])
    provisioned = yaml.safe_load(
        (OPS / "grafana/provisioning/datasources/prometheus.yaml").read_text()
    )
    assert provisioned["datasources"][0]["url"] == "http://prometheus:9090"


def test_the_systemd_unit_stops_gracefully_and_is_hardened() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string((OPS / "systemd/loyalty.service").read_text())
    service = unit["Service"]
    assert service["EnvironmentFile"].startswith("/etc/loyalty/")
    assert service["KillSignal"] == "SIGTERM" and service["KillMode"] == "mixed"
    assert float(service["TimeoutStopSec"]) > Settings().grace_seconds
    assert service["ExecStart"].endswith("loyalty serve")
    assert service["User"] != "root"
    for hardening in (
        "NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices",
        "ProtectKernelTunables", "ProtectControlGroups", "RestrictAddressFamilies",
        "SystemCallFilter", "CapabilityBoundingSet",
    ):  # fmt: skip
        assert hardening in service, hardening
    example = (OPS / "systemd/loyalty.env.example").read_text()
    grace = re.search(r"^LOYALTY_GRACE_SECONDS=(\S+)", example, re.M)
    assert grace and float(grace.group(1)) < float(service["TimeoutStopSec"])


def test_the_example_settings_serve_beyond_loopback_only_with_tls_or_a_proxy_said() -> None:
    example = (OPS / "systemd/loyalty.env.example").read_text()
    host = dict(re.findall(r"^(LOYALTY_\w+)=(\S*)", example, re.M))
    compose = yaml.safe_load((OPS / "compose.yaml").read_text())
    local = {k: str(v) for k, v in compose["services"]["processor"]["environment"].items()}
    for settings in (host, local):
        files = settings.get("LOYALTY_TLS_CERT") and settings.get("LOYALTY_TLS_KEY")
        allowed = settings.get("LOYALTY_PLAINTEXT_ALLOWED") == "true"
        for name in ("LOYALTY_LISTEN", "LOYALTY_METRICS_LISTEN"):
            assert files or allowed or is_loopback(settings[name]), (name, settings[name])
    assert host["LOYALTY_LISTEN"].startswith("0.0.0.0") and "LOYALTY_PLAINTEXT_ALLOWED" not in host


def _seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)(s|m)", duration)
    assert match, duration
    return float(match.group(1)) * (60 if match.group(2) == "m" else 1)


@pytest.mark.skipif(
    shutil.which("haproxy") is None, reason="haproxy is not installed; .ci/run installs it"
)
def test_the_haproxy_example_is_a_valid_configuration() -> None:
    haproxy = shutil.which("haproxy")
    assert haproxy is not None
    result = subprocess.run(
        [haproxy, "-c", "-f", str(OPS / "haproxy" / "haproxy.cfg")],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_citus_distribution_names_every_table_of_the_migrations() -> None:
    migrations = "\n".join(
        path.read_text(encoding="utf-8")
        for path in sorted((ROOT / "processor" / "store" / "migrations").glob("*.sql"))
    )
    tables = set(re.findall(r"^CREATE TABLE (\w+) \(", migrations, flags=re.M))
    distribution = (OPS / "postgres" / "citus.sql").read_text(encoding="utf-8")
    named = set(
        re.findall(
            r"(?:create_(?:reference|distributed)_table|citus_add_local_table_to_metadata)"
            r"\('(\w+)'",
            distribution,
        )
    )
    assert named == tables, f"not distributed: {tables - named}; unknown: {named - tables}"
