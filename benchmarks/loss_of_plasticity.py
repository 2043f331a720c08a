#!/usr/bin/env python3
"""Loss of plasticity on task streams: backprop vs continual backprop vs ReDo, every table in one run.

Runs the ``plasticity`` family through the real CLI, one subprocess per
(table, method, seed), at most ``--parallel`` (2) at a time, longest runs
first, then prints one table per setting (means over seeds, +- the standard
deviation over seeds when there are several):

* ``permuted_mb8``: permuted 8x8 digits, 3x100 ReLU, SGD lr 0.1, minibatch 8,
  200 tasks x 3 seeds (CBP rho 8e-4, ReDo every 125 steps = 1,000 samples);
* ``permuted_b1``: the same stream at full strength: batch 1, lr 0.03, one pass
  per task, 400 tasks x 1 seed (CBP rho 1e-4, ReDo every 1,000 steps), the
  setting of the reference pilot;
* ``class_incremental``: classes of 8x8 digits arrive in a seeded order (2, then
  one more per task up to 10: a 9-task cycle), each task one pass over the
  classes seen so far; later cycles repeat it under new pixel permutations;
  batch 1, lr 0.03, 40 cycles (360 tasks) x 1 seed;
* ``slow_regression``: Dohare et al.'s bit-flipping problem, a 5-unit learner,
  lr 0.01, minibatch 8, 4,000 samples per task, 100 tasks x 3 seeds.

Columns: the online metric (accuracy; MSE for regression) averaged over the
first and the last window (10 tasks; one cycle for class-incremental), the
worst window (lowest accuracy / highest MSE), the mean over the second half,
last/first, dead-unit fraction (mean over hidden layers) and last-layer
effective rank at the first and last diagnostics, wall time per run and the
share of it spent in diagnostics. A second table gives the task-to-task noise
of the structural-change quality figures (online loss and held-out loss) of the
runs with replacements: the share of consecutive task pairs whose figure got
worse by more than 2%, 5% and 10% (relative). Curves are saved as PNG.

    python benchmarks/loss_of_plasticity.py                         # every table (~15 min on 2 cores)
    python benchmarks/loss_of_plasticity.py --tables permuted_mb8 --seeds 3 --tasks 200
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

METHODS: dict[str, list[str]] = {
    "backprop": ["--mechanism", "none"],
    "cbp": ["--mechanism", "cbp", "--maturity_threshold", "100"],
    "redo": ["--mechanism", "redo", "--redo_tau", "0.1"],
    "l2": ["--mechanism", "none", "--weight_decay", "1e-4"],
    "shrink_perturb": ["--mechanism", "none", "--shrink", "1e-4", "--perturb", "3e-4"],
}
_DIGITS = ["--hidden_units", "100", "--hidden_layers", "3"]
_MB8 = ["--lr", "0.1", "--batch_size", "8", "--replacement_rate", "8e-4", "--redo_every", "125"]
_B1 = ["--lr", "0.03", "--batch_size", "1", "--replacement_rate", "1e-4", "--redo_every", "1000"]


@dataclass(frozen=True)
class Table:
    """One setting: stream flags, horizon, seeds and the window the first/last columns average."""

    flags: list[str]
    tasks: int
    seeds: int
    window: int = 10
    diagnostics_every: int = 500
    steps_per_task: int = 202  # about; orders the runs (longest first)
    classification: bool = True
    note: str = ""


TABLES: dict[str, Table] = {
    "permuted_mb8": Table(["--stream", "permuted_images", *_DIGITS, *_MB8], 200, 3,
                          note="permuted 8x8 digits, minibatch 8, lr 0.1"),
    "permuted_b1": Table(["--stream", "permuted_images", *_DIGITS, *_B1], 400, 1, diagnostics_every=2000,
                         steps_per_task=1618,
                         note="permuted 8x8 digits at full strength: batch 1, lr 0.03, one pass per task"),
    "class_incremental": Table(["--stream", "class_incremental", "--initial_classes", "2",
                                "--classes_per_increment", "1", "--tasks_per_increment", "1", *_DIGITS, *_B1],
                               360, 1, window=9, diagnostics_every=2000, steps_per_task=970,
                               note="class-incremental 8x8 digits (2..10 classes, a 9-task cycle, each "
                                    "later cycle under a new permutation), batch 1, lr 0.03"),
    "slow_regression": Table(["--stream", "slow_regression", "--hidden_units", "5", "--hidden_layers", "1",
                              "--lr", "0.01", "--batch_size", "8", "--task_samples", "4000",
                              "--replacement_rate", "8e-4", "--redo_every", "125"], 100, 3,
                             steps_per_task=500, classification=False,
                             note="slowly-changing regression, 5-unit learner"),
}


def run_one(out: Path, table: Table, method: str, seed: int, tasks: int) -> Path:
    """One run in a subprocess; returns its run directory."""
    args = [sys.executable, str(ROOT / "scripts" / "run.py"), "--experiment", "plasticity",
            "--output_dir", str(out), "--metrics_port", "0", "--no_tensorboard", "--console", "off",
            "--checkpoint_every", "0", "--threads", "1", "--seed", str(seed), "--n_tasks", str(tasks),
            "--diagnostics_every", str(table.diagnostics_every), *table.flags, *METHODS[method]]
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True,
                          env={"OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
                               "PATH": "/usr/bin:/bin"})
    if proc.returncode != 0:
        raise SystemExit(f"{method} seed {seed} failed:\n{proc.stderr[-3000:]}")
    return next((out / "runs").iterdir())


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def summarize(run_dir: Path) -> dict[str, Any]:
    """Per-task online and held-out figures and first/last diagnostics of one run."""
    hist = _jsonl(run_dir / "history.jsonl")
    samples = _jsonl(run_dir / "samples.jsonl")
    wall = json.loads((run_dir / "metrics.json").read_text())["metrics"]["wall_seconds"]
    diag: dict[int, dict[str, dict[str, float]]] = {}  # step -> metric -> layer -> value
    secs = 0.0
    for s in samples:
        if s["metric"] == "diagnostics_seconds_total":
            secs = max(secs, s["value"])
        elif s["labels"]:
            diag.setdefault(s["step"], {}).setdefault(s["metric"], {})[s["labels"][0]] = s["value"]
    steps = sorted(diag)
    last = sorted(diag[steps[0]]["layer_dead_ratio"])[-1] if steps else ""

    def at(step: int | None) -> tuple[float, float]:
        if step is None:  # a run shorter than one diagnostics interval
            return math.nan, math.nan
        d = diag[step]
        return statistics.mean(d["layer_dead_ratio"].values()), d["layer_effective_rank"][last]

    impacts = [e for e in _jsonl(run_dir / "events.jsonl") if e.get("event") == "StructuralImpact"]
    return {"acc": [h.get("online_accuracy") for h in hist], "loss": [h["online_loss"] for h in hist],
            "val_loss": [h["val_loss"] for h in hist], "impacts": impacts,
            "start": at(steps[0] if steps else None), "end": at(steps[-1] if steps else None),
            "wall": wall, "diag_s": secs,
            "curve_steps": steps, "rank": [diag[s]["layer_effective_rank"][last] for s in steps],
            "dead": [statistics.mean(diag[s]["layer_dead_ratio"].values()) for s in steps]}


def _ms(values: list[float], fmt: str) -> str:
    m = statistics.mean(values)
    if len(values) < 2:
        return f"{m:{fmt}}"
    return f"{m:{fmt}} +- {statistics.stdev(values):{fmt}}"


def _windows(values: list[float], w: int) -> list[float]:
    """Means of consecutive, non-overlapping windows of ``w`` tasks (a partial last one dropped)."""
    return [statistics.mean(values[i:i + w]) for i in range(0, len(values) - w + 1, w)]


def table_text(table: Table, results: dict[str, list[dict[str, Any]]]) -> str:
    """The printed table (one row per method)."""
    key, name = ("acc", "acc") if table.classification else ("loss", "MSE")
    worst = min if table.classification else max
    w = min(table.window, min(len(r[key]) for rs in results.values() for r in rs))
    head = (f"{'method':<15} {name + ' first':>15} {name + ' last':>15} {name + ' worst':>15} "
            f"{name + ' 2nd half':>15} {'last/first':>10} {'dead start':>10} {'dead end':>9} "
            f"{'rank start':>10} {'rank end':>9} {'wall s':>7} {'diag %':>7}")
    lines = [head, "-" * len(head)]
    for method, runs in results.items():
        first = [statistics.mean(r[key][:w]) for r in runs]
        last = [statistics.mean(r[key][-w:]) for r in runs]
        low = [worst(_windows(r[key], w)) for r in runs]
        half = [statistics.mean(r[key][len(r[key]) // 2:]) for r in runs]
        mean = lambda f: statistics.mean(f(r) for r in runs)  # noqa: E731
        lines.append(
            f"{method:<15} {_ms(first, '.3f'):>15} {_ms(last, '.3f'):>15} {_ms(low, '.3f'):>15} "
            f"{_ms(half, '.3f'):>15} {statistics.mean(last) / statistics.mean(first):>10.2f} "
            f"{mean(lambda r: r['start'][0]):>10.3f} {mean(lambda r: r['end'][0]):>9.3f} "
            f"{mean(lambda r: r['start'][1]):>10.1f} {mean(lambda r: r['end'][1]):>9.1f} "
            f"{mean(lambda r: r['wall']):>7.1f} {100 * mean(lambda r: r['diag_s'] / r['wall']):>6.2f}%")
    return "\n".join(lines)


def worsening(values: list[float], thresholds: tuple[float, ...] = (0.02, 0.05, 0.10)) -> list[float]:
    """Share of consecutive pairs (v[t-1], v[t]) with (v[t] - v[t-1]) / |v[t-1]| > each threshold."""
    pairs = [(a, b) for a, b in zip(values[:-1], values[1:]) if a != 0]
    return [sum((b - a) / abs(a) > th for a, b in pairs) / max(len(pairs), 1) for th in thresholds]


def noise_text(all_results: dict[str, dict[str, list[dict[str, Any]]]]) -> str:
    """Task-to-task noise of the quality figures in runs with replacements (pooled over seeds)."""
    head = f"{'table':<18} {'method':<8} {'figure':<12} {'pairs':>6} {'> 2%':>7} {'> 5%':>7} {'> 10%':>7}"
    lines = [head, "-" * len(head)]
    for tname, results in all_results.items():
        for method in ("cbp", "redo"):
            for fig, key in (("online_loss", "loss"), ("val_loss", "val_loss")):
                runs = results.get(method, [])
                if not runs:
                    continue
                shares = [worsening(r[key]) for r in runs]
                pairs = sum(len(r[key]) - 1 for r in runs)
                cols = " ".join(f"{100 * statistics.mean(s[i] for s in shares):>6.1f}%" for i in range(3))
                lines.append(f"{tname:<18} {method:<8} {fig:<12} {pairs:>6} {cols}")
    return "\n".join(lines)


def impacts_text(all_results: dict[str, dict[str, list[dict[str, Any]]]]) -> str:
    """What the trainer's structural-change ledger made of the replacements (its default tolerance)."""
    head = (f"{'table':<18} {'method':<8} {'figure':<12} {'changes':>8} {'harmful':>8} {'streak>=3':>10} "
            f"{'max streak':>10} {'net end':>8}")
    lines = [head, "-" * len(head)]
    for tname, results in all_results.items():
        for method in ("cbp", "redo"):
            runs = [r for r in results.get(method, []) if r["impacts"]]
            if not runs:
                continue
            imps = [i for r in runs for i in r["impacts"]]
            hurting = [sum(i["streak"] >= 3 for i in r["impacts"]) for r in runs]
            lines.append(f"{tname:<18} {method:<8} {imps[0]['metric']:<12} {len(imps):>8} "
                         f"{100 * statistics.mean(i['harmful'] for i in imps):>7.1f}% {sum(hurting):>10} "
                         f"{max(i['streak'] for i in imps):>10} "
                         f"{100 * statistics.mean(r['impacts'][-1]['net'] for r in runs):>+7.1f}%")
    return "\n".join(lines)


def plot(name: str, table: Table, results: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """Online accuracy (or MSE) per task, last-layer effective rank and dead fraction per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = "acc" if table.classification else "loss"
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for method, runs in results.items():
        n = min(len(r[key]) for r in runs)
        axes[0].plot(range(n), [statistics.mean(r[key][t] for r in runs) for t in range(n)], label=method)
        m = min(len(r["rank"]) for r in runs)  # diagnostics of every run (0 for very short runs)
        steps = runs[0]["curve_steps"][:m]
        axes[1].plot(steps, [statistics.mean(r["rank"][i] for r in runs) for i in range(m)], label=method)
        axes[2].plot(steps, [statistics.mean(r["dead"][i] for r in runs) for i in range(m)], label=method)
    axes[0].set(xlabel="task", ylabel="online accuracy" if key == "acc" else "online MSE")
    axes[1].set(xlabel="step", ylabel="last hidden layer effective rank")
    axes[2].set(xlabel="step", ylabel="dead-unit fraction (mean over layers)")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.suptitle(f"loss of plasticity: {name} (mean over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    """Run every (table, method, seed), print the tables and the noise table, save the curves."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tables", default=",".join(TABLES), help=f"comma list of {list(TABLES)}")
    ap.add_argument("--tasks", type=int, default=None, help="tasks per run (default: each table's)")
    ap.add_argument("--seeds", type=int, default=None, help="seeds per method (default: each table's)")
    ap.add_argument("--methods", default="backprop,cbp,redo", help=f"comma list of {sorted(METHODS)}")
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "benchmarks" / "loss_of_plasticity")
    args = ap.parse_args()
    names = [t for t in args.tables.split(",") if t]
    methods = [m for m in args.methods.split(",") if m]
    for bad, allowed, what in (([t for t in names if t not in TABLES], TABLES, "tables"),
                               ([m for m in methods if m not in METHODS], METHODS, "methods")):
        if bad:
            raise SystemExit(f"unknown {what} {bad}; choose from {sorted(allowed)}")
    plan = {n: (args.tasks or TABLES[n].tasks, args.seeds or TABLES[n].seeds) for n in names}
    # Longest runs first (tasks x samples per task ~ steps), so the short ones fill the other worker.
    cost = {n: plan[n][0] * TABLES[n].steps_per_task for n in names}
    jobs = sorted(((n, m, s) for n in names for s in range(plan[n][1]) for m in methods), key=lambda j: -cost[j[0]])
    stamp = int(time.time())
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        futures = {job: pool.submit(run_one, args.out / job[0] / f"{job[1]}_seed{job[2]}_{stamp}", TABLES[job[0]],
                                    job[1], job[2], plan[job[0]][0]) for job in jobs}
        dirs = {job: f.result() for job, f in futures.items()}
    total = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # CPU of every finished run: what the box had to give
    cpu = usage.ru_utime + usage.ru_stime
    all_results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for n in names:
        tasks, seeds = plan[n]
        table = TABLES[n]
        results = {m: [summarize(dirs[(n, m, s)]) for s in range(seeds)] for m in methods}
        all_results[n] = results
        print(f"\n{n}: {table.note}; {tasks} tasks x {seeds} seed(s); windows of {table.window} tasks")
        print(table_text(table, results))
        png = args.out / n / f"curves_{n}.png"
        plot(n, table, results, png)
        print(f"curves: {png}")
    print("\ntask-to-task worsening of the quality figures (share of consecutive task pairs, pooled over seeds)")
    print(noise_text(all_results))
    print("\nstructural-change ledger on those runs (trainer defaults; impacts pooled over seeds; "
          "streak>=3 = impacts that met the StructuralChangesHurting streak)")
    print(impacts_text(all_results))
    print(f"\ntotal wall {total:.0f} s ({args.parallel} runs at a time); CPU of the runs {cpu:.0f} s "
          f"({cpu / args.parallel:.0f} s per worker: the wall time on {args.parallel} cores left to this benchmark)")


if __name__ == "__main__":
    main()
