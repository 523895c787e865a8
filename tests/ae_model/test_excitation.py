"""Assisted Excitation: mask, modes and gradients, schedules, the module, placement on networks."""

import copy
import math

import pytest
import torch

from ae_model.cfg import DarknetConfig, bundled_cfg_path, parse_cfg
from ae_model.darknet import Darknet
from ae_model.excitation import (
    MODES,
    SCHEDULES,
    AssistedExcitation,
    ExcitationContext,
    alpha_at,
    attach_excitation,
    excite,
    gt_mask,
)
from ae_model.placement import resolve_stride


def grid(*rows: str) -> torch.Tensor:
    """A 0/1 grid drawn as strings: ``grid(".#", "..")`` is ``[[0, 1], [0, 0]]``."""
    return torch.tensor([[float(c == "#") for c in row] for row in rows])


def mask_of(boxes: list[list[float]], height: int, width: int) -> torch.Tensor:
    """Mask ``(H, W)`` of a single image's boxes."""
    b = torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4)
    return gt_mask(b, torch.zeros(len(b), dtype=torch.long), 1, height, width)[0]


# --- mask ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("box", "expected"),
    [
        # Aligned box: columns 1..2, row 1.
        ([0.25, 0.25, 0.75, 0.5], grid("....", ".##.", "....", "....")),
        # Whole image.
        ([0.0, 0.0, 1.0, 1.0], grid("####", "####", "####", "####")),
        # Smaller than a cell, inside one cell.
        ([0.3, 0.3, 0.35, 0.45], grid("....", ".#..", "....", "....")),
        # Small but straddling a cell corner: all four cells it touches.
        ([0.45, 0.45, 0.55, 0.55], grid("....", ".##.", ".##.", "....")),
        # Right border, top row: must not spill into row 1 (darknet's loop does).
        ([0.75, 0.0, 1.0, 0.25], grid("...#", "....", "....", "....")),
        # Bottom-right corner.
        ([0.8, 0.8, 1.0, 1.0], grid("....", "....", "....", "...#")),
        # Left and top borders.
        ([0.0, 0.0, 0.1, 0.6], grid("#...", "#...", "#...", "....")),
        # Zero-width and zero-height: the cell containing the point.
        ([0.5, 0.5, 0.5, 0.5], grid("....", "....", "..#.", "....")),
        # Inverted (x2 < x1): treated as zero width at x1.
        ([0.6, 0.1, 0.2, 0.3], grid("..#.", "..#.", "....", "....")),
        # Partly outside: clipped to the grid.
        ([-0.5, -0.5, 0.1, 0.1], grid("#...", "....", "....", "....")),
        ([0.9, 0.9, 1.5, 1.5], grid("....", "....", "....", "...#")),
        # Entirely outside: nothing.
        ([1.2, 0.2, 1.5, 0.4], grid("....", "....", "....", "....")),
        ([-0.5, 0.2, -0.1, 0.4], grid("....", "....", "....", "....")),
        # A point on the far edge lies outside [0, 1): nothing.
        ([1.0, 1.0, 1.0, 1.0], grid("....", "....", "....", "....")),
        # NaN coordinates: nothing.
        ([math.nan, 0.2, 0.5, 0.4], grid("....", "....", "....", "....")),
    ],
)
def test_mask_single_box(box: list[float], expected: torch.Tensor) -> None:
    assert torch.equal(mask_of([box], 4, 4), expected)


def test_mask_non_square_grid_and_overlapping_boxes() -> None:
    boxes = [[0.0, 0.0, 0.4, 0.5], [0.2, 0.0, 0.5, 1.0], [0.9, 0.6, 0.95, 0.7]]
    expected = grid("###...", "###..#", ".##..#")
    assert torch.equal(mask_of(boxes, 3, 6), expected)


def test_mask_several_images_one_without_boxes() -> None:
    boxes = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [0.0, 0.75, 0.25, 1.0]])
    batch_index = torch.tensor([2, 0, 2])
    mask = gt_mask(boxes, batch_index, 3, 2, 4)
    assert mask.shape == (3, 2, 4)
    assert torch.equal(mask[0], grid("....", "..##"))
    assert torch.equal(mask[1], grid("....", "...."))
    assert torch.equal(mask[2], grid("##..", "#..."))


def test_mask_no_boxes() -> None:
    mask = gt_mask(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), 2, 3, 5)
    assert torch.equal(mask, torch.zeros(2, 3, 5))


def test_mask_ignores_boxes_of_images_outside_the_batch() -> None:
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
    mask = gt_mask(boxes, torch.tensor([-1, 5]), 2, 2, 2)
    assert torch.equal(mask, torch.zeros(2, 2, 2))


def test_mask_dtype_and_device_follow_arguments() -> None:
    boxes = torch.tensor([[0.0, 0.0, 0.5, 0.5]])
    mask = gt_mask(boxes, torch.tensor([0]), 1, 2, 2, dtype=torch.bfloat16)
    assert mask.dtype == torch.bfloat16
    assert mask.device == boxes.device
    assert torch.equal(mask[0].float(), grid("#.", ".."))


@pytest.mark.parametrize(
    ("boxes", "batch_index", "message"),
    [
        (torch.zeros(2, 5), torch.zeros(2, dtype=torch.long), "boxes must have shape"),
        (torch.zeros(2, 4), torch.zeros(3, dtype=torch.long), "batch_index must have shape"),
    ],
)
def test_mask_rejects_bad_shapes(
    boxes: torch.Tensor, batch_index: torch.Tensor, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        gt_mask(boxes, batch_index, 1, 2, 2)


def test_mask_rejects_empty_grid() -> None:
    with pytest.raises(ValueError, match="grid of at least 1x1"):
        gt_mask(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), 1, 0, 2)


# --- modes and gradients ------------------------------------------------------------------------


ALPHA = 0.7


def expected_output(mode: str, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The design's formulas, written out."""
    g = g[:, None]
    mean = a.mean(dim=1, keepdim=True)
    if mode == "excite":
        return a + ALPHA * g * mean
    if mode == "suppress_background":
        return a * (1 - ALPHA * (1 - g))
    return a + ALPHA * g * a * mean


def expected_grad(mode: str, a: torch.Tensor, g: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """d(sum(w * a'))/da in closed form, with the gradient flowing through the excitation term."""
    g = g[:, None]
    c = a.shape[1]
    mean = a.mean(dim=1, keepdim=True)
    w_mean = w.sum(dim=1, keepdim=True) / c  # the gradient of mean_c(a) spreads over channels
    if mode == "excite":
        return w + ALPHA * g * w_mean
    if mode == "suppress_background":
        return w * (1 - ALPHA * (1 - g))
    return w * (1 + ALPHA * g * mean) + ALPHA * g * (w * a).sum(dim=1, keepdim=True) / c


@pytest.fixture
def activation() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(2, 3, 4, 5, generator=gen, dtype=torch.float64)
    g = (torch.rand(2, 4, 5, generator=gen) > 0.5).double()
    w = torch.randn(2, 3, 4, 5, generator=gen, dtype=torch.float64)
    return a, g, w


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("detach", [True, False])
def test_mode_value_and_gradient(
    mode: str, detach: bool, activation: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
) -> None:
    a, g, w = activation
    a = a.clone().requires_grad_(True)
    out = excite(a, g, ALPHA, mode, detach)
    torch.testing.assert_close(out, expected_output(mode, a.detach(), g))
    (grad,) = torch.autograd.grad((out * w).sum(), a)
    # detach: the excitation term is a constant, so the layer passes gradients straight through.
    expected = w if detach else expected_grad(mode, a.detach(), g, w)
    torch.testing.assert_close(grad, expected)


@pytest.mark.parametrize("mode", MODES)
def test_mode_leaves_input_alone_and_is_identity_at_alpha_zero(
    mode: str, activation: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
) -> None:
    a, g, _ = activation
    before = a.clone()
    assert torch.equal(excite(a, g, 0.0, mode), a)
    assert torch.equal(a, before)


def test_excite_changes_only_masked_cells(
    activation: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
) -> None:
    a, g, _ = activation
    changed = (excite(a, g, ALPHA) != a).any(dim=1)
    assert not changed[g == 0].any()


def test_unknown_mode_lists_valid_modes() -> None:
    with pytest.raises(ValueError, match="excite, suppress_background, multiplicative"):
        excite(torch.zeros(1, 1, 2, 2), torch.zeros(1, 2, 2), 1.0, "boost")


def test_excite_rejects_mismatched_mask() -> None:
    with pytest.raises(ValueError, match=r"mask of shape \(B, H, W\)"):
        excite(torch.zeros(1, 1, 2, 2), torch.zeros(1, 2, 3), 1.0)


# --- schedules ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schedule", "at_half"),
    [
        ("cosine", 0.5),
        ("quarter_cosine", math.cos(math.pi / 4)),
        ("linear", 0.5),
    ],
)
def test_decaying_schedules(schedule: str, at_half: float) -> None:
    def alpha(t: float) -> float:
        return alpha_at(schedule, t, 1000, alpha_max=2.0)

    assert alpha(0) == pytest.approx(2.0)
    assert alpha(500) == pytest.approx(2.0 * at_half)
    assert alpha(1000) == 0.0  # exactly, so AE switches off at T
    assert alpha(1001) == 0.0
    assert alpha(10**6) == 0.0
    assert alpha(250) > alpha(500) > alpha(750) > 0


def test_constant_schedule() -> None:
    assert [alpha_at("constant", t, 10, alpha_max=0.3) for t in (0, 5, 10, 11)] == [0.3] * 4


def test_cosine_is_the_default_reading_of_the_paper() -> None:
    assert alpha_at("cosine", 250, 1000) == pytest.approx((1 + math.cos(math.pi / 4)) / 2)


def test_darknet_schedule_n_equals_1_uses_max_batches() -> None:
    def alpha(t: float) -> float:
        return alpha_at("darknet", t, 1, max_batches=1000)

    assert alpha(0) == 1.0
    assert alpha(250) == pytest.approx((1 + math.cos(math.pi / 4)) / 2)
    assert alpha(500) == pytest.approx(0.5)  # still on at max_batches / 2 ...
    assert alpha(501) == 0.0  # ... and off after it
    assert alpha_at("darknet", 0, 1, max_batches=1000, alpha_max=0.5) == 0.5


def test_darknet_schedule_n_above_1_between_burn_in_and_n() -> None:
    def alpha(t: float) -> float:
        return alpha_at("darknet", t, 400, burn_in=100)

    assert alpha(0) == 0.0
    assert alpha(99) == 0.0
    assert alpha(100) == pytest.approx((1 + math.cos(math.pi * 100 / 500)) / 2)
    assert alpha(400) == pytest.approx((1 + math.cos(math.pi * 400 / 500)) / 2)
    assert alpha(401) == 0.0
    assert alpha_at("darknet", 0, 400) == 1.0  # no burn-in: starts at 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"schedule": "step", "t": 0, "T": 10}, "cosine, quarter_cosine, linear"),
        ({"schedule": "cosine", "t": 0, "T": 0}, "T must be > 0"),
        ({"schedule": "cosine", "t": 0, "T": math.nan}, "T must be > 0"),
        ({"schedule": "cosine", "t": -1, "T": 10}, "t must be >= 0"),
        ({"schedule": "cosine", "t": 0, "T": 10, "alpha_max": -1.0}, "alpha_max must be"),
        ({"schedule": "cosine", "t": 0, "T": 10, "alpha_max": math.inf}, "alpha_max must be"),
        ({"schedule": "darknet", "t": 0, "T": 1}, "give max_batches > 0"),
        ({"schedule": "darknet", "t": 0, "T": 2.5}, "integer N"),
        ({"schedule": "darknet", "t": 0, "T": 4, "burn_in": -1}, "burn_in must be >= 0"),
    ],
)
def test_schedule_rejects_bad_input(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        alpha_at(**kwargs)  # type: ignore[arg-type]


def test_exported_names() -> None:
    assert SCHEDULES == ("cosine", "quarter_cosine", "linear", "constant", "darknet")
    assert MODES == ("excite", "suppress_background", "multiplicative")


# --- the module and its context -----------------------------------------------------------------


def make_context(batch_size: int = 2, iteration: int = 0) -> ExcitationContext:
    targets = torch.tensor([[0, 3, 0.0, 0.0, 0.5, 0.5], [1, 1, 0.25, 0.5, 1.0, 1.0]])
    context = ExcitationContext()
    context.set(targets, batch_size, iteration)
    return context


def test_context_takes_boxes_from_targets() -> None:
    context = make_context(iteration=7)
    assert context.boxes is not None and context.batch_index is not None
    assert torch.equal(context.boxes, torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.25, 0.5, 1.0, 1.0]]))
    assert torch.equal(context.batch_index, torch.tensor([0, 1]))
    assert context.batch_index.dtype == torch.long
    assert (context.batch_size, context.iteration) == (2, 7)
    context.clear()
    assert context.boxes is None and context.batch_index is None


def test_context_rejects_bad_targets() -> None:
    with pytest.raises(ValueError, match=r"targets must have shape \(N, 6\)"):
        ExcitationContext().set(torch.zeros(3, 5), 1, 0)


def test_module_excites_in_training_at_each_resolution() -> None:
    context = make_context(iteration=250)
    ae = AssistedExcitation(context, "cosine", 1000, alpha_max=0.8, mode="excite")
    alpha = alpha_at("cosine", 250, 1000, alpha_max=0.8)
    for height, width in [(4, 4), (6, 10), (3, 5)]:
        a = torch.randn(2, 3, height, width)
        assert context.boxes is not None and context.batch_index is not None
        mask = gt_mask(context.boxes, context.batch_index, 2, height, width)
        assert torch.equal(ae(a), excite(a, mask, alpha))
    assert ae.last_alpha == alpha


@pytest.mark.parametrize("mode", MODES)
def test_prepared_step_excites_as_the_context_does(mode: str) -> None:
    # prepare() is what a compiled network uses: the same output, alpha a 0-d tensor.
    context = make_context(iteration=250)
    ae = AssistedExcitation(context, "cosine", 1000, alpha_max=0.8, mode=mode)
    a = torch.randn(2, 3, 6, 10, dtype=torch.bfloat16)
    expected = ae(a)
    ae.prepare(6, 10, a.device)
    assert ae.step_input is not None and ae.step_input[1].ndim == 0
    context.clear()  # a prepared module no longer reads the context
    torch.testing.assert_close(ae(a), expected, rtol=0, atol=0)
    assert ae.last_alpha == alpha_at("cosine", 250, 1000, alpha_max=0.8)
    ae.unprepare()
    assert ae(a) is a  # back to the (now empty) context


def test_prepared_step_is_free_when_alpha_is_zero() -> None:
    context = make_context(iteration=100)
    ae = AssistedExcitation(context, "linear", 100)
    ae.prepare(4, 4, torch.device("cpu"))
    a = torch.randn(2, 3, 4, 4)
    assert ae.step_input is None and ae(a) is a and ae.last_alpha == 0.0


def test_module_follows_the_activation_dtype() -> None:
    ae = AssistedExcitation(make_context(), "constant", 1)
    a = torch.randn(2, 3, 4, 4, dtype=torch.bfloat16)
    out = ae(a)
    assert out.dtype == torch.bfloat16
    assert not torch.equal(out, a)


def test_module_is_free_when_off() -> None:
    a = torch.randn(2, 3, 4, 4)
    context = make_context(iteration=0)
    ae = AssistedExcitation(context, "linear", 100)
    ae.eval()
    assert ae(a) is a
    ae.train()
    assert ae(a) is not a
    context.iteration = 100  # alpha reached 0
    assert ae(a) is a
    assert ae.last_alpha == 0.0
    context.iteration = 0
    context.clear()
    assert ae(a) is a


def test_module_has_no_state() -> None:
    ae = AssistedExcitation(ExcitationContext(), "cosine", 10)
    assert list(ae.parameters()) == [] and list(ae.buffers()) == []
    assert ae.state_dict() == {}


def test_module_rejects_stale_context() -> None:
    ae = AssistedExcitation(make_context(batch_size=2), "constant", 1, layer_index=5)
    with pytest.raises(ValueError, match="layer 5: the context holds boxes for 2 images"):
        ae(torch.zeros(3, 1, 2, 2))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"schedule": "cosine", "T": 10, "mode": "boost"}, "unknown AE mode"),
        ({"schedule": "cosin", "T": 10}, "unknown AE schedule"),
        ({"schedule": "darknet", "T": 1}, "give max_batches"),
    ],
)
def test_module_validates_at_construction(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AssistedExcitation(ExcitationContext(), **kwargs)  # type: ignore[arg-type]


# --- on a darknet network -----------------------------------------------------------------------

SMALL = "yolov3-tiny-small"


def small_targets(batch_size: int) -> torch.Tensor:
    """Two boxes per image, ``(2B, 6)``: ``batch_index, class_id, x1, y1, x2, y2``."""
    rows = []
    for b in range(batch_size):
        rows.append([b, 1, 0.1, 0.2, 0.45, 0.6])
        rows.append([b, 4, 0.5, 0.55, 0.95, 0.9])
    return torch.tensor(rows)


@pytest.fixture
def small_pair() -> tuple[Darknet, Darknet, ExcitationContext, list[int]]:
    """The small network twice with the same weights; AE (constant alpha 1) on the first."""
    torch.manual_seed(0)
    plain = Darknet(SMALL)
    excited = copy.deepcopy(plain)
    context = ExcitationContext()
    layers = attach_excitation(excited, {"stride": 16}, context, schedule="constant", T=1)
    context.set(small_targets(2), 2, 0)
    return excited, plain, context, layers


def test_attach_leaves_the_state_dict_alone(
    small_pair: tuple[Darknet, Darknet, ExcitationContext, list[int]],
) -> None:
    excited, plain, _, layers = small_pair
    assert layers == [20]
    assert isinstance(excited.excitations["20"], AssistedExcitation)
    assert excited.state_dict().keys() == plain.state_dict().keys()


def test_eval_is_bit_identical_to_the_network_without_ae(
    small_pair: tuple[Darknet, Darknet, ExcitationContext, list[int]],
) -> None:
    excited, plain, _, _ = small_pair
    x = torch.rand(2, 3, 96, 128)
    with torch.no_grad():
        assert torch.equal(excited.eval()(x), plain.eval()(x))


def test_training_changes_only_what_comes_after_the_excited_layer(
    small_pair: tuple[Darknet, Darknet, ExcitationContext, list[int]],
) -> None:
    excited, plain, _, _ = small_pair
    x = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        before, after = excited.train()(x)
        plain_before, plain_after = plain.train()(x)
    # Head 16 comes before layer 20 and reads nothing after it; head 23 reads layer 20.
    assert torch.equal(before, plain_before)
    assert not torch.equal(after, plain_after)
    assert excited.excitations["20"].last_alpha == 1.0


def test_training_step_with_changing_input_sizes(
    small_pair: tuple[Darknet, Darknet, ExcitationContext, list[int]],
) -> None:
    excited, plain, context, _ = small_pair
    excited.train()
    plain.train()
    optimizer = torch.optim.SGD(excited.parameters(), lr=1e-3)
    for iteration, size in enumerate([96, 160, 128]):  # multi-scale: the grid changes each step
        x = torch.rand(2, 3, size, size)
        context.set(small_targets(2), 2, iteration)
        outputs = excited(x)
        assert [o.shape[-1] for o in outputs] == [size // 32, size // 16]
        with torch.no_grad():
            assert not torch.equal(outputs[1], plain(x)[1])
        optimizer.zero_grad()
        torch.stack([o.square().mean() for o in outputs]).sum().backward()
        grads = [p.grad for p in excited.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        optimizer.step()
        context.clear()


@pytest.mark.parametrize(
    ("cfg", "stride", "expected", "kind", "rule"),
    [
        ("yolov3-tiny", 8, 6, "convolutional", 2),  # the end of the stride-8 stage
        ("yolov3-tiny", 16, 20, "route", 1),  # the route after the upsample
        ("yolov3-tiny", 32, 13, "convolutional", 3),  # where the first branch forks
        ("yolov3", 4, 11, "shortcut", 2),
        ("yolov3", 8, 98, "route", 1),
        ("yolov3", 16, 86, "route", 1),
        ("yolov3", 32, 79, "convolutional", 3),
        ("yolov4-tiny", 8, 16, "route", 2),  # the stage's last CSP route
        ("yolov4-tiny", 16, 34, "route", 1),
        ("yolov4-tiny", 32, 27, "convolutional", 3),
        ("yolov2", 16, 16, "convolutional", 2),  # the passthrough's source
        ("yolov2", 32, 29, "convolutional", 3),  # no fork: the stage's last layer
        ("yolov2-tiny", 32, 13, "convolutional", 3),
    ],
)
def test_placement_by_stride(cfg: str, stride: int, expected: int, kind: str, rule: int) -> None:
    model = Darknet(cfg)
    size = model.net.width
    index = resolve_stride(model.config, stride, size, size)
    assert index == expected
    rows = model.layer_table(size, size)
    assert (rows[index].type, rows[index].out_stride) == (kind, stride)
    reads = [model.sections[i] for i in getattr(model.sections[index], "layers", ())]
    assert ("upsample" in [s.type for s in reads]) == (rule == 1)
    if rule == 2:
        assert rows[index + 1].out_stride > stride
    assert attach_excitation(model, {"stride": stride}, ExcitationContext()) == [expected]


def test_placement_by_stride_rule_2_ends_the_stage() -> None:
    model = Darknet("yolov3")
    rows = model.layer_table(416, 416)
    index = resolve_stride(model.config, 4, 416, 416)
    assert rows[index].out_stride == 4 and rows[index + 1].out_stride == 8


def test_placement_by_stride_lists_the_strides_there_are() -> None:
    model = Darknet(SMALL)
    with pytest.raises(ValueError, match=r"stride 64 .* strides 1, 2, 4, 8, 16, 32"):
        resolve_stride(model.config, 64, 160, 160)
    with pytest.raises(ValueError, match=r'\{"stride": S\} with S an integer'):
        attach_excitation(model, {"stride": "16"}, ExcitationContext())  # type: ignore[dict-item]


def test_placement_by_index() -> None:
    model = Darknet("yolov3-tiny")
    context = ExcitationContext()
    layers = attach_excitation(model, [20, 4, 17], context, mode="multiplicative")
    assert layers == [4, 17, 20]
    assert sorted(model.excitations.keys()) == ["17", "20", "4"]
    module = model.excitations["17"]
    assert isinstance(module, AssistedExcitation)
    assert (module.layer_index, module.mode, module.context) == (17, "multiplicative", context)
    # T defaults to [net] max_batches.
    assert (module.schedule, module.T) == ("cosine", model.net.max_batches)
    assert attach_excitation(model, 8, context) == [8]
    assert sorted(model.excitations.keys()) == ["17", "20", "4", "8"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (24, r"valid indices are 0\.\.23"),
        ([-1], r"valid indices are 0\.\.23"),
        ([True], r"valid indices are 0\.\.23"),
        ([], "names no layer"),
        (16, r"layer 16 is a \[yolo\] detection head"),
    ],
)
def test_placement_by_index_rejects_bad_indices(spec: object, message: str) -> None:
    model = Darknet("yolov3-tiny")
    with pytest.raises(ValueError, match=message):
        attach_excitation(model, spec, ExcitationContext())  # type: ignore[arg-type]
    assert len(model.excitations) == 0


def cfg_with_key(value: str) -> DarknetConfig:
    text = bundled_cfg_path(SMALL).read_text()
    route = "[route]\nlayers = -1, 8\n"
    assert route in text
    return parse_cfg(text.replace(route, f"{route}assisted_excitation={value}\n"))


def test_cfg_key_turns_on_the_darknet_schedule() -> None:
    model = Darknet(cfg_with_key("3000"))
    context = ExcitationContext()
    assert attach_excitation(model, None, context) == [20]
    module = model.excitations["20"]
    assert isinstance(module, AssistedExcitation)
    assert (module.schedule, module.T, module.burn_in, module.max_batches) == (
        "darknet",
        3000,
        100,
        4000,
    )
    assert module.alpha(99) == 0.0  # off during burn_in, as in darknet
    assert module.alpha(100) == alpha_at("darknet", 100, 3000, burn_in=100)
    # The job's own placement wins on the same layer; from_cfg=False ignores the key.
    attach_excitation(model, 20, context, schedule="linear", T=50)
    assert model.excitations["20"].schedule == "linear"
    fresh = Darknet(cfg_with_key("3000"))
    assert attach_excitation(fresh, None, context, from_cfg=False) == []


def test_cfg_key_zero_is_off_and_garbage_names_the_line() -> None:
    assert attach_excitation(Darknet(cfg_with_key("0")), None, ExcitationContext()) == []
    with pytest.raises(ValueError, match=r":\d+: \[route\] \(layer 20\) assisted_excitation=lots"):
        attach_excitation(Darknet(cfg_with_key("lots")), None, ExcitationContext())
