"""The tables and the chart of `clipgap evaluate`, made from its json report."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich import box
from rich.table import Table

TITLES = {"voc07": "VOC07 11-point AP50", "voc": "VOC area AP50", "coco": "COCO AP@[.5:.95]"}


def scores(domain: Mapping[str, Any], metric: str) -> tuple[dict[str, float | None], float]:
    """Per-class AP and the mean that `metric` names, from one domain of a report (in [0, 1])."""
    if metric == "coco":
        return domain["coco"]["per_class"], domain["coco"]["AP"]
    return domain[metric]["per_class"], domain[metric]["mAP"]


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def domain_table(report: Mapping[str, Any], metric: str) -> Table:
    """Rows: domains (* the source); columns: the classes, their mean, and COCO AP beside a VOC
    metric (in %)."""
    table = Table(
        title=f"{TITLES[metric]} (%) of {Path(report['checkpoint']).name}",
        caption="* source domain, scored on its test split; targets on their train split",
        box=box.SIMPLE_HEAD,  # no vertical rules: ten columns fit an 80-character terminal
    )
    table.add_column("domain", no_wrap=True)
    # A value fits whole in 4 characters (`25.6`); narrow consoles shorten the headers instead.
    for name in report["classes"]:
        table.add_column(name, justify="right", min_width=4)
    table.add_column("mAP", justify="right", style="bold", min_width=4)
    if metric != "coco":
        table.add_column("COCO AP", justify="right", min_width=4)
    for name, domain in report["domains"].items():
        per_class, mean = scores(domain, metric)
        row = [f"{name}*" if domain["role"] == "source" else name]
        row += [_percent(per_class[c]) for c in report["classes"]] + [_percent(mean)]
        if metric != "coco":
            row.append(_percent(domain["coco"]["AP"]))
        table.add_row(*row)
    return table


def lvis_table(report: Mapping[str, Any]) -> Table | None:
    """Rows: the domains scored on LVIS-format data; columns: LVIS AP, AP50 and AP over the rare,
    common and frequent classes (in %). None when no domain is LVIS-format."""
    from clipgap_cli.evaluation.metrics import LVIS_KEYS

    domains = {name: d["lvis"] for name, d in report["domains"].items() if "lvis" in d}
    if not domains:
        return None
    table = Table(title="LVIS AP (%): all classes, and the rare (r), common (c), frequent (f) ones")
    table.add_column("domain", no_wrap=True)
    for key in LVIS_KEYS:
        table.add_column(key, justify="right", min_width=4)
    for name, scores in domains.items():
        table.add_row(name, *(_percent(scores[k]) for k in LVIS_KEYS))
    return table


def compare_table(reports: Mapping[str, Mapping[str, Any]], metric: str) -> Table:
    """Rows: the domains of any run; columns: the runs' mean AP (in %), side by side."""
    table = Table(title=f"mAP per domain, {TITLES[metric]} (%)")
    table.add_column("domain")
    for run in reports:
        table.add_column(run, justify="right")
    domains = dict.fromkeys(d for report in reports.values() for d in report["domains"])
    for name in domains:
        cells = [
            _percent(scores(report["domains"][name], metric)[1]) if name in report["domains"] else "-"
            for report in reports.values()
        ]
        table.add_row(name, *cells)
    return table


def write_chart(path: Path, report: Mapping[str, Any], metric: str) -> None:
    """A PNG of the mean AP per domain (bars), the source in its own colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["domains"])
    means = [100 * scores(report["domains"][n], metric)[1] for n in names]
    colours = ["tab:blue" if report["domains"][n]["role"] == "source" else "tab:orange" for n in names]
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2, 3.5))
    bars = ax.bar(names, means, color=colours)
    ax.bar_label(bars, fmt="%.1f")
    ax.set_ylabel(f"{TITLES[metric]} (%)")
    ax.set_title(f"{Path(report['checkpoint']).name}: mAP per domain (blue: source)")
    ax.set_ylim(0, max([*means, 1.0]) * 1.15)
    ax.tick_params(axis="x", rotation=20)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
