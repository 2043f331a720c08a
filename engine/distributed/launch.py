"""Launching and joining a data-parallel run (torch's elastic agent, torchrun-compatible).

* :func:`launch` (``--nproc N`` in a plain process) starts N workers with
  :func:`torch.distributed.launcher.api.elastic_launch`, rendezvous on a free
  port of 127.0.0.1, no restarts. A worker that dies makes the agent end the
  others and :func:`launch` return nonzero (rank 0's own exit code when it has
  one: 3 diverged, 130 interrupted, ...). SIGTERM/SIGINT to the launcher reach
  the workers through the agent, which kills what is left after a grace period.
* :func:`worker_env` recognises a worker of such a launch or of ``torchrun``
  (RANK, WORLD_SIZE, LOCAL_RANK from the environment); :func:`join` sets it up:
  parent-death signal (a SIGKILLed launcher leaves no orphan rank), process
  group (gloo on CPU, nccl on CUDA), device, and the row hooks of :mod:`engine.parallel`.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import sys
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from engine import parallel
from engine.distributed.context import DataParallel
from engine.errors import ConfigError

log = logging.getLogger(__name__)

#: Families whose structural decisions stay in lockstep across ranks (see engine.distributed).
SUPPORTED = ("seeds", "neurogenesis", "plasticity")
#: How long a collective waits for a slow rank before the run fails.
COLLECTIVE_TIMEOUT = timedelta(minutes=10)
DEBUG_ENV = "PLASTICITY_DDP_DEBUG_DIR"  # tests: per-rank state hashes go there


def check_supported(cfg: Any, world: int) -> None:
    """Reject a data-parallel run of a family without lockstep support (bad input, exit 2)."""
    if world > 1 and cfg.experiment not in SUPPORTED:
        raise ConfigError("nproc", world, f"1 for the {cfg.experiment} family; data-parallel runs "
                          f"(nproc > 1) support {', '.join(SUPPORTED)}")
    if world > 1 and getattr(cfg.family, "child_optimizer", "main") != "main":
        # Children with their own Adam step outside the main optimizer, whose gradients DDP averages.
        raise ConfigError("child_optimizer", cfg.family.child_optimizer, "main with nproc > 1")


def worker_env() -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` of a torchrun/elastic worker of a multi-process run, else None."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1 or "RANK" not in os.environ or "MASTER_ADDR" not in os.environ:
        return None
    return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0"))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(nproc: int, argv: list[str]) -> int:
    """Run ``python -m engine argv`` as ``nproc`` ranks; rank 0's exit code, nonzero if any rank failed."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    root = str(Path(__file__).resolve().parent.parent.parent)  # workers import this engine
    os.environ["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])
    for name in ("torch.distributed.elastic", "torch.distributed.launcher"):
        logging.getLogger(name).setLevel(logging.CRITICAL)  # our own lines say how it ended
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=uuid.uuid4().hex,
                          rdzv_backend="c10d", rdzv_endpoint=f"127.0.0.1:{_free_port()}",
                          local_addr="127.0.0.1", max_restarts=0, monitor_interval=0.2)
    log.debug("launching %d ranks", nproc)
    try:
        elastic_launch(config, sys.executable)("-m", "engine", *argv)
    except ChildFailedError as exc:
        codes = {rank: f.exitcode for rank, f in exc.failures.items()}
        first = codes.get(0)
        if first == 2:  # bad input: rank 0 printed its one line, the others were stopped
            return 2
        log.error("data-parallel run ended with failed ranks (exit codes %s)", codes)
        return first if isinstance(first, int) and first > 0 else 1
    except SignalException as exc:
        log.warning("launcher received %s: ranks stopped", exc.sigval.name)
        return 130
    return 0


def _die_with_parent() -> None:
    """Linux: SIGTERM this process when its parent (the launcher) dies, even by SIGKILL."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the agent's own shutdown still applies
        return
    if os.getppid() == 1:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def join(cfg: Any, rank: int, world: int, local_rank: int) -> DataParallel:
    """Join the process group as ``rank`` of ``world``; the trainer's step policy for this rank."""
    _die_with_parent()
    cuda = cfg.train.device == "cuda" or (cfg.train.device == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if cuda else "gloo", init_method="env://", rank=rank, world_size=world,
                            timeout=COLLECTIVE_TIMEOUT)
    debug = os.environ.get(DEBUG_ENV)
    ctx = DataParallel(rank, world, Path(debug) if debug else None,
                       torch.device("cuda", local_rank) if cuda else None)
    parallel.install(ctx)
    log.info("rank %d of %d joined (%s)", rank, world, "nccl" if cuda else "gloo")
    return ctx


def leave(ctx: DataParallel) -> None:
    """Record the end (tests), remove the hooks, leave the process group."""
    try:
        ctx.finish()
    finally:
        parallel.install(None)
        if dist.is_initialized():
            dist.destroy_process_group()
