"""Source-domain learning curves of the CPU table's two detector families, on its benchmark:
each family's config schedule and the same schedule twice as long (every length and step
doubled, the warm-up kept), one seed, the source's validation AP50 every 100 iterations.

    python benchmarks/learning_curves.py   # docs/results/learning-curves.{md,json,png}

A family is converged on its schedule when the longer run's best source AP50 (the checkpoint
the table evaluates) is less than 2 points above the schedule's. Only the source domain's
validation list is looked at to choose a schedule; the runs also evaluate every domain (as
the table's cells do), which only the json keeps. Runs are kept under --work (the table's,
by default: the same benchmark and prompts) and resume run by run.
"""

from __future__ import annotations

import argparse
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from multiprocessing import get_context
from pathlib import Path

from cpu_table import (
    ROOT,
    ROWS,
    Setting,
    built_in,
    cpu_seconds,
    kept_note,
    prepare_data,
    prepare_seed,
    run_cell,
    severity_dir,
    write,
)

FAMILIES = {"C4 Faster R-CNN": "linear", "GridCLIP": "gridclip"}  # family -> the table row whose curve it is
VAL_EVERY = 100
GAIN = 2.0  # AP50 points the doubled schedule may add for the schedule to count as converged


def schedule(config: str, scale: int) -> dict:
    """The config's schedule with its length and learning-rate steps times `scale`, validated
    every VAL_EVERY iterations, as cfg options."""
    from mmengine.config import Config

    from clipgap_cli.stages.train import resolve_config

    cfg = Config.fromfile(resolve_config(config))
    steps = []
    for step in cfg.param_scheduler:
        step = dict(step)
        if step["type"] == "MultiStepLR":
            step.update(end=step["end"] * scale, milestones=[m * scale for m in step["milestones"]])
        steps.append(step)
    return {
        "train_cfg.max_iters": cfg.train_cfg.max_iters * scale,
        "train_cfg.val_interval": VAL_EVERY,
        "param_scheduler": steps,
        "optim_wrapper.optimizer.lr": cfg.optim_wrapper.optimizer.lr,  # recorded with the run
    }


def curve(cell: Path) -> list[float]:
    """The source validation AP50 (%) after every VAL_EVERY iterations of the cell's training."""
    (scalars,) = (cell / "train").glob("*/vis_data/scalars.json")
    records = [json.loads(line) for line in scalars.read_text().splitlines()]
    return [100 * r["pascal_voc/mAP"] for r in records if "pascal_voc/mAP" in r]


def measure(work: Path, jobs: int) -> dict:
    setting = Setting()
    work = severity_dir(work, setting)
    data = prepare_data(work, setting)
    prepared = prepare_seed(work, data, 0, setting, None)
    runs = {}
    os.environ["CLIPGAP_TABLE_THREADS"] = str(max(1, 2 // jobs))
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
        futures = {}
        for family, r in FAMILIES.items():
            for scale in (2, 1):  # the longest first, to share the workers evenly
                options = schedule(ROWS[r].config, scale)
                row = replace(ROWS[r], cfg_options=ROWS[r].cfg_options | options)
                cell = work / "curves" / f"{r}-x{scale}"
                futures[family, scale] = (
                    cell,
                    options,
                    pool.submit(run_cell, prepared, cell, data, row, 0, None),
                )
        for (family, scale), (cell, options, future) in sorted(futures.items()):
            report = future.result()
            domains = report["domains"]
            runs[f"{family} x{scale}"] = {
                "family": family,
                "row": FAMILIES[family],
                "scale": scale,
                "max_iters": options["train_cfg.max_iters"],
                "lr": options["optim_wrapper.optimizer.lr"],
                "milestones": [s["milestones"] for s in options["param_scheduler"] if "milestones" in s][0],
                "val_ap50": curve(cell),
                "source_images": next(v["images"] for v in domains.values() if v["role"] == "source"),
                "evaluated": {d: 100 * v["voc07"]["mAP"] for d, v in domains.items()},
                "seconds": report["seconds"],
                "kept": report.get("kept", False),
            }
    return {"setting": setting.synth_options(), "val_every": VAL_EVERY, "runs": runs}


def verdicts(runs: dict) -> dict[str, dict]:
    out = {}
    for family in FAMILIES:
        once, twice = runs[f"{family} x1"], runs[f"{family} x2"]
        gain = max(twice["val_ap50"]) - max(once["val_ap50"])
        out[family] = {"best": max(once["val_ap50"]), "best_x2": max(twice["val_ap50"]), "gain": gain,
                       "converged": gain < GAIN}  # fmt: skip
    return out


def markdown(measured: dict, judged: dict, footer: str) -> list[str]:
    runs = measured["runs"]
    longest = max(len(r["val_ap50"]) for r in runs.values())
    every = measured["val_every"]
    first = next(iter(runs.values()))
    head = [
        "run",
        "iterations",
        "steps at",
        "training (min)",
        *(str(every * (k + 1)) for k in range(longest)),
    ]
    lines = [
        "# Learning curves of the CPU table's detectors",
        "",
        f"Source (`daytime_clear`) validation AP50 (%, VOC07, its {first['source_images']} "
        f"test images) every {every} "
        "iterations, seed 0, on the CPU table's benchmark (`benchmarks/cpu_table.py`'s setting: "
        f"{json.dumps(measured['setting'])}). Each family's schedule (x1) and the same schedule twice "
        "as long (x2: length and learning-rate step doubled). Training times include the validations; "
        "the runs trained two at a time, one thread each.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for name, r in runs.items():
        values = [f"{v:.1f}" for v in r["val_ap50"]] + [""] * (longest - len(r["val_ap50"]))
        row = f"{name} (`{r['row']}` row, lr {r['lr']:g})"
        lines.append(
            f"| {row} | {r['max_iters']} | {', '.join(map(str, r['milestones']))} | "
            f"{r['seconds']['train'] / 60:.1f} | " + " | ".join(values) + " |"
        )
    lines += [
        "",
        "| family | best source AP50, x1 | x2 | gain | converged (gain < 2) |",
        "|---|---|---|---|---|",
    ]
    for family, v in judged.items():
        verdict = "yes" if v["converged"] else "no"
        lines.append(f"| {family} | {v['best']:.1f} | {v['best_x2']:.1f} | {v['gain']:+.1f} | {verdict} |")
    lines += ["", footer]
    return lines


def write_chart(path: Path, measured: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4), dpi=100)
    for name, r in measured["runs"].items():
        iters = [measured["val_every"] * (k + 1) for k in range(len(r["val_ap50"]))]
        ax.plot(iters, r["val_ap50"], marker="o", markersize=3, linestyle="-" if r["scale"] == 1 else "--",
                label=name)  # fmt: skip
    ax.set_xlabel("iteration (batch 2)")
    ax.set_ylabel("source validation AP50 (%)")
    ax.set_title("Learning curves on the synthetic benchmark's source domain (seed 0)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png", metadata={"Software": None})
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "cpu-table",
                        help="where the dataset and the runs are kept (the table's, by default)")  # fmt: skip
    parser.add_argument("--jobs", type=int, default=2, help="runs trained at once (threads: 2 // jobs)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    start = cpu_seconds()
    measured = measure(args.work, args.jobs)
    judged = verdicts(measured["runs"])
    md = markdown(measured, judged, built_in(start) + kept_note(list(measured["runs"].values())))
    write(args.out, "learning-curves", measured | {"verdicts": judged}, md)
    write_chart(args.out / "learning-curves.png", measured)
    print("\n".join(md))


if __name__ == "__main__":
    main()
