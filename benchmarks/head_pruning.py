#!/usr/bin/env python3
"""Validation loss against the fraction of attention heads pruned, in three orders (Michel et al. 2019).

For each training seed: train the heads family's CPU configuration (nanoGPT's
4 layers x 4 heads, width 128, block 64, batch 12, ``--iters`` steps on the
Shakespeare plays) without any decision, then prune the trained model one head
at a time, without retraining, in three orders, measuring the validation loss
(fixed batches) after every removal:

* ``importance``: the globally least important head by |dL/d gate| normalised
  per layer, re-measured after every removal (Michel et al.'s iterative
  procedure) on fixed training windows;
* ``entropy``: the head with the highest attention entropy first (re-measured);
* ``random``: a seeded random order.

A layer always keeps one head. Prints the mean (+- std over seeds) val loss at
each fraction, the fraction each order can prune within 5% of the unpruned
loss, and the cost of one decision round (importance + entropy + surgery +
re-evaluation) in training steps.

    python benchmarks/head_pruning.py [--seeds 0,1,2] [--iters 2000] [--jobs 2]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ORDERS = ("importance", "entropy", "random")


def _curve(lm, order: str, seed: int, batches, min_heads: int) -> tuple[list[float], list[float]]:  # noqa: ANN001
    """Val loss after 0, 1, 2, ... removals in ``order``, and the seconds of each decision round."""
    import torch

    from engine.mechanisms.head_importance import attention_entropy, entropy_order, head_importance, prune_order
    from engine.mechanisms.head_plans import PruneHeads
    from engine.surgery import apply_plan

    model = lm.model
    attn = [f"blocks.{i}.attn" for i in range(len(model.blocks))]
    gen = torch.Generator().manual_seed(1000 + seed)
    losses, costs = [lm.evaluate("a")], []
    # Random order: a fixed permutation of (layer, original head) pairs; indices shift as heads go.
    alive = {a: list(range(model.get_submodule(a).n_head)) for a in attn}
    perm = [(a, h) for a in attn for h in alive[a]]
    perm = [perm[i] for i in torch.randperm(len(perm), generator=gen).tolist()]
    while sum(len(v) for v in alive.values()) > len(attn) * min_heads:
        t0 = time.perf_counter()
        if order == "random":
            layer, orig = next((a, h) for a, h in perm if h in alive[a] and len(alive[a]) > min_heads)
            head = alive[layer].index(orig)
        else:
            if order == "importance":
                scores, _ = head_importance(model, batches)
                (layer, head), = prune_order(scores, 1, min_heads)
            else:  # highest entropy first
                (layer, head), = entropy_order(attention_entropy(model, batches), 1, min_heads)
            orig = alive[layer][head]
        apply_plan(model, None, PruneHeads(layer, (head,)))
        alive[layer].remove(orig)
        losses.append(lm.evaluate("a"))
        costs.append(time.perf_counter() - t0)
    return losses, costs


def one_seed(seed: int, iters: int, n_batches: int, min_heads: int) -> dict:
    """Train one model, then the three pruning curves on copies of it."""
    import torch

    from engine.config import build_config
    from engine.experiments._char_lm import CharLM

    torch.set_num_threads(1)
    cfg = build_config({"experiment": "heads", "head_mode": "none", "max_iters": iters, "seed": seed})
    lm = CharLM(cfg, cfg.family, torch.device("cpu"))
    t0 = time.perf_counter()
    step = 0
    while step < iters:
        for batch in lm.batches("train"):
            lm.update(batch, step, lm.loss(batch))
            step += 1
    train_s = time.perf_counter() - t0
    step_s = lm.seconds_per_step()
    batches = lm.train_windows("a", n_batches)
    out = {"seed": seed, "train_s": train_s, "step_s": step_s, "curves": {}, "costs": [],
           "heads0": sum(b.attn.n_head for b in lm.model.blocks)}
    base = copy.deepcopy(lm.model)
    for order in ORDERS:
        lm.model = copy.deepcopy(base)
        losses, costs = _curve(lm, order, seed, batches, min_heads)
        out["curves"][order] = losses
        if order == "importance":
            out["costs"] = costs
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--iters", type=int, default=2000)
    ap.add_argument("--importance_batches", type=int, default=8)
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(one_seed, seeds, [args.iters] * len(seeds), [args.importance_batches] * len(seeds),
                                [1] * len(seeds)))
    n = len(results[0]["curves"]["importance"])
    total = results[0]["heads0"]
    print(f"\nseeds {seeds}; {args.iters} training steps each; val loss (mean +- std over seeds) after k heads "
          f"pruned of {total}, no retraining")
    print(f"{'pruned':>7} {'fraction':>8} " + " ".join(f"{o:>17}" for o in ORDERS))
    for k in range(n):
        cells = []
        for o in ORDERS:
            vals = [r["curves"][o][k] for r in results]
            cells.append(f"{statistics.mean(vals):>9.4f}+-{statistics.pstdev(vals):<6.4f}")
        print(f"{k:>7} {k / total:>8.3f} " + " ".join(f"{c:>17}" for c in cells))
    print("\nheads prunable with the val loss within 5% of the unpruned model's (per seed, then mean):")
    for o in ORDERS:
        within = [max(k for k, v in enumerate(r["curves"][o]) if v <= 1.05 * r["curves"][o][0]) for r in results]
        area = [statistics.mean(v / r["curves"][o][0] for v in r["curves"][o]) for r in results]
        print(f"  {o:<11} {within} -> {statistics.mean(within):.1f} heads ({statistics.mean(within) / total:.0%}); "
              f"mean loss ratio over the curve {statistics.mean(area):.3f}")
    costs = [c / r["step_s"] for r in results for c in r["costs"]]
    print(f"\ndecision round (importance over {args.importance_batches} batches + pruning + re-evaluation): "
          f"median {statistics.median(costs):.1f} training steps (mean step {statistics.mean(r['step_s'] for r in results) * 1000:.0f} ms; "
          f"training {statistics.mean(r['train_s'] for r in results):.0f} s per seed)")


if __name__ == "__main__":
    main()
