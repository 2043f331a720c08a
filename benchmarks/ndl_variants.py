"""CL / NDL / CL+IR / NDL+IR (+ capacity-matched CL+IR) on a class-incremental autoencoder.

Each run is a real CLI process (``python scripts/run.py --experiment
neurogenesis ...``, ``--parallel`` at a time). Base classes {1,7}, then 0,2,3,4,5,6,8,9.
Variants with intrinsic replay run once per replay-statistics source
(``--stats_sources``), labelled in the table: ``[replay]`` is data-free
intrinsic replay (the family default: a class's statistics are fitted from
its own images when it is learned, then only moved by replayed samples),
``[data]`` re-encodes every stored image of old classes after each stage (not
data-free), ``[reencode]`` is data-free with replayed images re-encoded as
they are. CL and NDL use no statistics, so they run once.
Per data set it prints one table: final macro held-out reconstruction MSE over
all classes, mean forgetting on earlier classes (error after the last stage
minus error right after the class was learned, over every class but the
newest), error on the newest class, final neurons per level, wall seconds per
run; mean +- std over seeds. ``CL+IR (cap)`` is a plain CL+IR network as wide
as NDL+IR ended up with the same seed.

    python benchmarks/ndl_variants.py --parallel 1          # mnist_subset and fashion, seeds 0,1
    python benchmarks/ndl_variants.py --datasets digits8 --seeds 0,1,2 --stats_sources replay,data,reencode
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = {"CL": ["--no_neurogenesis", "--no_replay"], "NDL": ["--neurogenesis", "--no_replay"],
            "CL+IR": ["--no_neurogenesis", "--replay"], "NDL+IR": ["--neurogenesis", "--replay"]}
SOURCES = ("replay", "data", "reencode")
FASHION = "/usr/share/datasets/fashion-mnist"
#: 28x28 runs: the paper's 784-200-100-75-20 with short phases (15 base epochs, 3 plasticity,
#: 2 stability, 5 fine-tuning epochs, 10 units per growth step, cap 20 per level per stage),
#: chosen so mnist_subset + fashion x 5 variants x 3 seeds fit in ~15 min on 2 shared cores.
WIDE = ["--hidden_sizes", "200,100,75,20", "--base_epochs", "15", "--plasticity_epochs", "3",
        "--stability_epochs", "2", "--finetune_epochs", "5", "--units_per_step", "10", "--growth_cap", "20",
        "--batch_size", "64"]
#: Per data set: data flags, autoencoder widths and epochs (chosen to keep mnist + fashion
#: within ~15 min on 2 shared cores; see the README).
DATASETS = {
    "digits8": ["--dataset", "digits8", "--hidden_sizes", "48,32,24,8", "--base_epochs", "100"],
    "mnist_subset": ["--dataset", "mnist_subset", *WIDE],
    "fashion": ["--dataset", "idx", "--data_dir", FASHION, "--per_class", "500", *WIDE],
}


def run(flags: list[str], out: Path) -> dict:
    """One CLI run; returns its numbers from metrics.json and the artifacts."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MLFLOW_DISABLE_TELEMETRY="true")
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "run.py"), "--experiment", "neurogenesis",
                        "--metrics_port", "0", "--no_tensorboard", "--console", "off", "--threads", "1",
                        "--output_dir", str(out), *flags], cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"run failed ({r.returncode}): {flags}\n{r.stderr[-2000:]}")
    run_dir = sorted((out / "runs").iterdir())[-1]
    return summarise(run_dir, wall)


def summarise(run_dir: Path, wall: float) -> dict:
    """Final macro error, mean forgetting, newest-class error and sizes from a run's artifacts."""
    with open(run_dir / "artifacts" / "forgetting_matrix.csv") as f:
        rows = list(csv.DictReader(f))
    cols = [k for k in rows[0] if k.startswith("class_")]
    learned_at: dict[str, float] = {}
    for row in rows:  # error right after each class was learned (base classes: after the base)
        for c in cols:
            if row[c] and c not in learned_at:
                learned_at[c] = float(row[c])
    last = rows[-1]
    newest = f"class_{last['learned_class']}"
    final = {c: float(last[c]) for c in cols}
    forgetting = [final[c] - learned_at[c] for c in cols if c != newest]
    with open(run_dir / "artifacts" / "growth.csv") as f:
        growth = list(csv.DictReader(f))
    stages = sorted({int(g["stage"]) for g in growth if int(g["stage"]) > 0})
    added = [sum(int(g["added"]) for g in growth if int(g["stage"]) == s) for s in stages]
    sizes = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    units = [int(sizes[k]) for k in sorted(sizes) if k.startswith("units_encoder_")]
    return {"final": float(np.mean(list(final.values()))), "forgetting": float(np.mean(forgetting)),
            "newest": final[newest], "units": units, "added": added, "wall": wall}


def fmt(values: list[float], digits: int = 4) -> str:
    return f"{np.mean(values):.{digits}f} +- {np.std(values):.{digits}f}"


def table(name: str, results: dict[str, list[dict]]) -> str:
    lines = [f"## {name}  ([replay]: data-free intrinsic replay; [data]: stored images re-encoded; "
             "[reencode]: data-free, replayed images re-encoded as they are)", "",
             "| variant | final macro MSE | mean forgetting | newest-class MSE | final neurons per level | wall s |",
             "|---|---|---|---|---|---|"]
    for variant, res in results.items():
        units = np.array([r["units"] for r in res])
        sizes = "-".join(f"{m:.0f}" for m in units.mean(0))
        spread = "-".join(f"{s:.0f}" for s in units.std(0))
        lines.append(f"| {variant} | {fmt([r['final'] for r in res])} | {fmt([r['forgetting'] for r in res])} | "
                     f"{fmt([r['newest'] for r in res])} | {sizes} (+- {spread}) | "
                     f"{fmt([r['wall'] for r in res], 1)} |")
    for variant in [v for v in results if v.startswith("NDL")]:
        added = np.array([r["added"] for r in results[variant]])
        if added.size:
            lines.append(f"\n{variant}: neurons added per stage (all levels, mean over seeds): "
                         + ", ".join(f"{a:.0f}" for a in added.mean(0)))
    return "\n".join(lines)


def bench(dataset: str, seeds: list[int], sources: list[str], workdir: Path,
          pool: ThreadPoolExecutor) -> dict[str, list[dict]]:
    """Every variant x seed (IR variants per statistics source); then CL+IR as wide as NDL+IR."""
    base = DATASETS[dataset]
    runs = {"CL": VARIANTS["CL"], "NDL": VARIANTS["NDL"]}
    for src in sources:
        runs.update({f"{v} [{src}]": VARIANTS[v] + ["--stats_source", src] for v in ("CL+IR", "NDL+IR")})
    jobs = {(v, s): pool.submit(run, base + flags + ["--seed", str(s)], workdir / f"{dataset}_{v}_{s}")
            for s in seeds for v, flags in runs.items()}
    out = {v: [jobs[(v, s)].result() for s in seeds] for v in runs}
    for src in sources:
        capped = {s: pool.submit(run, base + runs[f"CL+IR [{src}]"] + [
            "--seed", str(s), "--hidden_sizes", ",".join(map(str, r["units"]))], workdir / f"{dataset}_cap_{src}_{s}")
            for s, r in zip(seeds, out[f"NDL+IR [{src}]"])}
        out[f"CL+IR (cap) [{src}]"] = [capped[s].result() for s in seeds]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="mnist_subset,fashion", help=f"comma list of {sorted(DATASETS)}")
    ap.add_argument("--seeds", default="0,1", help="comma list of seeds (two by default: IR variants run "
                    "once per statistics source, which would otherwise double the ~16 min of the 3-seed run)")
    ap.add_argument("--stats_sources", default="replay,data",
                    help=f"comma list of {SOURCES}: replay statistics sources for the IR variants")
    ap.add_argument("--parallel", type=int, default=1, help="runs at a time (each uses one thread)")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    sources = [s for s in args.stats_sources.split(",") if s]
    if not sources or any(s not in SOURCES for s in sources):
        ap.error(f"--stats_sources {args.stats_sources!r}: comma list of {SOURCES}")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ndl_bench_") as tmp, ThreadPoolExecutor(args.parallel) as pool:
        for name in args.datasets.split(","):
            if name == "fashion" and not Path(FASHION).is_dir():
                print(f"## fashion: skipped ({FASHION} missing; apt-get install dataset-fashion-mnist)")
                continue
            t1 = time.perf_counter()
            print(table(name, bench(name, seeds, sources, Path(tmp), pool)), flush=True)
            print(f"\n{name}: seeds {seeds}, [source] = --stats_source of the IR runs, "
                  f"flags {' '.join(DATASETS[name])}; "
                  f"{time.perf_counter() - t1:.0f} s wall\n", flush=True)
    print(f"total wall {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
