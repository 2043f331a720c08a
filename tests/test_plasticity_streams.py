"""Task streams: determinism, a new permutation per task, chunked batches, class-incremental
schedules and cycles, slow bits flipping, exact resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.data.images import ImageSet
from engine.data.streams import ClassIncrementalImages, PermutedImages, SlowRegression
from engine.errors import ParameterError


def _images(n: int = 60, d: int = 16) -> ImageSet:
    rng = np.random.default_rng(0)
    x = rng.random((n, d), dtype=np.float32)
    y = np.arange(n) % 3
    return ImageSet(x, y.astype(np.int64), (4, 4), "toy", "0" * 64)


def _task(stream: PermutedImages | SlowRegression, bs: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    stream.begin_task()
    return list(stream.batches(bs))


def test_permuted_images_is_deterministic_and_permutes_per_task() -> None:
    a, b = PermutedImages(_images(), seed=3), PermutedImages(_images(), seed=3)
    perms = []
    for _ in range(3):
        ba, bb = _task(a), _task(b)
        assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(ba, bb))
        perms.append(a.perm.clone())
        assert sum(len(y) for _, y in ba) == a.train_size  # one pass over the task's data
        # every task shows the same images, only the pixel order differs
        x_all = torch.cat([x for x, _ in ba])
        raw = torch.from_numpy(_images().x)
        assert torch.allclose(torch.sort(x_all.sum(1)).values, torch.sort(a._x_train.sum(1)).values)
        assert not torch.equal(torch.sort(x_all, 1).values, x_all)
        assert torch.equal(a.probe(10), raw[:10][:, a.perm])
    assert not torch.equal(perms[0], perms[1]) and not torch.equal(perms[1], perms[2])
    assert a.task == 2
    c = PermutedImages(_images(), seed=4)
    c.begin_task()
    assert not torch.equal(c.perm, perms[0])


def test_permuted_images_heldout_is_disjoint_and_fixed() -> None:
    s = PermutedImages(_images(), seed=0, heldout_frac=0.2)
    s.begin_task()
    xh, yh = s.heldout()
    assert len(yh) == 12 and s.train_size == 48
    assert torch.equal(torch.bincount(yh), torch.tensor([4, 4, 4]))  # stratified
    s.begin_task()
    xh2, yh2 = s.heldout()
    assert torch.equal(yh, yh2) and not torch.equal(xh, xh2)  # same images, new permutation


def test_permuted_images_state_round_trip_continues_exactly() -> None:
    a = PermutedImages(_images(), seed=1)
    _task(a)
    state = a.state_dict()
    b = PermutedImages(_images(), seed=1)  # a fresh stream: same split, generator at the start
    b.load_state_dict(state)
    assert torch.equal(b.probe(5), a.probe(5))
    for (x1, y1), (x2, y2) in zip(_task(a), _task(b)):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_slow_regression_flips_one_slow_bit_per_task() -> None:
    s = SlowRegression(seed=0, n_bits=20, slow_bits=15, task_samples=64, heldout_samples=32)
    s.begin_task()
    prev = s.slow.clone()
    for _ in range(6):
        batches = list(s.batches(16))
        x = torch.cat([b[0] for b in batches])
        assert x.shape == (64, 20) and sum(len(b[1]) for b in batches) == 64
        assert torch.all(x[:, :15] == s.slow)  # slow bits fixed within a task
        assert 0 < x[:, 15:].mean() < 1 and len({tuple(r) for r in x[:, 15:].tolist()}) > 8  # fast bits random
        assert set(x.unique().tolist()) <= {0.0, 1.0}
        y = torch.cat([b[1] for b in batches])
        assert torch.equal(y, s.target(x)) and y.shape == (64, 1)
        s.begin_task()
        assert int((s.slow != prev).sum()) == 1
        prev = s.slow.clone()


def test_slow_regression_target_is_an_ltu_network() -> None:
    s = SlowRegression(seed=2, n_bits=6, slow_bits=3, target_units=10, beta=0.7)
    assert set(s.w_target.unique().tolist()) == {-1.0, 1.0} and s.w_target.shape == (10, 7)
    assert torch.allclose(s.theta, 7 * 0.7 - (s.w_target < 0).sum(1).float())
    x = torch.tensor([[1.0, 0, 1, 1, 0, 1]])
    ltu = ((torch.cat([x, torch.ones(1, 1)], 1) @ s.w_target.T) > s.theta).float()
    assert s.target(x).item() == pytest.approx(float(ltu @ s.v_target))


def test_slow_regression_is_deterministic_and_resumable() -> None:
    a, b = SlowRegression(seed=5, task_samples=40), SlowRegression(seed=5, task_samples=40)
    for _ in range(2):
        for (x1, y1), (x2, y2) in zip(_task(a), _task(b)):
            assert torch.equal(x1, x2) and torch.equal(y1, y2)
    a.heldout()
    c = SlowRegression(seed=5, task_samples=40)
    c.load_state_dict(a.state_dict())
    assert torch.equal(c.heldout()[0], a.heldout()[0])
    for (x1, y1), (x2, y2) in zip(_task(a), _task(c)):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    with pytest.raises(ValueError):
        SlowRegression(seed=0, n_bits=5, slow_bits=5)


# -- chunked batches ------------------------------------------------------------------------
def test_chunked_batches_equal_a_per_batch_gather(monkeypatch: pytest.MonkeyPatch) -> None:
    import engine.data.streams as streams

    monkeypatch.setattr(streams, "_CHUNK", 7)  # batch 3 -> chunks of 6: batches never straddle a chunk
    s = PermutedImages(_images(), seed=2)
    s.begin_task()
    gen = torch.Generator().manual_seed(0)
    gen.set_state(s.gen.get_state())  # replays the task's shuffle
    order = torch.randperm(s.train_size, generator=gen)
    x = s._x_train[:, s.perm]
    got = list(s.batches(3))
    assert s.train_size == 54 and [len(b[1]) for b in got] == [3] * 18  # one pass
    for i, (xb, yb) in enumerate(got):
        idx = order[3 * i:3 * i + 3]
        assert torch.equal(xb, x[idx]) and torch.equal(yb, s._y_train[idx])


# -- class-incremental ------------------------------------------------------------------------
def _digits_like(n_classes: int = 5, per_class: int = 12, d: int = 9) -> ImageSet:
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(n_classes), per_class)
    x = rng.random((len(y), d), dtype=np.float32)
    return ImageSet(x, y.astype(np.int64), (3, 3), "toy", "0" * 64)


def test_class_incremental_schedule_and_one_pass_over_seen_classes() -> None:
    imgs = _digits_like()
    s = ClassIncrementalImages(imgs, seed=0, heldout_frac=0.25, initial_classes=2, classes_per_increment=2,
                               tasks_per_increment=2)
    assert (s.increments, s.tasks_per_cycle) == (3, 6)  # 2, 4, then all 5 classes
    seen_per_task, orders, perms = [], [], []
    for t in range(12):
        s.begin_task()
        seen = s.seen_classes
        seen_per_task.append(len(seen))
        orders.append(s.order.clone())
        perms.append(s.perm.clone())
        batches = list(s.batches(4))
        y = torch.cat([b[1] for b in batches])
        # one pass over exactly the seen classes' training images (9 per class after the split)
        assert sorted(y.tolist()) == sorted(c for c in seen for _ in range(9)), t
        assert len(y) == s.train_size
        xh, yh = s.heldout()
        assert set(yh.tolist()) == set(seen) and len(yh) == 3 * len(seen)
        # training images are the raw images of those labels in the cycle's permutation
        x = torch.cat([b[0] for b in batches])
        raw = torch.from_numpy(imgs.x)[:, s.perm]
        assert all(any(torch.equal(r, q) for q in raw) for r in x[:3])
        start, stop = {0: (0, 2), 1: (2, 4), 2: (4, 5)}[(t % 6) // 2]  # the latest increment's classes
        assert s.newest_classes().tolist() == s.order[start:stop].tolist() == seen[start:stop], t
    assert seen_per_task == [2, 2, 4, 4, 5, 5] * 2
    assert s.cycle == 1
    # within a cycle the class order and permutation stay; a new cycle draws both anew
    assert all(torch.equal(orders[0], o) and torch.equal(perms[0], p) for o, p in zip(orders[1:6], perms[1:6]))
    assert not torch.equal(perms[5], perms[6])
    assert sorted(orders[6].tolist()) == list(range(5))


def test_class_incremental_is_deterministic_and_resumable() -> None:
    kw = dict(heldout_frac=0.25, initial_classes=1, classes_per_increment=1, tasks_per_increment=1)
    a = ClassIncrementalImages(_digits_like(), seed=4, **kw)  # type: ignore[arg-type]
    b = ClassIncrementalImages(_digits_like(), seed=4, **kw)  # type: ignore[arg-type]
    for _ in range(3):
        for (x1, y1), (x2, y2) in zip(_task(a), _task(b)):
            assert torch.equal(x1, x2) and torch.equal(y1, y2)
    c = ClassIncrementalImages(_digits_like(), seed=4, **kw)  # type: ignore[arg-type]
    c.load_state_dict(a.state_dict())
    assert c.seen_classes == a.seen_classes and torch.equal(c.heldout()[0], a.heldout()[0])
    for _ in range(4):  # across the cycle boundary (5 tasks per cycle)
        for (x1, y1), (x2, y2) in zip(_task(a), _task(c)):
            assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert a.cycle == c.cycle == 1


@pytest.mark.parametrize("key,value", [("initial_classes", 0), ("initial_classes", 6),
                                       ("classes_per_increment", 9), ("tasks_per_increment", 0)])
def test_class_incremental_rejects_bad_schedules(key: str, value: int) -> None:
    kw = {"initial_classes": 2, "classes_per_increment": 1, "tasks_per_increment": 1, key: value}
    with pytest.raises(ParameterError) as err:
        ClassIncrementalImages(_digits_like(), seed=0, **kw)
    assert err.value.key == key and err.value.value == value
