#!/usr/bin/env python3
"""Checks the operations material against what the gateway exports.

    check_ops.py METRICS_FILE [--prometheus URL]

METRICS_FILE is a scrape of the gateway's /metrics (Prometheus text format). Every
query of the Grafana dashboard (ops/grafana/*.json) and every expression of the
alert rules (ops/prometheus/alerts.yaml) must name only metrics the gateway
exports, and at least one. With --prometheus, every dashboard query (its Grafana
variables filled in) must also run on that Prometheus without error.

Prints `ok - ...` / `not ok - ...` lines (scripts/tap.sh's format); exits 1 on a
failure.
"""

import argparse
import json
import pathlib
import re
import sys
import urllib.parse
import urllib.request

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
DASHBOARDS = sorted((ROOT / "ops" / "grafana").glob("*.json"))
RULES = ROOT / "ops" / "prometheus" / "alerts.yaml"
METRIC = re.compile(r"\bwecom_kf_upgrade_[a-z0-9_]+")
# What Grafana fills in before a query reaches Prometheus.
VARIABLES = {"$__rate_interval": "1m", "$__range": "5m", "$__interval": "15s",
             "$job": ".*", "$app": ".*"}

failed = 0


def report(good, name, why=""):
    global failed
    if good:
        print(f"ok - {name}")
    else:
        failed += 1
        print(f"not ok - {name}")
        for line in str(why).splitlines():
            print(f"#   {line}")


def exported(metrics_text):
    """Metric names in a scrape: every sample's name, and every family's."""
    names = set()
    for line in metrics_text.splitlines():
        if line.startswith("# TYPE ") or line.startswith("# HELP "):
            names.add(line.split()[2])
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def dashboard_queries(dashboard):
    """(where, expr) of every panel target and query variable."""
    def panels(items):
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))
    for panel in panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            if target.get("expr"):
                yield f"panel '{panel.get('title')}' {target.get('refId')}", target["expr"]
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if variable.get("type") == "query" and query:
            yield f"variable '{variable['name']}'", query


def check_names(where, expr, names):
    used = set(METRIC.findall(expr))
    unknown = sorted(used - names)
    report(used and not unknown, f"{where} names only exported metrics",
           f"unknown: {unknown}" if used else f"names no gateway metric: {expr}")


def fill(expr):
    for variable, value in VARIABLES.items():
        expr = expr.replace(variable, value)
    # label_values(...) is Grafana's, not PromQL: query the series it reads.
    match = re.fullmatch(r"label_values\((.*),\s*\w+\)", expr.strip(), re.S)
    return match.group(1) if match else expr


def runs_on(prometheus, expr):
    url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            answer = json.load(response)
    except urllib.error.HTTPError as error:
        answer = json.load(error)
    return answer.get("status") == "success", answer.get("error", "")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("metrics")
    parser.add_argument("--prometheus")
    args = parser.parse_args()
    names = exported(pathlib.Path(args.metrics).read_text())
    report(any(n.startswith("wecom_kf_upgrade_") for n in names),
           "the scrape holds the gateway's metrics")

    report(bool(DASHBOARDS), "ops/grafana holds a dashboard")
    for path in DASHBOARDS:
        try:
            dashboard = json.loads(path.read_text())
        except ValueError as error:
            report(False, f"{path.name} parses as JSON", error)
            continue
        report(True, f"{path.name} parses as JSON")
        queries = list(dashboard_queries(dashboard))
        report(len(queries) >= 10, f"{path.name} has queries ({len(queries)})")
        for where, expr in queries:
            check_names(f"{path.name} {where}", expr, names)
            if args.prometheus:
                good, why = runs_on(args.prometheus, fill(expr))
                report(good, f"{path.name} {where} runs on Prometheus", why)

    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            check_names(f"alert {rule['alert']}", rule["expr"], names)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
