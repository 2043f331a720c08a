"""The seed guard (probation, rollback, fossilization) and the controller's wait for settled seeds."""

from __future__ import annotations

import math

from engine.mechanisms.germination import GerminationController
from engine.mechanisms.seed_guard import SeedGuard
from engine.mechanisms.seed_plans import CullSeed, FossilizeSeed


def test_nothing_in_flight_returns_no_plan() -> None:
    guard = SeedGuard(0.02, 2)
    assert guard.observe(0.5) is None and not guard.busy


def test_a_seed_within_tolerance_is_fossilized_after_probation() -> None:
    guard = SeedGuard(0.02, 2, abort_tolerance=0.5)
    guard.observe(0.50)
    guard.start("s")
    assert guard.observe(0.55) is None  # still blending: only the abort level applies
    guard.blended("s")
    assert guard.observe(0.51) is None and guard.busy
    plan = guard.observe(0.505)  # second probation evaluation: +1% <= 2%
    assert isinstance(plan, FossilizeSeed) and plan.seed == "s" and not guard.busy


def test_a_seed_worse_at_the_end_of_probation_is_rolled_back() -> None:
    guard = SeedGuard(0.02, 1)
    guard.observe(0.50)
    guard.start("s")
    guard.blended("s")
    plan = guard.observe(0.52)  # +4% > 2%
    assert isinstance(plan, CullSeed) and "0.5 -> 0.52" in plan.reason and not guard.busy


def test_large_damage_aborts_at_once_and_nan_counts_as_damage() -> None:
    guard = SeedGuard(0.02, 5, abort_tolerance=0.5)
    guard.observe(0.50)
    guard.start("s")
    plan = guard.observe(0.80)  # +60% while blending
    assert isinstance(plan, CullSeed) and "while blending" in plan.reason
    guard.start("t")
    assert isinstance(guard.observe(math.nan), CullSeed)


def test_guard_state_round_trips() -> None:
    a = SeedGuard(0.02, 3)
    a.observe(0.4)
    a.start("s")
    a.blended("s")
    a.observe(0.41)
    b = SeedGuard(0.02, 3)
    b.load_state_dict(a.state_dict())
    assert b.state_dict() == a.state_dict()
    assert b.observe(0.41) == a.observe(0.41)


def test_controller_does_not_answer_a_seed_with_more_seeds() -> None:
    ctl = GerminationController(patience=2, delta=1e-3, acc_threshold=0.9)
    dormant = {"a": 1.0, "b": 0.5}
    ctl.observe(0.5, 0.5, dormant)
    # A seed in flight makes things worse for many epochs: no germination, no plateau.
    for loss in (0.6, 0.7, 0.8, 0.8, 0.8):
        assert ctl.observe(loss, 0.4, dormant, busy=True) is None
        assert ctl.plateau == 0
    # Rolled back: the model is back at 0.5, an improvement on the damaged level.
    assert ctl.observe(0.5, 0.5, dormant) is None
    assert ctl.observe(0.5, 0.5, dormant) is None  # plateau 1
    plan = ctl.observe(0.5, 0.5, dormant)  # plateau 2 = patience, of the model as it stands
    assert plan is not None and plan.seed == "b"


def test_the_last_evaluation_judges_a_seed_still_in_flight() -> None:
    guard = SeedGuard(0.0, 10)
    guard.observe(0.5)
    guard.start("s")  # still blending when the run ends
    assert isinstance(guard.observe(0.51, final=True), CullSeed)
    guard.start("t")
    assert isinstance(guard.observe(0.49, final=True), FossilizeSeed)


def test_a_seed_that_keeps_improving_stays_in_probation() -> None:
    guard = SeedGuard(0.0, 2)
    guard.observe(0.50)
    guard.start("s")
    guard.blended("s")
    for loss in (0.45, 0.40, 0.35, 0.30):  # each a real (> 1%) improvement: the window restarts
        assert guard.observe(loss) is None and guard.busy
    assert guard.observe(0.30) is None  # one evaluation without improvement
    plan = guard.observe(0.31)  # two: judged, and better than before it blended
    assert isinstance(plan, FossilizeSeed) and "0.5 -> 0.31" in plan.reason
