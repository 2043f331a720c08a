"""The CLI side of data-parallel runs (``--nproc N``, or a torchrun worker); see :mod:`engine.distributed`.

In a plain process with ``nproc > 1`` the run is launched as N ranks (the same
command line, ``python -m engine ...``). In a worker, rank 0 runs the usual
:func:`engine.cli.wiring.execute_run` (endpoint, run directory, every sink)
with the rank's step policy; every other rank trains the same experiment
with no sinks, its checkpoints in a scratch directory removed at the end.
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

from engine.config import RunConfig
from engine.errors import ConfigError

log = logging.getLogger("engine.cli")


def wants_data_parallel(cfg: RunConfig) -> bool:
    """Whether this process launches or is a rank of a data-parallel run."""
    from engine.distributed.launch import worker_env

    return cfg.train.nproc > 1 or worker_env() is not None


def run_data_parallel(cfg: RunConfig, resume_dir: Path | None, fixed_run_dir: Path | None,
                      new_run_dir: Callable[..., Any], finish: Callable[[Any, Path], int],
                      setup_logging: Callable[[bool], None]) -> int:
    """Launch the ranks, or run this rank; the process exit code."""
    from engine.cli.wiring import console_mode_is_rich, execute_run
    from engine.distributed.launch import check_supported, join, launch, leave, worker_env
    from engine.training.trainer import pick_device

    env = worker_env()
    if env is None:  # the launcher: check what can be checked once, then start the ranks
        check_supported(cfg, cfg.train.nproc)
        pick_device(cfg.train.device)
        setup_logging(console_mode_is_rich(cfg.telemetry.console))
        return launch(cfg.train.nproc, sys.argv[1:])
    rank, world, local_rank = env
    check_supported(cfg, world)
    if cfg.train.nproc not in (1, world):
        raise ConfigError("nproc", cfg.train.nproc, f"{world}, the launcher's number of processes (WORLD_SIZE)")
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"nproc": world})})
    ctx = join(cfg, rank, world, local_rank)
    try:
        if rank == 0:
            setup_logging(console_mode_is_rich(cfg.telemetry.console))
            if resume_dir is not None:
                code = finish(execute_run(cfg, resume_dir, resume=True, parallel=ctx), resume_dir)
            else:
                identity, run_dir = new_run_dir(cfg, fixed_run_dir)
                code = finish(execute_run(cfg, run_dir, identity=identity, parallel=ctx), run_dir)
        else:
            setup_logging(True)
            # An end every rank agreed on (finished, diverged, interrupted) exits 0 here: the
            # group's exit code is rank 0's, and a nonzero rank makes the agent kill rank 0.
            code = 0 if _follow(cfg, ctx, resume_dir) in ("finished", "diverged", "interrupted") else 1
        ctx.barrier()  # no rank exits before rank 0 has written its results (only after a normal end)
        return code
    finally:
        leave(ctx)


def _follow(cfg: RunConfig, ctx: Any, resume_dir: Path | None) -> str:
    """A non-zero rank: the same experiment and trainer, no sinks, a scratch run directory."""
    from engine.cli.wiring import stop_on_signals
    from engine.registry import get_experiment
    from engine.telemetry.bus import EventBus
    from engine.training.checkpoint import CHECKPOINT_NAME
    from engine.training.trainer import Trainer, pick_device

    device = pick_device(cfg.train.device)
    if cfg.train.threads:
        import torch

        torch.set_num_threads(cfg.train.threads)
    scratch = Path(tempfile.mkdtemp(prefix=f"plasticity-rank{ctx.rank}-"))
    try:
        if resume_dir is not None and (resume_dir / CHECKPOINT_NAME).is_file():
            shutil.copy2(resume_dir / CHECKPOINT_NAME, scratch / CHECKPOINT_NAME)  # rank 0's state
        factory = get_experiment(cfg.experiment).factory
        trainer = Trainer(factory(cfg, device), EventBus(), f"rank{ctx.rank}", scratch, cfg.to_dict(),
                          cfg.train.checkpoint_every, rebuild=lambda: factory(cfg, device), parallel=ctx)
        if resume_dir is not None:
            trainer.resume()
        with stop_on_signals(trainer):
            outcome = trainer.run()
        log.info("rank %d ended: %s", ctx.rank, outcome.status)
        return outcome.status
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
