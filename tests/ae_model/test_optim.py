"""Darknet's learning-rate policies, parameter groups, Adam and the weights' moving average."""

import math
from typing import cast

import pytest
import torch
from torch import nn

from ae_model.optim import (
    Adam,
    LRSchedule,
    build_ema,
    build_optimizer,
    build_scheduler,
    parameter_groups,
)


def test_burn_in_is_a_power_4_ramp() -> None:
    s = LRSchedule(learning_rate=0.001, max_batches=1000, burn_in=100)
    assert s(0) == 0.0
    # t=50 of burn_in 100: 0.001 * 0.5**4 = 6.25e-5
    assert s(50) == pytest.approx(6.25e-5)
    assert s(100) == pytest.approx(0.001)


def test_steps_policy_multiplies_at_each_step() -> None:
    s = LRSchedule(0.01, 1000, policy="steps", steps=(400, 450), scales=(0.1, 0.1))
    assert s(399) == pytest.approx(0.01)
    # darknet: a step applies once t reaches it (steps[i] > t stops the product)
    assert s(400) == pytest.approx(0.001)
    assert s(449) == pytest.approx(0.001)
    assert s(450) == pytest.approx(0.0001)


def test_poly_sig_exp_and_sgdr() -> None:
    assert LRSchedule(1.0, 100, policy="poly", power=2)(50) == pytest.approx(0.25)
    assert LRSchedule(1.0, 100, policy="exp", gamma=0.5)(3) == pytest.approx(0.125)
    assert LRSchedule(1.0, 100, policy="sig", gamma=1.0, step=10)(10) == pytest.approx(0.5)


def _cosine(high: float, low: float, t: int, period: int) -> float:
    return low + 0.5 * (high - low) * (1 + math.cos(math.pi * t / period))


def test_sgdr_is_darknets_warm_restarts() -> None:
    sgdr = LRSchedule(1.0, 100, policy="sgdr", sgdr_cycle=10, sgdr_mult=2, learning_rate_min=0.1)
    # Cycles of 10, 20, 40 iterations from 0; a cycle includes its last iteration (darknet's
    # strict `start + cycle < t`), where the rate touches learning_rate_min.
    cycles = {0: (0, 10), 5: (5, 10), 10: (10, 10), 11: (1, 20), 30: (20, 20), 31: (1, 40)}
    for t, (within, period) in cycles.items():
        assert sgdr(t) == pytest.approx(_cosine(1.0, 0.1, within, period)), t
    assert sgdr(10) == pytest.approx(0.1)
    equal = LRSchedule(1.0, 100, policy="sgdr", sgdr_cycle=10, sgdr_mult=1, learning_rate_min=0)
    assert [equal(t) for t in (0, 10, 11, 95)] == pytest.approx(
        [1.0, 0.0, _cosine(1.0, 0, 1, 10), _cosine(1.0, 0, 5, 10)]
    )
    # Without sgdr_cycle, darknet's one cycle over the run; the burn-in ramp comes first.
    whole = LRSchedule(1.0, 100, policy="sgdr", burn_in=10, learning_rate_min=0)
    assert whole(5) == pytest.approx((5 / 10) ** 4)
    assert whole(50) == pytest.approx(_cosine(1.0, 0, 50, 100))


def test_cosine_decays_once_after_the_burn_in() -> None:
    cosine = LRSchedule(0.01, 110, policy="cosine", burn_in=10, learning_rate_min=0.001)
    assert cosine(5) == pytest.approx(0.01 * 0.5**4)
    assert cosine(10) == pytest.approx(0.01)
    assert cosine(35) == pytest.approx(_cosine(0.01, 0.001, 25, 100))
    assert cosine(60) == pytest.approx(0.0055)
    assert cosine(110) == pytest.approx(0.001)


def test_bad_policies_are_rejected_with_a_reason() -> None:
    with pytest.raises(ValueError, match="policy='cosinus' is not supported"):
        LRSchedule(0.1, 10, policy="cosinus")
    with pytest.raises(ValueError, match="as many scales as steps"):
        LRSchedule(0.1, 10, policy="steps", steps=(5,), scales=())


def test_no_weight_decay_on_biases_and_batch_norm() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))
    decayed, plain = parameter_groups(model, 0.0005)
    assert decayed["weight_decay"] == 0.0005 and plain["weight_decay"] == 0.0
    decayed_params = cast(list[nn.Parameter], decayed["params"])
    plain_params = cast(list[nn.Parameter], plain["params"])
    assert {id(p) for p in decayed_params} == {id(model[0].weight), id(model[2].weight)}
    assert {id(p) for p in plain_params} == {
        id(model[1].weight),
        id(model[1].bias),
        id(model[2].bias),
    }


def test_scheduler_follows_the_schedule_and_resumes() -> None:
    model = nn.Linear(2, 2)
    schedule = LRSchedule(0.01, 100, policy="steps", burn_in=4, steps=(6,), scales=(0.1,))
    optimizer = build_optimizer(model, 0.01, 0.9, 0.0005)
    scheduler = build_scheduler(optimizer, schedule)
    seen = []
    for _ in range(8):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([schedule(t) for t in range(8)])
    resumed_opt = build_optimizer(model, 0.01, 0.9, 0.0005)
    resumed = build_scheduler(resumed_opt, schedule)
    # As the trainer resumes: optimizer state (holding the current lr), then the scheduler.
    resumed_opt.load_state_dict(optimizer.state_dict())
    resumed.load_state_dict(scheduler.state_dict())
    assert resumed_opt.param_groups[0]["lr"] == pytest.approx(schedule(8))
    resumed_opt.step()
    resumed.step()
    assert resumed_opt.param_groups[0]["lr"] == pytest.approx(schedule(9))


def test_sig_policy_does_not_overflow_far_from_its_step() -> None:
    schedule = LRSchedule(1.0, 100_000, policy="sig", gamma=1.0, step=10)
    assert schedule(50_000) == pytest.approx(0.0, abs=1e-300)
    assert LRSchedule(1.0, 100_000, policy="sig", gamma=-1.0, step=10)(50_000) == 1.0


def test_adam_keeps_darknets_betas_eps_and_no_decay_groups() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    optimizer = build_optimizer(model, 0.001, 0.9, 0.0005, Adam(b1=0.8, b2=0.99, eps=1e-6))
    assert isinstance(optimizer, torch.optim.Adam)
    decayed, plain = optimizer.param_groups
    assert decayed["betas"] == (0.8, 0.99) and decayed["eps"] == 1e-6
    assert decayed["weight_decay"] == 0.0005 and plain["weight_decay"] == 0.0
    assert isinstance(build_optimizer(model, 0.001, 0.9, 0.0005), torch.optim.SGD)


def test_ema_averages_weights_and_batch_norm_statistics() -> None:
    conv, norm = nn.Conv2d(1, 1, 1), nn.BatchNorm2d(1)
    ema = build_ema(nn.Sequential(conv, norm), 0.75)
    values = [1.0, 3.0, 7.0]
    expected = values[0]  # the first update copies
    for k, value in enumerate(values):
        with torch.no_grad():
            conv.weight.fill_(value)
            cast(torch.Tensor, norm.running_mean).fill_(value)
        ema.update_parameters(nn.Sequential(conv, norm))
        if k:
            expected = 0.75 * expected + 0.25 * value
    averaged = dict(ema.module.state_dict())
    assert averaged["0.weight"].item() == pytest.approx(expected)
    assert averaged["1.running_mean"].item() == pytest.approx(expected)
