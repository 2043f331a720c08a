#!/usr/bin/env python3
"""Apoptosis strategies x layer patterns against a no-apoptosis baseline, plus telemetry overhead.

Every configuration runs through the real CLI on the family's CPU
configuration (nanoGPT's: 4 layers, 4 heads, width 128, block 64, batch 12,
2000 steps on the Shakespeare plays) with the same training seeds as the
baseline (``--apoptosis_strategy none``). Runs go ``--jobs`` at a time, so
wall times and tokens/s compare rows measured under the same load.

Per configuration (mean over seeds, +- std): final validation loss, its
relative difference to the baseline's with the same seed, stability (std of the
validation loss over the last ``--window`` evaluations), structural events
(StructuralChange events and units died / born), age diversity at the end (age
spread q75-q25 of alive units, steps, and the number of generations alive),
non-finite steps, wall seconds and tokens/s. A strategy "hurts" when its paired
difference is above 2% on average.

Telemetry overhead: the baseline configuration, shortened to ``--overhead_iters``
steps, run in this process with every sink on (Prometheus endpoint,
TensorBoard, plain console, results) and off (results only), alternating, one
run at a time; steps per wall second and per CPU second, median of the pairs.

    python benchmarks/apoptosis_strategies.py [--seeds 0,1,2] [--jobs 2] [--only NAME] [--no_overhead]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

#: (name, flags): the baseline, every strategy on the standard pattern, then three more patterns.
CONFIGS: list[tuple[str, list[str]]] = [
    ("baseline (none)", ["--apoptosis_strategy", "none"]),
    ("standard / standard", ["--apoptosis_strategy", "standard"]),
    ("functional / standard", ["--apoptosis_strategy", "functional"]),
    ("fade / standard", ["--apoptosis_strategy", "fade"]),
    ("growth_only / standard", ["--apoptosis_strategy", "growth_only"]),
    ("hybrid / standard", ["--apoptosis_strategy", "hybrid"]),
    ("standard / attention_only", ["--apoptosis_strategy", "standard", "--layer_pattern", "attention_only"]),
    ("standard / deep_only", ["--apoptosis_strategy", "standard", "--layer_pattern", "deep_only"]),
    ("standard / graduated", ["--apoptosis_strategy", "standard", "--layer_pattern", "graduated"]),
]


def one(flags: list[str], seed: int, window: int) -> dict[str, float]:
    """One CLI run (no endpoint, no TensorBoard): its figures from metrics, history, events and lineage."""
    with tempfile.TemporaryDirectory() as d:
        cmd = [sys.executable, str(ROOT / "scripts" / "run.py"), "--experiment", "apoptosis", *flags,
               "--seed", str(seed), "--output_dir", d, "--metrics_port", "0", "--no_tensorboard",
               "--console", "off", "--threads", "1"]
        t = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                              env=dict(os.environ, OMP_NUM_THREADS="1"))
        wall = time.perf_counter() - t
        if proc.returncode not in (0, 3):
            raise SystemExit(f"run failed ({' '.join(flags)} seed {seed}): {proc.stderr[-800:]}")
        run_dir = next(Path(d).glob("runs/*"))
        m = json.loads((run_dir / "metrics.json").read_text())["metrics"]
        hist = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
        events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
        changes = [e for e in events if e.get("event") == "StructuralChange"]
        with open(run_dir / "artifacts" / "lineage.csv") as f:
            lineage = list(csv.DictReader(f))
    alive = [r for r in lineage if r["death_step"] == "-1"]
    ages = sorted(m["steps"] - int(r["birth_step"]) for r in alive)
    q = statistics.quantiles(ages, n=4) if len(ages) > 1 else [0.0, 0.0, 0.0]
    tail = [h["val_loss"] for h in hist[-window:]]
    return {"val": m["val_loss"], "stab": statistics.pstdev(tail), "events": float(len(changes)),
            "died": float(sum(e["units"] for e in changes if e["kind"] == "apoptosis")),
            "born": float(sum(e["units"] for e in changes if e["kind"] in ("regrow", "grow"))),
            "age_iqr": q[2] - q[0], "gens": float(len({r["generation"] for r in alive})),
            "nan": m["nonfinite_steps"], "wall": wall,
            "tps": statistics.mean(h["tokens_per_second"] for h in hist), "params": m["parameters"]}


def _ms(values: list[float], fmt: str) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{format(statistics.mean(values), fmt)}+-{format(sd, fmt)}"


def strategies(seeds: list[int], jobs: int, only: str, window: int) -> None:
    """Run the grid and print one row per configuration and a verdict per strategy."""
    configs = [c for c in CONFIGS if c[0] == CONFIGS[0][0] or only in c[0]]
    work = [(name, flags, s) for name, flags in configs for s in seeds]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        results = list(pool.map(lambda w: one(w[1], w[2], window), work))
    by: dict[str, list[dict[str, float]]] = {}
    for (name, _, _), r in zip(work, results):
        by.setdefault(name, []).append(r)
    base = by[CONFIGS[0][0]]
    head = (f"{'strategy / pattern':<28} {'val loss':>15} {'vs base':>14} {'stability':>15} {'events':>7} "
            f"{'died':>6} {'born':>6} {'age IQR':>8} {'gens':>5} {'NaN':>4} {'wall s':>7} {'tokens/s':>7}")
    print(f"\nseeds {seeds}, {jobs} run(s) at a time; means over seeds +- std; 'vs base' is the paired relative "
          "difference of the final val loss")
    print(head)
    print("-" * len(head))
    verdicts = []
    for name, rows in by.items():
        rel = [(r["val"] - b["val"]) / b["val"] for r, b in zip(rows, base)]
        print(f"{name:<28} {_ms([r['val'] for r in rows], '.4f'):>15} {_ms([100 * x for x in rel], '+.2f') + '%':>14} "
              f"{_ms([r['stab'] for r in rows], '.4f'):>15} {statistics.mean(r['events'] for r in rows):>7.0f} "
              f"{statistics.mean(r['died'] for r in rows):>6.0f} {statistics.mean(r['born'] for r in rows):>6.0f} "
              f"{statistics.mean(r['age_iqr'] for r in rows):>8.0f} {statistics.mean(r['gens'] for r in rows):>5.1f} "
              f"{sum(r['nan'] for r in rows):>4.0f} {statistics.mean(r['wall'] for r in rows):>7.1f} "
              f"{statistics.mean(r['tps'] for r in rows):>7.0f}")
        if name != CONFIGS[0][0]:
            ok = statistics.mean(rel) <= 0.02 and min(r["events"] for r in rows) >= 10 and \
                sum(r["nan"] for r in rows) == 0
            verdicts.append(f"  {name}: {'within 2% of the baseline, >= 10 events, no NaN' if ok else 'HURTS'} "
                            f"(mean {100 * statistics.mean(rel):+.2f}%, worst seed {100 * max(rel):+.2f}%)")
    print("\nverdict (goal: within 2% of the baseline's val loss, >= 10 events, no NaN):")
    print("\n".join(verdicts))


def overhead(iters: int, reps: int) -> None:
    """Sinks on vs off on the baseline model, alternating in this process; median ratios."""
    import socket

    from engine.cli.wiring import execute_run
    from engine.config import build_config

    def port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    def run(on: bool, out: Path) -> tuple[float, float]:
        flat = {"experiment": "apoptosis", "apoptosis_strategy": "standard", "max_iters": iters,
                "output_dir": str(out), "metrics_port": port() if on else 0, "tensorboard": on,
                "console": "plain" if on else "off", "metrics_linger": 0, "threads": 1}
        cpu = time.process_time()
        outcome = execute_run(build_config(flat), out / f"run_{time.monotonic_ns()}")
        cpu = time.process_time() - cpu
        steps = outcome.metrics["steps"]
        return steps / outcome.metrics["wall_seconds"], steps / cpu

    pairs = []
    with tempfile.TemporaryDirectory() as d:
        for i in range(reps):
            off = run(False, Path(d) / f"off{i}")
            on = run(True, Path(d) / f"on{i}")
            pairs.append((off, on))
            print(f"  rep {i}: off {off[0]:.2f} steps/s ({off[1]:.2f}/CPU s), on {on[0]:.2f} ({on[1]:.2f}); "
                  f"wall overhead {100 * (1 - on[0] / off[0]):+.2f}%, CPU {100 * (1 - on[1] / off[1]):+.2f}%",
                  flush=True)
    wall = statistics.median(1 - on[0] / off[0] for off, on in pairs)
    cpu = statistics.median(1 - on[1] / off[1] for off, on in pairs)
    print(f"telemetry overhead ({iters} steps, {reps} pairs): median wall {100 * wall:+.2f}%, "
          f"median CPU {100 * cpu:+.2f}% (goal <= 1%)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time")
    ap.add_argument("--only", default="", help="only configurations whose name contains this (and the baseline)")
    ap.add_argument("--window", type=int, default=5, help="last evaluations of the stability figure")
    ap.add_argument("--overhead_iters", type=int, default=600)
    ap.add_argument("--overhead_reps", type=int, default=3)
    ap.add_argument("--no_overhead", action="store_true")
    ap.add_argument("--no_strategies", action="store_true")
    args = ap.parse_args()
    if not args.no_overhead:
        overhead(args.overhead_iters, args.overhead_reps)
    if not args.no_strategies:
        strategies([int(s) for s in args.seeds.split(",")], args.jobs, args.only, args.window)


if __name__ == "__main__":
    main()
