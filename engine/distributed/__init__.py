"""Data-parallel runs: one experiment trained by N processes with DistributedDataParallel.

``python scripts/run.py --nproc N ...`` (or ``torchrun --nproc_per_node N
scripts/run.py ...``: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT come from the environment) runs one experiment over N ranks:
gloo on CPU, nccl with ``--device cuda``. The launcher is torch's elastic
agent (:mod:`engine.distributed.launch`), rendezvous on a free port of
127.0.0.1; a rank that dies ends the group and the launcher exits nonzero.

**Lockstep design: replicated experiment, sharded gradient, identical inputs.**
Every rank builds the same experiment from the same seed, so every generator
draws the same global batch, shuffle and initial weights on every rank. The
trainer hands each rank its contiguous shard of each global batch
(:meth:`DataParallel.shard`, shard sizes differ by at most one; a rank with
no rows computes on the whole batch with weight 0) and runs the family's
``compute_loss`` inside a DDP forward (:class:`DataParallel` wraps it in a
module owning the model, so any way a family calls its model is covered).
DDP's gradient all-reduce is weighted by shard size (a comm hook), so every
rank steps on the global batch's mean gradient, exactly the single-process
step up to float summation order, and every rank's weights stay bit for bit
the same. Structural decisions: rank 0 decides, every rank applies rank 0's
plan. Every decision input is the same on every rank (validation data, probes,
generator draws, the model itself; statistics of the training batch go through
:func:`engine.parallel.global_rows`, which all-gathers the global batch's
rows), so every rank reaches the same decision points and derives a plan
there; :func:`engine.surgery.apply_plan` broadcasts rank 0's plan
(:func:`engine.parallel.agreed_plan`), every other rank checks that its own
is the same (else :class:`LockstepError` before any surgery) and applies rank
0's, with the same generator, to the same weights and optimizer state.
Rank 0 stays the reference: the DDP wrapper is rebuilt whenever the trainable
parameters change (growth, a seed's child joining the optimizer, a frozen
trunk), and every rebuild broadcasts rank 0's parameters and buffers. Each
step all-gathers (loss, shard size, finiteness, stop request, a hash of the
structure): the trainer gets the global batch's loss, every rank stops on a
non-finite loss or a signal at the same step, and a structure that differs
across ranks fails the run at once (:class:`LockstepError`) instead of hanging.
Optimizer state stays consistent because every rank applies the same plans
to the same optimizer with the same gradients.

Only rank 0 serves the metrics endpoint and writes results; other ranks run
no sinks and keep their checkpoints in a scratch directory (so a rollback
returns every rank to the same state). The group's exit code is rank 0's:
the other ranks wait for it at the end and exit 0 on any end the ranks agreed
on. Supported families: seeds (``child_optimizer main``), neurogenesis,
plasticity; others are rejected up front (``nproc``). Throughput figures
(samples/s) count rank 0's shard.
``--nproc`` is excluded from the config hash, like ``--threads`` and
``--device``: the split changes only float summation order, not what is computed.
"""

from engine.distributed.context import DataParallel, LockstepError

__all__ = ["DataParallel", "LockstepError"]
