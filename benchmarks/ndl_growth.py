"""Does neurogenesis taper? Neurons added per stage under different growth settings (NDL+IR).

Each setting is one real CLI run per seed (``python scripts/run.py --experiment
neurogenesis ...``, one at a time by default) on the 28x28 set-up of
``ndl_variants.py`` (784-200-100-75-20, short phases, 10 units per step,
cap 20 per level per stage = 80 per stage), base {1,7}, then 0,2,3,4,5,6,8,9.
Per setting it prints the neurons added in each stage (all four levels, mean
over seeds), the slope of a line through them (units per stage; negative:
growth tapers), the share of level-stages that ended at the cap, the final
macro held-out MSE and the mean forgetting.

    python benchmarks/ndl_growth.py                      # mnist_subset, seed 0, all settings
    python benchmarks/ndl_growth.py --settings base,per_class --seeds 0,1
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ndl_variants import DATASETS, VARIANTS, run  # noqa: E402

CAP_PER_LEVEL = 20  # --growth_cap of the 28x28 set-up (ndl_variants.WIDE)
#: Growth settings (flags on top of the data set's): the knobs of issue 10.
SETTINGS: dict[str, list[str]] = {
    "base": [],                                                      # p95 of {1,7}, fraction 0.2
    "p99": ["--outlier_percentile", "99"],
    "fraction 0.5": ["--max_outlier_fraction", "0.5"],
    "per_class": ["--thresholds", "per_class"],                      # Th_L = max over learned classes
    "per_class fraction 0.5": ["--thresholds", "per_class", "--max_outlier_fraction", "0.5"],
    "long phases": ["--plasticity_epochs", "10", "--stability_epochs", "5"],
    "long phases fraction 0.5": ["--plasticity_epochs", "10", "--stability_epochs", "5",
                                 "--max_outlier_fraction", "0.5"],
}


def growth(run_dir: Path) -> tuple[list[int], float]:
    """Neurons added per stage (all levels) and the share of level-stages that hit the cap."""
    with open(run_dir / "artifacts" / "growth.csv") as f:
        rows = [r for r in csv.DictReader(f) if int(r["stage"]) > 0]
    stages = sorted({int(r["stage"]) for r in rows})
    added = [sum(int(r["added"]) for r in rows if int(r["stage"]) == s) for s in stages]
    at_cap = float(np.mean([int(r["added"]) >= CAP_PER_LEVEL for r in rows]))
    return added, at_cap


def one(dataset: str, setting: str, seed: int, workdir: Path) -> dict:
    """One NDL+IR run of ``setting``: its summary plus per-stage growth."""
    out = workdir / f"{dataset}_{setting.replace(' ', '_')}_{seed}"
    res = run(DATASETS[dataset] + VARIANTS["NDL+IR"] + SETTINGS[setting] + ["--seed", str(seed)], out)
    res["added"], res["at_cap"] = growth(sorted((out / "runs").iterdir())[-1])
    return res


def table(dataset: str, results: dict[str, list[dict]]) -> str:
    """Markdown table: one row per setting."""
    n_stages = len(results[next(iter(results))][0]["added"])
    head = " | ".join(f"s{i}" for i in range(1, n_stages + 1))
    lines = [f"## {dataset}: NDL+IR neurons added per stage (all levels; cap {4 * CAP_PER_LEVEL})", "",
             f"| setting | {head} | slope/stage | at cap | final macro MSE | mean forgetting | final neurons |",
             "|---|" + "---|" * n_stages + "---|---|---|---|---|"]
    for setting, res in results.items():
        added = np.array([r["added"] for r in res], dtype=float).mean(0)
        slope = float(np.polyfit(np.arange(len(added)), added, 1)[0])
        units = "-".join(f"{u:.0f}" for u in np.mean([r["units"] for r in res], 0))
        lines.append(f"| {setting} | " + " | ".join(f"{a:.0f}" for a in added)
                     + f" | {slope:+.1f} | {np.mean([r['at_cap'] for r in res]):.0%} | "
                     f"{np.mean([r['final'] for r in res]):.4f} | {np.mean([r['forgetting'] for r in res]):.4f} | "
                     f"{units} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="mnist_subset", choices=sorted(DATASETS))
    ap.add_argument("--settings", default=",".join(SETTINGS), help=f"comma list of {list(SETTINGS)}")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--parallel", type=int, default=1, help="runs at a time (each uses one thread)")
    args = ap.parse_args()
    settings = [s for s in args.settings.split(",") if s]
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        ap.error(f"--settings: unknown {unknown}; allowed: {list(SETTINGS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ndl_growth_") as tmp, ThreadPoolExecutor(args.parallel) as pool:
        jobs = {(st, s): pool.submit(one, args.dataset, st, s, Path(tmp)) for st in settings for s in seeds}
        results = {st: [jobs[(st, s)].result() for s in seeds] for st in settings}
    print(table(args.dataset, results))
    print(f"\nseeds {seeds}, flags {' '.join(DATASETS[args.dataset])} --neurogenesis --replay + setting; "
          f"{time.perf_counter() - t0:.0f} s wall")
    return 0


if __name__ == "__main__":
    sys.exit(main())
