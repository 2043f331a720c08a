"""The warm-up detector's stated rule on curves whose answer is known: a noisy
exponential decay is detected after its knee (never before the minimum), a
linear fall never is at a threshold below its relative slope, and its state
survives a checkpoint."""

from __future__ import annotations

import io
import math
import random

import pytest
import torch

from engine.mechanisms.stabilisation import WarmupDetector, relative_slope

WINDOW, THRESHOLD, PATIENCE = 8, 0.05, 3
TAU = 10.0  # evaluations: the exponential's time constant


def decay(t: int) -> float:
    """A loss falling from 4 to its floor 1.5 with time constant TAU evaluations."""
    return 1.5 + 2.5 * math.exp(-t / TAU)


def first_detection(losses: list[float], detector: WarmupDetector) -> int | None:
    """Index of the evaluation at which ``detector`` says stable (it must say so once only)."""
    hits = [t for t, y in enumerate(losses) if detector.observe(t * 10, y)]  # step = 10 x evaluation
    assert len(hits) <= 1, hits
    return hits[0] if hits else None


def test_relative_slope_is_the_fitted_change_over_one_window() -> None:
    assert relative_slope([4.0, 3.0, 2.0, 1.0]) == pytest.approx(1.0 * 4 / 2.5)
    assert relative_slope([2.0, 2.0, 2.0]) == 0.0
    assert relative_slope([1.0, 2.0]) == relative_slope([2.0, 1.0])  # a rise is as far from stable as a fall
    assert relative_slope([-1.0, 1.0]) == math.inf  # mean 0: no level to be relative to
    with pytest.raises(ValueError):
        relative_slope([1.0])


def test_noisy_exponential_is_detected_after_its_knee() -> None:
    # The knee as the rule sees it: the first window of the noise-free curve whose
    # relative slope is under the threshold (evaluation 36 here, 97% of the decay done).
    knee = next(t for t in range(WINDOW - 1, 500)
                if relative_slope([decay(i) for i in range(t - WINDOW + 1, t + 1)]) < THRESHOLD)
    assert 30 < knee < 45
    # Noise of 0.2-0.3% of the level: the slope's noise (~ sigma/m * sqrt(12/window) = 0.4%)
    # is far under the threshold, as the rule's docstring asks.
    for seed in range(20):
        rng = random.Random(seed)
        losses = [decay(t) + rng.gauss(0, 0.005) for t in range(200)]
        detector = WarmupDetector(WINDOW, THRESHOLD, PATIENCE)
        found = first_detection(losses, detector)
        assert found is not None and knee <= found <= knee + WINDOW, (seed, found, knee)
        assert detector.stable and detector.stable_step == 10 * found
        assert detector.relative_slope < THRESHOLD and detector.streak == PATIENCE


def test_never_before_the_minimum() -> None:
    flat = [2.0 + 0.001 * (-1) ** t for t in range(100)]  # stable from the first window on
    # Earliest possible: a full window, then `patience` stable windows in a row.
    assert first_detection(flat, WarmupDetector(WINDOW, THRESHOLD, PATIENCE)) == WINDOW + PATIENCE - 2
    for minimum in (1, WINDOW, 30, 64):
        found = first_detection(flat, WarmupDetector(WINDOW, THRESHOLD, PATIENCE, min_evaluations=minimum))
        assert found == max(minimum - 1, WINDOW + PATIENCE - 2), (minimum, found)
    # An exponential is not detected before a minimum beyond its knee either.
    rng = random.Random(0)
    losses = [decay(t) + rng.gauss(0, 0.005) for t in range(200)]
    assert first_detection(losses, WarmupDetector(WINDOW, THRESHOLD, PATIENCE, min_evaluations=120)) == 119


def test_linear_fall_is_never_stable_below_its_relative_slope() -> None:
    # 4 -> 1 by 0.02 per evaluation: relative slope 0.16 / level, between 0.04 and 0.16.
    line = [4.0 - 0.02 * t for t in range(151)]
    assert min(relative_slope(line[t - WINDOW + 1:t + 1]) for t in range(WINDOW - 1, len(line))) > 0.04
    detector = WarmupDetector(WINDOW, 0.04, PATIENCE)
    assert first_detection(line, detector) is None and not detector.stable and detector.stable_step == -1
    rng = random.Random(1)
    assert first_detection([y + rng.gauss(0, 0.005) for y in line], WarmupDetector(WINDOW, 0.03, PATIENCE)) is None
    # The same line is "stable" for a threshold above its relative slope: the rule, not the shape, decides.
    assert first_detection(line, WarmupDetector(WINDOW, 0.2, PATIENCE)) == WINDOW + PATIENCE - 2


def test_a_rising_loss_is_not_stable() -> None:
    assert first_detection([1.0 + 0.05 * t for t in range(100)], WarmupDetector(WINDOW, 0.05, PATIENCE)) is None


def test_ema_smooths_before_fitting() -> None:
    rng = random.Random(2)
    noisy = [2.0 + rng.gauss(0, 0.15) for _ in range(60)]  # flat, with 7.5% noise
    ema = 0.8
    smoothed = [noisy[0]]
    for y in noisy[1:]:
        smoothed.append(ema * smoothed[-1] + (1 - ema) * y)

    def slopes(detector: WarmupDetector) -> list[float]:
        out = []
        for t, y in enumerate(noisy):
            detector.observe(t, y)
            out.append(detector.relative_slope)
        return out[WINDOW - 1:]

    raw, smooth = slopes(WarmupDetector(WINDOW, 1e-9, 1)), slopes(WarmupDetector(WINDOW, 1e-9, 1, ema=ema))
    # The fit runs on the moving average, not on the raw losses ...
    assert smooth == pytest.approx([relative_slope(smoothed[t - WINDOW + 1:t + 1]) for t in range(WINDOW - 1, 60)])
    # ... which damps the noise of the slope.
    assert sorted(smooth)[len(smooth) // 2] < sorted(raw)[len(raw) // 2] / 2


def test_non_finite_loss_starts_the_window_over() -> None:
    detector = WarmupDetector(3, 0.05, 1)
    for t, y in enumerate([2.0, 2.0, float("nan"), 2.0, 2.0]):
        assert not detector.observe(t, y)
    assert detector.streak == 0 and math.isnan(detector.relative_slope)
    assert detector.observe(5, 2.0) and detector.stable_step == 5


@pytest.mark.parametrize("kwargs", [dict(window=1), dict(threshold=0), dict(patience=0),
                                    dict(min_evaluations=-1), dict(ema=1.0)])
def test_bad_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        WarmupDetector(**kwargs)  # type: ignore[arg-type]


def test_state_round_trip_through_a_weights_only_checkpoint() -> None:
    rng = random.Random(3)
    losses = [decay(t) + rng.gauss(0, 0.005) for t in range(80)]
    whole = WarmupDetector(WINDOW, THRESHOLD, PATIENCE, ema=0.3)
    expected = [whole.observe(10 * t, y) for t, y in enumerate(losses)]
    assert any(expected)
    for cut in (3, 20, 39, 79):  # before a full window, in the streak's build-up, just before and after detection
        first = WarmupDetector(WINDOW, THRESHOLD, PATIENCE, ema=0.3)
        got = [first.observe(10 * t, y) for t, y in enumerate(losses[:cut])]
        buf = io.BytesIO()
        torch.save({"detector": first.state_dict()}, buf)
        buf.seek(0)
        second = WarmupDetector(WINDOW, THRESHOLD, PATIENCE, ema=0.3)
        second.load_state_dict(torch.load(buf, weights_only=True)["detector"])
        got += [second.observe(10 * t, y) for t, y in enumerate(losses[cut:], start=cut)]
        assert got == expected, cut
        assert second.state_dict() == whole.state_dict() or math.isnan(whole.relative_slope)
        assert (second.stable_step, second.describe()) == (whole.stable_step, whole.describe())
    with pytest.raises(ValueError, match="window"):
        WarmupDetector(2, THRESHOLD, PATIENCE).load_state_dict(whole.state_dict())
