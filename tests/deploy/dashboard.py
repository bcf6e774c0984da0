"""Read the PromQL expressions out of the Grafana dashboard, ready to run against Prometheus.

``dashboard_expressions(path)`` returns every target's ``expr`` of every panel (rows'
nested panels included), in panel order, with Grafana's template variables substituted so
the text is plain PromQL: ``$rig``/``${rig}``/``[[rig]]`` (any dashboard variable) become
``.*`` and the interval variables become ``1m`` (``$__range`` 5m), as an end-to-end test
querying a real Prometheus needs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "leukoscope.json"

# Grafana's built-in variables that stand for a duration.
DURATIONS = {
    "__rate_interval": "1m",
    "__interval": "1m",
    "__range": "5m",
}


def iter_panels(dashboard: dict) -> Iterator[dict]:
    """Every panel, including those nested in (collapsed) rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def substitute(expr: str, variables: list[str]) -> str:
    """Replace Grafana variables in ``expr`` by values valid in plain PromQL."""

    def value(name: str) -> str:
        if name in DURATIONS:
            return DURATIONS[name]
        if name.startswith("__"):
            raise ValueError(f"unsupported Grafana built-in variable ${name} in {expr!r}")
        if name not in variables:
            raise ValueError(f"variable ${name} in {expr!r} is not defined by the dashboard")
        return ".*"

    # ${name}, ${name:format}, [[name]], then $name (longest names first via \w+ greediness).
    expr = re.sub(r"\$\{(\w+)(?::\w+)?\}", lambda m: value(m.group(1)), expr)
    expr = re.sub(r"\[\[(\w+)\]\]", lambda m: value(m.group(1)), expr)
    expr = re.sub(r"\$(\w+)", lambda m: value(m.group(1)), expr)
    return expr


def dashboard_expressions(path: str | Path = DASHBOARD) -> list[str]:
    """Every PromQL expression of the dashboard at ``path``, variables substituted."""
    dashboard = json.loads(Path(path).read_text())
    variables = [v["name"] for v in dashboard.get("templating", {}).get("list", [])]
    out: list[str] = []
    for panel in iter_panels(dashboard):
        if panel.get("type") == "row":
            continue
        for target in panel.get("targets", []):
            expr = target.get("expr", "").strip()
            if expr:
                out.append(substitute(expr, variables))
    return out


if __name__ == "__main__":  # print them, one per line: python tests/deploy/dashboard.py
    import sys

    for line in dashboard_expressions(sys.argv[1] if len(sys.argv) > 1 else DASHBOARD):
        print(line)
