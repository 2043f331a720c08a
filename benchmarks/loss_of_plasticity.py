#!/usr/bin/env python3
"""Loss of plasticity on a task stream: backprop vs continual backprop vs ReDo (and baselines).

Runs the ``plasticity`` family through the real CLI, one subprocess per
(method, seed), at most ``--parallel`` (2) at a time, then prints one row per
method (means over seeds, +- the standard deviation over seeds):

* permuted 8x8 digits (default): online accuracy over the first 10 and the
  last 10 tasks, dead-unit fraction (mean over hidden layers) and last-layer
  effective rank at the first and the last diagnostics, wall time per run and
  the share of the run's wall time spent computing diagnostics;
* ``--stream slow_regression``: the same with online MSE instead of accuracy.

Setting (the issue's minibatch variant): 3x100 ReLU, SGD lr 0.1, minibatch 8,
CBP rho 8e-4 and maturity 100, ReDo tau 0.1 every 125 steps (= 1000 samples,
the paper's F at batch 1). Curves are saved as PNG next to the runs.

    python benchmarks/loss_of_plasticity.py [--tasks 200] [--seeds 3] [--methods backprop,cbp,redo]
    python benchmarks/loss_of_plasticity.py --stream slow_regression
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

METHODS: dict[str, list[str]] = {
    "backprop": ["--mechanism", "none"],
    "cbp": ["--mechanism", "cbp", "--replacement_rate", "8e-4", "--maturity_threshold", "100"],
    "redo": ["--mechanism", "redo", "--redo_tau", "0.1", "--redo_every", "125"],
    "l2": ["--mechanism", "none", "--weight_decay", "1e-4"],
    "shrink_perturb": ["--mechanism", "none", "--shrink", "1e-4", "--perturb", "3e-4"],
}
STREAMS: dict[str, list[str]] = {
    "permuted_images": ["--stream", "permuted_images", "--hidden_units", "100", "--hidden_layers", "3",
                        "--lr", "0.1", "--batch_size", "8"],
    # Dohare et al.'s bit-flipping problem: a small learner (5 units) and a 100-LTU target.
    "slow_regression": ["--stream", "slow_regression", "--hidden_units", "5", "--hidden_layers", "1",
                        "--lr", "0.01", "--batch_size", "8", "--task_samples", "4000"],
}


def run_one(out: Path, stream: str, method: str, seed: int, tasks: int, every: int) -> Path:
    """One run in a subprocess; returns its run directory."""
    args = [sys.executable, str(ROOT / "scripts" / "run.py"), "--experiment", "plasticity",
            "--output_dir", str(out), "--metrics_port", "0", "--no_tensorboard", "--console", "off",
            "--checkpoint_every", "0", "--threads", "1", "--seed", str(seed), "--n_tasks", str(tasks),
            "--diagnostics_every", str(every), *STREAMS[stream], *METHODS[method]]
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True,
                          env={"OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
                               "PATH": "/usr/bin:/bin"})
    if proc.returncode != 0:
        raise SystemExit(f"{method} seed {seed} failed:\n{proc.stderr[-3000:]}")
    return next((out / "runs").iterdir())


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def summarize(run_dir: Path) -> dict[str, Any]:
    """Per-task online metrics and first/last diagnostics of one run."""
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
    layers = sorted(diag[steps[0]]["layer_dead_ratio"])
    last = layers[-1]

    def at(step: int) -> tuple[float, float]:
        d = diag[step]
        return statistics.mean(d["layer_dead_ratio"].values()), d["layer_effective_rank"][last]

    return {"acc": [h.get("online_accuracy") for h in hist], "loss": [h["online_loss"] for h in hist],
            "start": at(steps[0]), "end": at(steps[-1]), "wall": wall, "diag_s": secs,
            "curve_steps": steps, "rank": [diag[s]["layer_effective_rank"][last] for s in steps],
            "dead": [statistics.mean(diag[s]["layer_dead_ratio"].values()) for s in steps]}


def _ms(values: list[float], fmt: str) -> str:
    m = statistics.mean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{m:{fmt}} +- {sd:{fmt}}"


def table(stream: str, results: dict[str, list[dict[str, Any]]], n_first: int) -> str:
    """The printed table (one row per method)."""
    cls = stream == "permuted_images"
    key, name, fmt = ("acc", "online acc", ".3f") if cls else ("loss", "online MSE", ".3f")
    head = (f"{'method':<15} {name + ' first':>18} {name + ' last':>18} {'dead start':>11} {'dead end':>9} "
            f"{'rank start':>11} {'rank end':>9} {'wall s':>7} {'diag %':>7}")
    lines = [head, "-" * len(head)]
    for method, runs in results.items():
        first = [statistics.mean(r[key][:n_first]) for r in runs]
        last = [statistics.mean(r[key][-n_first:]) for r in runs]
        mean = lambda f: statistics.mean(f(r) for r in runs)  # noqa: E731
        lines.append(
            f"{method:<15} {_ms(first, fmt):>18} {_ms(last, fmt):>18} {mean(lambda r: r['start'][0]):>11.3f} "
            f"{mean(lambda r: r['end'][0]):>9.3f} {mean(lambda r: r['start'][1]):>11.1f} "
            f"{mean(lambda r: r['end'][1]):>9.1f} {mean(lambda r: r['wall']):>7.1f} "
            f"{100 * mean(lambda r: r['diag_s'] / r['wall']):>6.2f}%")
    return "\n".join(lines)


def plot(stream: str, results: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """Online accuracy (or MSE) per task, last-layer effective rank and dead fraction per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = "acc" if stream == "permuted_images" else "loss"
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for method, runs in results.items():
        n = min(len(r[key]) for r in runs)
        axes[0].plot(range(n), [statistics.mean(r[key][t] for r in runs) for t in range(n)], label=method)
        m = min(len(r["rank"]) for r in runs)
        steps = runs[0]["curve_steps"][:m]
        axes[1].plot(steps, [statistics.mean(r["rank"][i] for r in runs) for i in range(m)], label=method)
        axes[2].plot(steps, [statistics.mean(r["dead"][i] for r in runs) for i in range(m)], label=method)
    axes[0].set(xlabel="task", ylabel="online accuracy" if key == "acc" else "online MSE")
    axes[1].set(xlabel="step", ylabel="last hidden layer effective rank")
    axes[2].set(xlabel="step", ylabel="dead-unit fraction (mean over layers)")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.suptitle(f"loss of plasticity: {stream} (mean over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    """Run every (method, seed), print the table, save the curves."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stream", choices=sorted(STREAMS), default="permuted_images")
    ap.add_argument("--tasks", type=int, default=None, help="tasks per run (default 200 images, 100 regression)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--methods", default="backprop,cbp,redo", help=f"comma list of {sorted(METHODS)}")
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--diagnostics_every", type=int, default=500)
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "benchmarks" / "loss_of_plasticity")
    args = ap.parse_args()
    tasks = args.tasks or (200 if args.stream == "permuted_images" else 100)
    methods = [m for m in args.methods.split(",") if m]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise SystemExit(f"unknown methods {bad}; choose from {sorted(METHODS)}")
    base = args.out / args.stream
    jobs = [(m, s) for s in range(args.seeds) for m in methods]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        futures = {job: pool.submit(run_one, base / f"{job[0]}_seed{job[1]}_{int(time.time())}", args.stream,
                                    job[0], job[1], tasks, args.diagnostics_every) for job in jobs}
        dirs = {job: f.result() for job, f in futures.items()}
    results = {m: [summarize(dirs[(m, s)]) for s in range(args.seeds)] for m in methods}
    total = time.perf_counter() - t0
    n_first = min(10, tasks)
    print(f"{args.stream}: {tasks} tasks, {args.seeds} seeds, first/last = mean over the first/last {n_first} "
          f"tasks; dead = mean over hidden layers; rank = last hidden layer's effective rank")
    print(table(args.stream, results, n_first))
    png = base / f"curves_{args.stream}.png"
    plot(args.stream, results, png)
    print(f"total wall {total:.0f} s ({args.parallel} runs at a time); curves: {png}")


if __name__ == "__main__":
    main()
