"""SlowDevice: a step's idle time is (factor - 1) x the CPU time it used, oversleep paid back."""

from __future__ import annotations

import math
import time

import pytest

from splitinfer.measure.slowdown import SlowDevice


def _burn(cpu_s: float) -> str:
    """Spin on this thread until it has used ``cpu_s`` of CPU time."""
    start = time.thread_time()
    while time.thread_time() - start < cpu_s:
        pass
    return "done"


def test_a_step_idles_factor_minus_one_times_its_cpu_time():
    device = SlowDevice(4)
    start = time.perf_counter()
    assert device.run(_burn, 0.02) == "done"
    wall = time.perf_counter() - start
    assert device.cpu_s >= 0.02
    # it owes 3 x its CPU time; it may oversleep by a timer's slack, carried as credit
    assert 3 * device.cpu_s <= device.idle_s <= 3 * device.cpu_s + 0.05
    assert wall >= device.cpu_s + device.idle_s - 1e-3


def test_oversleep_is_credit_so_many_small_steps_idle_exactly():
    device = SlowDevice(2)
    for _ in range(200):
        with device.step():
            _burn(0.0002)
    # each sleep overshoots by the timer's slack; the credit makes the total come out right
    # to within one overshoot, instead of 200 of them
    assert device.idle_s == pytest.approx(device.cpu_s, abs=0.02)


def test_a_failing_step_still_pays_for_its_time():
    device = SlowDevice(3)
    with pytest.raises(RuntimeError, match="boom"):
        with device.step():
            _burn(0.01)
            raise RuntimeError("boom")
    assert device.cpu_s >= 0.01 and device.idle_s >= 2 * device.cpu_s


def test_factor_one_never_sleeps():
    device = SlowDevice(1)
    device.run(_burn, 0.005)
    assert device.idle_s == 0.0 and device.cpu_s >= 0.005


@pytest.mark.parametrize("factor", [0, 0.5, -2, math.nan, math.inf, "2", None, True])
def test_bad_factor_is_a_value_error_naming_it(factor):
    with pytest.raises(ValueError, match="SlowDevice factor must be a number >= 1"):
        SlowDevice(factor)
