"""Structural-change accounting: before/after, settle windows, subjects, streak."""

from __future__ import annotations

import math

from engine.telemetry.events import StructuralChange
from engine.training.impact import ImpactLedger


def change(kind: str = "grow", layer: str = "l1", subject: str = "", **kw: float) -> StructuralChange:
    return StructuralChange(kind, layer, 0, 1, subject, **kw)  # type: ignore[arg-type]


def test_before_is_the_last_evaluation_and_after_the_settle_windows_end() -> None:
    led = ImpactLedger(settle=2, tolerance=0.02)
    assert led.evaluate("val_loss", 1.0) == []
    led.record(change())
    assert led.evaluate("val_loss", 1.5) == []  # one evaluation: not settled yet
    (imp,) = led.evaluate("val_loss", 1.2, accuracy=0.7)
    assert (imp.before, imp.after, imp.settled, imp.metric) == (1.0, 1.2, 2, "val_loss")
    assert math.isclose(imp.relative, 0.2) and imp.harmful and imp.streak == 1
    assert imp.accuracy_after == 0.7


def test_changes_of_one_window_merge_and_count_their_units() -> None:
    led = ImpactLedger(settle=1)
    led.evaluate("val_loss", 1.0)
    for _ in range(3):
        led.record(change("replace", "l0"))
    led.record(change("replace", "l1"))
    impacts = led.evaluate("val_loss", 1.0)
    assert sorted((i.layer, i.units) for i in impacts) == [("l0", 3), ("l1", 1)]
    assert not any(i.harmful for i in impacts)


def test_next_change_of_a_subject_closes_its_window() -> None:
    led = ImpactLedger(settle=3)
    led.evaluate("val_loss", 1.0)
    led.record(change("germinate", subject="s"))
    # No evaluation in between: the germination had no measurable effect.
    (germ,) = led.record(change("blend_start", subject="s"))
    assert germ.kind == "germinate" and germ.settled == 0 and germ.delta == 0 and not germ.harmful
    led.evaluate("val_loss", 1.3)
    # The family measured 1.4 just before rolling the seed back: that closes the blend.
    (blend,) = led.record(change("seed_rollback", subject="s", quality_before=1.4))
    assert (blend.kind, blend.before, blend.after, blend.settled) == ("blend_start", 1.0, 1.4, 2)
    assert blend.harmful and led.streak == 1
    led.evaluate("val_loss", 1.0)
    (rollback,) = led.flush("val_loss")
    assert rollback.before == 1.4 and rollback.after == 1.0 and not rollback.harmful
    assert led.streak == 0  # an improving change resets the streak


def test_streak_counts_harmful_windows_in_a_row_and_nan_as_harm() -> None:
    led = ImpactLedger(settle=1, tolerance=0.05)
    led.evaluate("val_loss", 1.0)
    results = []
    for after in (1.2, 1.21, 1.5, 2.0, math.nan):  # harmful, neutral, harmful, harmful, NaN
        led.record(change())
        results += led.evaluate("val_loss", after)
    assert [i.harmful for i in results] == [True, False, True, True, True]
    assert [i.streak for i in results] == [1, 0, 1, 2, 3]


def test_changes_sharing_a_window_count_once() -> None:
    led = ImpactLedger(settle=1, tolerance=0.05)
    led.evaluate("online_loss", 1.0)
    for layer in ("l0", "l1", "l2"):  # three layers replaced in one task
        led.record(change("replace", layer))
    impacts = led.evaluate("online_loss", 1.2)
    assert len(impacts) == 3 and all(i.harmful for i in impacts)
    assert [i.streak for i in impacts] == [1, 1, 1] and math.isclose(led.net, 0.2)


def test_net_adds_up_changes_under_the_tolerance() -> None:
    led = ImpactLedger(settle=1, tolerance=0.05)
    led.evaluate("val_loss", 1.0)
    for after in (1.03, 1.06, 1.09):  # three steps of ~3%: none harmful, 9% in all
        led.record(change())
        (imp,) = led.evaluate("val_loss", after)
        assert not imp.harmful
    assert math.isclose(imp.net, 0.09) and led.streak == 0
    led.record(change())
    (imp,) = led.evaluate("val_loss", 1.0)  # undone: the net comes back to 0
    assert math.isclose(imp.net, 0.0, abs_tol=1e-12)


def test_ledger_state_round_trips_with_pending_changes() -> None:
    a = ImpactLedger(settle=2)
    a.evaluate("val_loss", 1.0)
    a.record(change(subject="s", reason="x"))
    b = ImpactLedger(settle=2)
    b.load_state_dict(a.state_dict())
    assert b.state_dict() == a.state_dict()
    assert a.evaluate("val_loss", 2.0) == b.evaluate("val_loss", 2.0)
    assert a.evaluate("val_loss", 2.0) == b.evaluate("val_loss", 2.0)
