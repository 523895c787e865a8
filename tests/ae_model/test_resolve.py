"""A job resolved against its cfg: the one place the API and the Trainer get their settings."""

import pytest

from ae_model.cfg import YoloSection, bundled_cfg_path, load_cfg, parse_cfg
from ae_model.options import AEConfig, LRPolicy, TrainOptions
from ae_model.resolve import JobSettingsError, ScheduleScaling, resolve_training

YOLOV3_TINY = load_cfg(bundled_cfg_path("yolov3-tiny"))  # batch 64, max_batches 500200,
# burn_in 1000, steps 400000,450000, 80 classes


def test_epochs_shorter_than_the_cfg_scale_its_burn_in_and_steps() -> None:
    # The case: 20 epochs of 800 images at the cfg's batch 64 are 250 iterations, and
    # the COCO schedule's 1,000-iteration burn-in kept the rate at 4e-6.
    r = resolve_training(YOLOV3_TINY, TrainOptions(epochs=20), train_images=800)
    assert r.max_batches == 250
    factor = 250 / 500200
    assert r.burn_in == round(1000 * factor) and r.burn_in < r.max_batches
    assert r.steps == (round(400000 * factor), round(450000 * factor)) == (200, 225)
    assert r.schedule_scaled_from == ScheduleScaling(500200, 1000, (400000, 450000))
    [note] = r.notes
    assert (
        "500200" in note
        and "burn_in 1000 -> 0" in note
        and "steps 400000,450000 -> 200,225" in note
    )
    assert r.warnings == ()
    stored = r.as_dict()
    assert stored["schedule_scaled_from"] == {"max_batches": 500200, "burn_in": 1000,
                                              "steps": [400000, 450000]}  # fmt: skip
    assert stored["notes"] == [note]


def test_what_the_job_sets_itself_is_not_scaled_and_is_warned_about() -> None:
    options = TrainOptions(max_batches=300, burn_in=1000)
    r = resolve_training(YOLOV3_TINY, options, train_images=800)
    assert r.burn_in == 1000 and r.steps == (240, 270)  # steps scaled, burn_in as given
    [warning] = r.warnings
    assert "burn_in=1000" in warning and "(300)" in warning and "never leaves" in warning


def test_the_cfgs_own_length_is_not_scaled_but_an_unreachable_step_is_warned_about() -> None:
    text = YOLOV3_TINY.text.replace("max_batches = 500200", "max_batches = 2000")
    r = resolve_training(parse_cfg(text), TrainOptions(), train_images=800)
    assert (r.max_batches, r.burn_in, r.steps) == (2000, 1000, (400000, 450000))
    assert r.schedule_scaled_from is None and r.notes == ()
    [warning] = r.warnings
    assert "first learning-rate step (400000)" in warning


def test_a_run_longer_than_the_cfg_keeps_the_cfgs_schedule() -> None:
    small = load_cfg(bundled_cfg_path("yolov3-tiny-small"))  # max_batches 4000
    r = resolve_training(small, TrainOptions(max_batches=5000), train_images=800)
    assert (r.burn_in, r.steps, r.notes, r.warnings) == (100, (3200, 3600), (), ())


def test_a_policy_without_steps_has_none_to_scale() -> None:
    r = resolve_training(YOLOV3_TINY, TrainOptions(max_batches=100, policy=LRPolicy.POLY),
                         train_images=10)  # fmt: skip
    assert (
        r.steps == ()
        and r.burn_in == 0
        and r.schedule_scaled_from == ScheduleScaling(500200, 1000, None)
    )


@pytest.mark.parametrize(
    ("options", "loc", "words"),
    [
        (TrainOptions(subdivisions=3), ("train", "batch"), "not divisible"),  # the cfg's 64
        (
            TrainOptions(subdivisions=2, world_size=4),
            ("train", "world_size"),
            "multiple of world_size",
        ),
    ],
)
def test_what_the_trainer_cannot_run_names_its_setting(
    options: TrainOptions, loc: tuple[str, ...], words: str
) -> None:
    with pytest.raises(JobSettingsError, match=words) as error:
        resolve_training(YOLOV3_TINY, options, train_images=10)
    assert error.value.loc == loc


def test_ae_placement_is_resolved_or_refused_on_the_cfg_alone() -> None:
    r = resolve_training(YOLOV3_TINY, TrainOptions(), train_images=1,
                         ae=AEConfig(layers={"stride": 16}))  # fmt: skip
    assert r.ae_layers == (20,)  # the branch after upsampling (docs/assisted_excitation.md)
    with pytest.raises(JobSettingsError, match="no layer has output stride 64") as error:
        resolve_training(YOLOV3_TINY, TrainOptions(), train_images=1,
                         ae=AEConfig(layers={"stride": 64}))  # fmt: skip
    assert error.value.loc == ("ae", "layers", "stride")


def test_heads_are_retargeted_to_the_datasets_classes() -> None:
    r = resolve_training(YOLOV3_TINY, TrainOptions(), train_images=1, num_classes=3)
    assert r.retargeted_from_classes == (80,)
    assert {s.classes for s in r.cfg.sections if isinstance(s, YoloSection)} == {3}
    same = resolve_training(YOLOV3_TINY, TrainOptions(), train_images=1, num_classes=80)
    assert same.cfg is YOLOV3_TINY and same.retargeted_from_classes is None
    # The retargeted cfg is parsed once per cfg and class count, not once per job.
    again = resolve_training(YOLOV3_TINY, TrainOptions(), train_images=1, num_classes=3)
    assert again.cfg is r.cfg


def test_the_layer_table_at_the_training_size_comes_with_the_resolution() -> None:
    r = resolve_training(YOLOV3_TINY, TrainOptions(width=320, height=256), train_images=1)
    assert list(r.layers) == r.cfg.layer_table(320, 256)
    assert "layers" not in r.as_dict()  # stored jobs keep their cfg's text, not its table


def test_the_cfgs_recipe_is_resolved_once_for_the_api_and_the_trainer() -> None:
    recipe = "adam=1\nB1=0.8\nema_alpha=0.999\npolicy=sgdr\nsgdr_mult=3\nlearning_rate_min=0\n"
    text = YOLOV3_TINY.text.replace("policy=steps", "", 1).replace("[net]\n", f"[net]\n{recipe}")
    r = resolve_training(parse_cfg(text), TrainOptions(max_batches=300), train_images=800)
    assert (r.optimizer, r.adam_b1, r.adam_b2, r.adam_eps) == ("adam", 0.8, 0.999, 0.000001)
    assert (r.ema_alpha, r.ema_start) == (0.999, 150)  # darknet starts at max_batches / 2
    # Without sgdr_cycle, darknet's one cycle over the run.
    assert (r.policy, r.sgdr_cycle, r.sgdr_mult, r.learning_rate_min) == ("sgdr", 300, 3, 0)
    plain = resolve_training(YOLOV3_TINY, TrainOptions(), train_images=800)
    assert (plain.optimizer, plain.ema_alpha, plain.learning_rate_min) == ("sgd", 0.0, 0.00001)
    assert {"optimizer", "ema_alpha", "ema_start", "sgdr_cycle"} <= r.as_dict().keys()
