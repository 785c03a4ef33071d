"""`AlonePolicy`: a batch runs alone while that was measured faster at its size, and is tried again now and then."""

from __future__ import annotations

import pytest

from conveyor_runtime.step.alone_policy import AlonePolicy


def test_alone_policy_runs_alone_at_first_and_now_and_then_on_an_instance_to_measure_that() -> None:
    policy = AlonePolicy(explore_every=4)
    assert policy.run_alone(1)
    policy.observe(1, 0.040, alone=True)
    assert policy.speedup(1) is None  # nothing measured on an instance yet
    policy.observe(2, 0.070, alone=False)  # another size's time says nothing about this one
    assert [policy.run_alone(1) for _ in range(7)] == [True, True, False, True, True, True, False]


def test_alone_policy_keeps_running_alone_while_it_is_clearly_faster() -> None:
    policy = AlonePolicy(gain=0.8, explore_every=128)
    policy.observe(1, 0.020, alone=True)
    policy.observe(1, 0.038, alone=False)
    assert policy.speedup(1) == pytest.approx(1.9)
    choices = [policy.run_alone(1) for _ in range(256)]
    assert choices.count(False) == 2 and not choices[127] and not choices[255]  # 1 in 128 refreshes the other time


def test_alone_policy_stops_where_alone_is_not_faster_and_rechecks_every_nth_batch() -> None:
    policy = AlonePolicy(gain=0.8, recheck_every=4)
    policy.run_alone(1)
    policy.observe(1, 0.047, alone=True)  # contended cores: two threads gain next to nothing
    policy.observe(1, 0.049, alone=False)
    choices = [policy.run_alone(1) for _ in range(12)]  # asked 2nd..13th time
    assert choices == [False, False, True, False] * 3
    for _ in range(20):  # the node got quieter: the rechecks measure it, and running alone resumes
        policy.observe(1, 0.020, alone=True)
    assert policy.run_alone(1)


def test_alone_policy_compares_the_median_of_recent_times_so_one_slow_batch_changes_nothing() -> None:
    policy = AlonePolicy(gain=0.8, window=5)
    for _ in range(5):
        policy.observe(1, 0.010, alone=True)
    policy.observe(1, 0.017, alone=False)
    policy.observe(1, 0.027, alone=True)  # one batch held up (a core that answered late): an outlier
    assert policy.speedup(1) == pytest.approx(1.7) and policy.run_alone(1)
    for _ in range(2):
        policy.observe(1, 0.016, alone=True)  # three of the last five slow: the cores really are busy now
    assert policy.speedup(1) == pytest.approx(0.017 / 0.016)
    assert not policy.run_alone(1)
    for _ in range(3):  # a lasting change back is followed within a few batches
        policy.observe(1, 0.009, alone=True)
    assert policy.speedup(1) == pytest.approx(0.017 / 0.009)
