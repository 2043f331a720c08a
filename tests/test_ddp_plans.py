"""Rank 0 decides: every rank applies rank 0's structural plan, a rank that derived another fails.

Two real gloo processes call :func:`engine.surgery.apply_plan` with the
:class:`~engine.distributed.DataParallel` hooks installed, as a data-parallel
run does after a decision.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from engine.distributed import DataParallel, LockstepError
from engine.mechanisms.plans import ReinitUnits
from engine.parallel import install
from engine.surgery import apply_plan


def _rank(rank: int, store: str, out: str, rank1_units: list[int]) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)  # the same model on both ranks
        model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
        install(DataParallel(rank, 2))
        units = [0, 2] if rank == 0 else rank1_units
        plan = ReinitUnits(layer="0", next_layer="2", indices=tuple(units))
        try:
            apply_plan(model, None, plan, torch.Generator().manual_seed(7))
            result = {"ok": True, "weight": model[0].weight.tolist()}
        except LockstepError as exc:
            result = {"ok": False, "error": str(exc)}
        Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        install(None)
        dist.destroy_process_group()


def _run(tmp_path: Path, rank1_units: list[int]) -> list[dict]:
    mp.spawn(_rank, args=(str(tmp_path / "store"), str(tmp_path), rank1_units), nprocs=2, join=True)
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]


def test_ranks_that_derived_the_same_plan_apply_it_identically(tmp_path: Path) -> None:
    r0, r1 = _run(tmp_path, [0, 2])
    assert r0["ok"] and r1["ok"]
    assert r0["weight"] == r1["weight"]


def test_a_rank_that_derived_another_plan_fails_before_surgery(tmp_path: Path) -> None:
    r0, r1 = _run(tmp_path, [1, 2])
    assert r0["ok"]  # rank 0 decides; its own plan is the reference
    assert not r1["ok"] and "rank 1 derived another structural plan than rank 0" in r1["error"]
