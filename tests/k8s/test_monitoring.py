"""The monitoring pieces against a running server: every metric the adapter rule, the dashboard and
the alerts query exists on the real server's metrics page (GPU metrics against Triton's documented
list, since this host has no GPU), and the alerting rules have the Prometheus Operator's structure.
"""

from __future__ import annotations

import re
import urllib.request
from typing import Any

import pytest
import yaml

from tests.k8s.test_manifests import (
    K8S_DIR,
    KUBECTL,
    adapter_rules,
    dashboard,
    dashboard_exprs,
    hpa_metric_name,
    render,
    single,
)

pytestmark = pytest.mark.skipif(KUBECTL is None, reason="`kubectl` renders the monitoring kustomization")

# Triton's GPU metrics (docs/user_guide/metrics.md, "GPU Metrics"): exported only where NVML finds a GPU.
DOCUMENTED_GPU_METRICS = {
    "nv_gpu_utilization",
    "nv_gpu_memory_total_bytes",
    "nv_gpu_memory_used_bytes",
    "nv_gpu_power_usage",
    "nv_gpu_power_limit",
    "nv_energy_consumption",
}
PROMQL_WORDS = {
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
}
# What the adapter's templates expand to (a pod's selector).
ADAPTER_TEMPLATES = {"<<.LabelMatchers>>": 'namespace="ns",pod="p"', "<<.GroupBy>>": "pod"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (functions, keywords, labels and numbers left out)."""
    for template, value in ADAPTER_TEMPLATES.items():
        expr = expr.replace(template, value)
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings (label values, Grafana variables)
    expr = re.sub(r"\{[^}]*\}", "{}", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"(?<![\w.])\d+(?:\.\d+)?(?:e[+-]?\d+)?", " ", expr)  # numbers
    names = set()
    for match in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
        following = expr[match.end() :].lstrip()
        if not following.startswith("(") and match[0].lower() not in PROMQL_WORDS:
            names.add(match[0])
    return names


def alert_rules() -> list[dict[str, Any]]:
    (rule,) = [obj for obj in render("monitoring") if obj["kind"] == "PrometheusRule"]
    return [r for group in rule["spec"]["groups"] for r in group["rules"]]


def shipped_exprs() -> dict[str, str]:
    """Every PromQL expression shipped: adapter rules, dashboard targets and variables, alerts."""
    exprs = {}
    for rule in adapter_rules():
        exprs[f"adapter {rule['name']['as']} seriesQuery"] = rule["seriesQuery"]
        exprs[f"adapter {rule['name']['as']} metricsQuery"] = rule["metricsQuery"]
    for index, expr in enumerate(dashboard_exprs()):
        exprs[f"dashboard target {index}"] = expr
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            exprs[f"dashboard variable {variable['name']}"] = re.sub(
                r"^label_values\((.*),\s*\w+\)$", r"\1", variable["definition"]
            )
    for rule in alert_rules():
        exprs[f"alert {rule['alert']}"] = rule["expr"]
    return exprs


@pytest.fixture(scope="module")
def served_names(triton_server) -> set[str]:
    """Metric names on the session server's metrics page (after a request, so every family has samples)."""
    from s2i.client import Client

    with Client(triton_server.grpc_url, timeout_s=120) as client:
        client.text_to_image("a lighthouse", num_inference_steps=1, seed=1)
    url = f"http://127.0.0.1:{triton_server.options.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        page = response.read().decode("utf-8")
    return {line.split("{", 1)[0].split(" ", 1)[0] for line in page.splitlines() if line and not line.startswith("#")}


# --------------------------------------------------------------------------- the parser


def test_metric_names_leave_out_functions_labels_and_numbers_when_parsing():
    expr = (
        'histogram_quantile(0.95, sum by (model, le) (rate(s2i_request_duration_seconds_bucket{model="diffusion",'
        'pod=~"$pod"}[$__rate_interval]))) / clamp_min(sum without (pod) (nv_inference_count{a="b"}), 1e-9) > 30'
    )

    assert metric_names(expr) == {"s2i_request_duration_seconds_bucket", "nv_inference_count"}


def test_metric_names_read_adapter_templates_when_parsing():
    expr = "sum by (<<.GroupBy>>) (avg_over_time(nv_inference_pending_request_count{<<.LabelMatchers>>}[1m]))"

    assert metric_names(expr) == {"nv_inference_pending_request_count"}


# --------------------------------------------------------------------------- against the running server


def test_shipped_queries_read_only_metrics_the_server_serves_when_running(served_names):
    missing = {
        where: sorted(metric_names(expr) - served_names - DOCUMENTED_GPU_METRICS)
        for where, expr in shipped_exprs().items()
    }

    assert {where: names for where, names in missing.items() if names} == {}


def test_shipped_queries_use_only_documented_gpu_metrics_when_parsed():
    gpu_names = {name for expr in shipped_exprs().values() for name in metric_names(expr) if "_gpu_" in name}

    assert gpu_names
    assert gpu_names <= DOCUMENTED_GPU_METRICS


def test_adapter_rule_entry_models_each_have_a_pending_series_when_running(triton_server):
    (models,) = re.findall(r'model=~"([^"]+)"', adapter_rules()[0]["metricsQuery"])
    url = f"http://127.0.0.1:{triton_server.options.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        page = response.read().decode("utf-8")

    for model in models.split("|"):
        assert re.search(rf'^nv_inference_pending_request_count\{{model="{model}",', page, re.MULTILINE), model


def test_hpa_scales_on_the_adapter_rule_the_readme_explains_when_rendered():
    readme = (K8S_DIR / "README.md").read_text()
    target = single("gpu", "HorizontalPodAutoscaler")["spec"]["metrics"][0]["pods"]["target"]["averageValue"]

    assert hpa_metric_name("gpu") == adapter_rules()[0]["name"]["as"] == "triton_entry_pending_requests"
    assert "triton_entry_pending_requests" in readme and f"target {target}" in readme


# --------------------------------------------------------------------------- alerting rules


def test_alert_rules_have_operator_structure_when_rendered():
    (rule,) = [obj for obj in render("monitoring") if obj["kind"] == "PrometheusRule"]

    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    for alert in alert_rules():
        assert set(alert) <= {"alert", "expr", "for", "labels", "annotations"}, alert["alert"]
        assert re.fullmatch(r"\d+[smh]", alert["for"]), alert["alert"]
        assert alert["labels"]["severity"] in {"warning", "critical"}
        assert alert["annotations"]["summary"]


def test_alert_rules_are_explained_in_readme_when_shipped():
    readme = (K8S_DIR / "README.md").read_text()

    for alert in alert_rules():
        assert alert["alert"] in readme


def test_alert_file_parses_as_one_document_when_read():
    docs = list(yaml.safe_load_all((K8S_DIR / "monitoring" / "alerts.yaml").read_text()))

    assert len(docs) == 1 and docs[0]["kind"] == "PrometheusRule"
