"""The style form's settings, chosen on the validation conditions alone: the settings that
benchmarks/cpu_table.py's style rows use (STYLE, STYLE_AUGMENTATION).

    python benchmarks/augmentation_selection.py   # docs/results/augmentation-selection.{md,json}

On the CPU table's benchmark (same renders, severity and seed-0 prompts), in two steps:

1. optimize-augs --form style at every stage x learning rate x iterations (STAGES, LRS, the
   table's schedule and a quarter of it): the fraction of the gap in per-channel means and
   standard deviations, at the form's stage, that the style of each validation condition's
   naming prompt closes (`optimize-augs`'s report). The setting with the largest mean of the
   two, over the validation conditions, is kept.
2. With those styles, the C4 clip-t detector with the style augmentation at each DETECTORS
   setting (mixing and probability, each varied from PØDA's and the reference's), and the
   same detector without augmentation as the control (seed 0, the table's schedule), scored
   on the source and the validation conditions only. The setting with the largest validation
   mean AP50 is kept.

The four benchmark targets are never scored here: optimize-augs measures them in its report,
which this command does not read. The offsets' settings are the reference's (docs/method.md)
and are not chosen. Every run stays under --work; a finished one is not run again.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

from cpu_table import (
    C4,
    QUICK,
    ROOT,
    ROWS,
    Row,
    Setting,
    _progress,
    _threads,
    built_in,
    cpu_seconds,
    kept_note,
    prepare_data,
    prepare_seed,
    run_cell,
    severity_dir,
    style_options,
    write,
)

STAGES = ("layer1", "layer2", "layer3")
LRS = (0.01, 0.1)
DETECTORS = ((False, 0.5), (True, 0.5), (False, 1.0))  # (mix, prob)
SEED = 0


def style_run(
    prepared: Path, run: Path, data: Path, setting: Setting, stage: str, lr: float, iters: int
) -> dict:
    """optimize-augs --form style in `run` (a copy of `prepared`); per validation condition,
    the fractions closed by its naming prompt's style (the report's `named` entry)."""
    from clipgap_cli.stages.optimize_augs import optimize_augs

    _threads()
    if not (run / "augs" / "report.json").is_file():
        shutil.rmtree(run, ignore_errors=True)
        shutil.copytree(prepared, run)
        optimize_augs(run, data, form="style", stage=stage, lr=lr, iters=iters,
                      crops_per_iter=setting.aug_crops, seed=SEED)  # fmt: skip
    report = json.loads((run / "augs" / "report.json").read_text())
    return {d["domain"]: d["named"] for d in report["target_domains"] if d["domain"] in setting.validation}


def style_dir(here: Path, stage: str, lr: float, iters: int) -> Path:
    return here / f"style-{stage}-lr{lr:g}-it{iters}"


def closed(named: dict) -> float:
    """The step-1 score of one condition: the mean of the fractions closed in means and stds."""
    return (named["stage_mean"] + named["stage_std"]) / 2


def select(work: Path, setting: Setting, jobs: int) -> dict:
    from clipgap_cli.data.spec import load_spec

    data = prepare_data(work, setting)
    here = work / "selection"
    os.environ["CLIPGAP_TABLE_THREADS"] = str(max(1, 2 // jobs))
    iters = sorted({max(1, setting.aug_iters // 4), setting.aug_iters})
    styles = list(itertools.product(STAGES, LRS, iters))
    source = load_spec(data).source.name
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool, _progress() as bar:
        prepared = pool.submit(prepare_seed, here, data, SEED, setting, None).result()
        task = bar.add_task("1. style settings", total=len(styles))
        futures = {
            pool.submit(style_run, prepared, style_dir(here, *key), data, setting, *key): key
            for key in styles
        }
        measured = {}
        for future in as_completed(futures):
            measured[futures[future]] = future.result()
            bar.advance(task)
        step1 = [
            {"stage": s, "lr": lr, "iters": it, "validation": measured[s, lr, it],
             "score": statistics.fmean(closed(n) for n in measured[s, lr, it].values())}
            for s, lr, it in styles
        ]  # fmt: skip
        best = max(step1, key=lambda r: r["score"])
        chosen = style_dir(here, best["stage"], best["lr"], best["iters"])
        task = bar.add_task("2. detector settings", total=len(DETECTORS) + 1)
        domains = [source, *setting.validation]
        rows = {None: ROWS["clip-t+stored-bn"]}
        for mix, prob in DETECTORS:
            rows[mix, prob] = Row(
                f"clip-t + style, mix {mix}, prob {prob:g}", f"{C4}_style.py",
                cfg_options=style_options(mix=mix, prob=prob),
            )  # fmt: skip
        futures = {}
        for key, row in rows.items():
            cell = here / ("detector-control" if key is None else f"detector-mix{int(key[0])}-prob{key[1]:g}")
            futures[pool.submit(run_cell, chosen, cell, data, row, SEED, setting.max_iters, domains)] = key
        reports = {}
        for future in as_completed(futures):
            reports[futures[future]] = future.result()
            bar.advance(task)
    step2 = []
    for key in rows:
        scores = {d: 100 * v["voc07"]["mAP"] for d, v in reports[key]["domains"].items()}
        setting_of = {"mix": None, "prob": 0.0} if key is None else {"mix": key[0], "prob": key[1]}
        step2.append(
            setting_of | {"ap50": scores, "score": statistics.fmean(scores[d] for d in setting.validation)}
        )
    kept = max((r for r in step2 if r["mix"] is not None), key=lambda r: r["score"])
    return {"step1": step1, "step2": step2, "reports": list(reports.values()),
            "style": {"stage": best["stage"], "lr": best["lr"], "iters": best["iters"]},
            "augmentation": {"mix": kept["mix"], "prob": kept["prob"]}}  # fmt: skip


def markdown(result: dict, setting: Setting, source: str) -> list[str]:
    validation = list(setting.validation)
    lines = [
        "# The style form's settings, chosen on the validation conditions",
        "",
        f"Validation conditions: {', '.join(validation)} (`data synth --extra-domain`); the four benchmark "
        "targets are not scored. Seed 0, the CPU table's benchmark and schedule.",
        "",
        "## 1. optimize-augs --form style: the channel statistics' gap closed at the stage",
        "",
        "Per validation condition, for the prompt that names it: the fraction of the gap between source "
        "and condition crops closed in per-channel means / standard deviations (0 nothing, 1 all of it, "
        "< 0 moved away). Score: the mean of the two over the conditions.",
        "",
        "| stage | lr | iterations | " + " | ".join(f"{d} μ / σ" for d in validation) + " | score |",
        "|" + "---|" * (4 + len(validation)),
    ]
    for r in result["step1"]:
        cells = [
            f"{r['validation'][d]['stage_mean']:+.2f} / {r['validation'][d]['stage_std']:+.2f}"
            for d in validation
        ]
        lines.append(
            f"| {r['stage']} | {r['lr']:g} | {r['iters']} | " + " | ".join(cells) + f" | {r['score']:+.3f} |"
        )
    style = result["style"]
    lines += [
        "",
        f"Kept: stage {style['stage']}, lr {style['lr']:g}, {style['iters']} iterations.",
        "",
        "## 2. The C4 clip-t detector with those styles: mixing and probability",
        "",
        "VOC07 AP50 (%), seed 0; `*` the source's test list. Score: the validation conditions' mean. "
        "Every BatchNorm on stored statistics, as the style config keeps them; the control is the same "
        "detector without augmentation.",
        "",
        f"| mix | prob | {source}* | " + " | ".join(validation) + " | validation's mean |",
        "|" + "---|" * (4 + len(validation)),
    ]
    for r in result["step2"]:
        cells = [f"{r['ap50'][d]:.1f}" for d in [source, *validation]]
        what = "no augmentation (control) | –" if r["mix"] is None else f"{r['mix']} | {r['prob']:g}"
        lines.append(f"| {what} | " + " | ".join(cells) + f" | {r['score']:.1f} |")
    aug = result["augmentation"]
    lines += ["", f"Kept: mix {aug['mix']}, prob {aug['prob']:g}."]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "cpu-table",
                        help="the CPU table's work directory; runs go in selection/")  # fmt: skip
    parser.add_argument(
        "--name", default="augmentation-selection", help="the outputs' file name, without suffix"
    )
    parser.add_argument("--jobs", type=int, default=2, help="runs at once (threads: 2 // jobs)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny data, 4 iterations")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    setting = QUICK if args.quick else Setting()
    start = cpu_seconds()
    result = select(severity_dir(args.work, setting), setting, args.jobs)
    source = next(iter(result["reports"][0]["domains"]))
    md = markdown(result, setting, source)
    md += ["", built_in(start) + kept_note(result.pop("reports"))]
    write(args.out, args.name, result, md)
    print("\n".join(md))


if __name__ == "__main__":
    main()
