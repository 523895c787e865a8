"""The bad-input catalogue (docs/bad_input.md): every case is refused at the API with a 4xx
whose message says what to fix, and leaves nothing behind.

Each case is one request. The table of cases below is the catalogue; docs/bad_input.md has one
row per case, and ``test_the_doc_lists_every_case`` keeps the two in step. No worker runs:
a refused request must never reach one.
"""

import re
import struct
import warnings
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ae_model.cfg import bundled_cfg_path
from api.core.settings import Settings
from tests.ae_model.data.dataset_files import (
    Files,
    coco_files,
    png,
    symlink_member,
    yolo_files,
    zip_bytes,
    zip_with_member,
)
from tests.api.conftest import ready_dataset
from tests.conftest import REPO_ROOT

DOC = REPO_ROOT / "docs" / "bad_input.md"
# Replaced by the id of a ready dataset of the caller's, so job cases get past the dataset check.
DATASET = "<dataset id>"
TINY = bundled_cfg_path("yolov3-tiny-small").read_text()


@dataclass(frozen=True)
class Case:
    """One bad request and how it must be refused.

    ``json`` is sent as the body; ``upload`` builds a zip sent as the multipart ``file``
    (with ``limits`` setting the server's upload limits for this request); otherwise no body.
    """

    id: str
    method: str
    path: str
    status: int
    message: str  # a substring of the message: the part that says what to fix
    json: Any = None
    upload: Callable[[], bytes] | None = None
    form: dict[str, str] = field(default_factory=dict)
    limits: dict[str, Any] = field(default_factory=dict)


# -- builders -------------------------------------------------------------------------------


def cfg(text: str) -> dict[str, str]:
    return {"name": "mine", "cfg": text}


def tiny(old: str, new: str) -> dict[str, str]:
    """The bundled yolov3-tiny-small with its first ``old`` replaced."""
    assert old in TINY
    return cfg(TINY.replace(old, new, 1))


def net(*layers: str) -> dict[str, str]:
    """A 64x64 cfg of the given layer sections."""
    return cfg("\n".join(["[net]\nwidth=64\nheight=64\nchannels=3\n", *layers]))


CONV = "[convolutional]\nfilters=8\nsize=3\nstride={stride}\npad=1\n"


def job(**changes: Any) -> dict[str, Any]:
    return {"model": "yolov3-tiny-small", "dataset_id": DATASET, **changes}


def ae(**settings: Any) -> dict[str, Any]:
    return job(ae={"layers": 20, **settings})


def comparison(*arms: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {"base": job(), "arms": [{"name": "baseline", "ae": None}, *arms], **changes}


def generate(**changes: Any) -> dict[str, Any]:
    return {"kind": "shapes", "train": 3, "val": 2, "size": 64, **changes}


def with_member(info: zipfile.ZipInfo, content: bytes = b"x") -> Callable[[], bytes]:
    return lambda: zip_with_member(info, content)


def special(name: str, mode: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3  # Unix: the file type in external_attr counts
    info.external_attr = mode << 16
    return info


def encrypted() -> bytes:
    # zipfile cannot write encrypted members: set the flag in the central directory.
    data = bytearray(zip_with_member(zipfile.ZipInfo("secret.txt"), b"xx"))
    entry = data.rfind(b"PK\x01\x02")
    data[entry + 8] |= 0x1
    return bytes(data)


def duplicated() -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile warns "Duplicate name"
        return zip_with_member(zipfile.ZipInfo("classes.txt"), b"x", files=yolo_files())


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width x height`` pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + b"".join(
        [chunk(b"IHDR", header), chunk(b"IDAT", zlib.compress(bytes(100))), chunk(b"IEND", b"")]
    )


def coco(edit: Callable[[Files], Any]) -> Callable[[], bytes]:
    def build() -> bytes:
        files = coco_files()
        edit(files)
        return zip_bytes(files)

    return build


def coco_entry(kind: str, **changes: Any) -> Callable[[], bytes]:
    """COCO with the first train ``images`` or ``annotations`` entry changed."""
    return coco(lambda f: f["annotations/instances_train.json"][kind][0].update(changes))


def yolo_label(text: str) -> Callable[[], bytes]:
    return lambda: zip_bytes({**yolo_files(), "labels/train/001.txt": text})


def without(word: str) -> Callable[[], bytes]:
    return lambda: zip_bytes({k: v for k, v in yolo_files().items() if word not in k})


# -- the catalogue ------------------------------------------------------------------------------

MODELS, JOBS, COMPARISONS, DATASETS = "/v1/models", "/v1/jobs", "/v1/comparisons", "/v1/datasets"
GENERATE = "/v1/datasets/generate"
EXTRA = "Extra inputs are not permitted"

CASES = [
    # Malformed cfgs: parsed as darknet reads them; the message starts with NAME.cfg:LINE.
    Case("cfg-unknown-section", "POST", MODELS, 422, "mine.cfg:35: unknown section [maxpooling]",
         json=tiny("[maxpool]", "[maxpooling]")),
    Case("cfg-bad-integer", "POST", MODELS, 422, "filters=sixteen: expected an integer",
         json=tiny("filters=16", "filters=sixteen")),
    Case("cfg-bad-number", "POST", MODELS, 422, "momentum=0,9: expected a number",
         json=tiny("momentum=0.9", "momentum=0,9")),
    Case("cfg-zero-stride", "POST", MODELS, 422, "stride=0: expected an integer >= 1",
         json=tiny("stride=2", "stride=0")),
    Case("cfg-route-to-missing-layer", "POST", MODELS, 422,
         "-40 refers to layer -23, but this is layer 17, so only layers 0..16 can be used",
         json=tiny("layers = -4", "layers = -40")),
    Case("cfg-route-to-later-layer", "POST", MODELS, 422, "30 refers to layer 30",
         json=tiny("layers = -1, 8", "layers = -1, 30")),
    Case("cfg-route-size-mismatch", "POST", MODELS, 422,
         "routed layers need the same width and height",
         json=net(CONV.format(stride=1), CONV.format(stride=2), "[route]\nlayers=-1,-2\n")),
    Case("cfg-shortcut-shape-mismatch", "POST", MODELS, 422,
         "layer 0 is 64x64x8 but the previous layer is 32x32x8; a shortcut adds maps of the "
         "same width and height",
         json=net(CONV.format(stride=1), CONV.format(stride=2), "[shortcut]\nfrom=-2\n")),
    Case("cfg-head-filters", "POST", MODELS, 422, "set filters=45 in the [convolutional] before it",
         json=tiny("filters=45", "filters=44")),
    Case("cfg-no-net-section", "POST", MODELS, 422, "a cfg starts with [net]",
         json=cfg("width=416\n")),
    Case("cfg-no-layers", "POST", MODELS, 422, "has a [net] section but no layers",
         json=cfg("[net]\nwidth=64\nheight=64\nchannels=3\n")),
    Case("cfg-too-long", "POST", MODELS, 422, "cfg: String should have at most 524288 characters",
         json=cfg("#" * (512 * 1024 + 1))),
    Case("model-unknown-field", "POST", MODELS, 422, f"classes: {EXTRA}",
         json={**cfg(TINY), "classes": 3}),
    Case("model-cfg-wrong-type", "POST", MODELS, 422, "cfg: Input should be a valid string",
         json={"name": "mine", "cfg": 42}),
    Case("layers-bad-size", "GET", "/v1/models/yolov3-tiny/layers?size=415", 422,
         "width and height must be positive multiples of 32"),
    # Assisted Excitation on layers the network does not have, and bad AE settings.
    Case("ae-missing-layer", "POST", JOBS, 422,
         "ae.layers: AE layer index 99 is not a layer of this network: valid indices are 0..23",
         json=job(ae={"layers": 99})),
    Case("ae-missing-stride", "POST", JOBS, 422,
         "ae.layers.stride: no layer has output stride 64 at 160x160; this network has "
         "strides 1, 2, 4, 8, 16, 32",
         json=job(ae={"layers": {"stride": 64}})),
    Case("ae-negative-layer", "POST", JOBS, 422, "layer indices are 0-based darknet indices",
         json=job(ae={"layers": [-1]})),
    Case("ae-no-layers", "POST", JOBS, 422, "give at least one layer index",
         json=job(ae={"layers": []})),
    Case("ae-unknown-schedule", "POST", JOBS, 422,
         "ae.schedule: Input should be 'cosine', 'quarter_cosine', 'linear', 'constant' or "
         "'darknet'",
         json=ae(schedule="exponential")),
    Case("ae-zero-iterations", "POST", JOBS, 422,
         "ae.iterations: Input should be greater than or equal to 1", json=ae(iterations=0)),
    Case("ae-alpha-too-large", "POST", JOBS, 422,
         "ae.alpha_max: Input should be less than or equal to 10", json=ae(alpha_max=11)),
    # Training schedule values.
    Case("train-unknown-policy", "POST", JOBS, 422, "train.policy: Input should be 'constant'",
         json=job(train={"policy": "cyclic"})),
    Case("train-steps-without-scales", "POST", JOBS, 422, "steps and scales go together",
         json=job(train={"steps": [100]})),
    Case("train-batch-not-divisible", "POST", JOBS, 422,
         "batch=10 must be divisible by subdivisions=3",
         json=job(train={"batch": 10, "subdivisions": 3})),
    Case("train-batch-not-divisible-by-cfg", "POST", JOBS, 422,
         "train.batch: batch=10 is not divisible by subdivisions=16 (the cfg's unless the job "
         "sets them)",
         json=job(model="yolov3", train={"batch": 10})),
    Case("train-world-size-not-dividing-subdivisions", "POST", JOBS, 422,
         "train.world_size: world_size=3 processes share each iteration's subdivisions=16 "
         "micro-batches: set subdivisions to a multiple of world_size (e.g. subdivisions=3",
         json=job(model="yolov3", train={"world_size": 3})),
    Case("train-max-batches-and-epochs", "POST", JOBS, 422, "give max_batches or epochs, not both",
         json=job(train={"max_batches": 10, "epochs": 1})),
    Case("train-zero-learning-rate", "POST", JOBS, 422,
         "train.learning_rate: Input should be greater than 0",
         json=job(train={"learning_rate": 0})),
    Case("train-width-not-multiple-of-32", "POST", JOBS, 422,
         "train.width: Input should be a multiple of 32", json=job(train={"width": 100})),
    # Unknown fields, wrong types and references to nothing.
    Case("job-unknown-field", "POST", JOBS, 422, f"colour: {EXTRA}", json=job(colour="red")),
    Case("job-misspelt-train-field", "POST", JOBS, 422, f"train.learning_rat: {EXTRA}",
         json=job(train={"learning_rat": 0.1})),
    Case("job-dataset-id-wrong-type", "POST", JOBS, 422,
         "dataset_id: Input should be a valid integer", json=job(dataset_id="one")),
    # Strict JSON types: no true for 1, "3" for 3 or 3.0 for an integer; numbers may be integers.
    Case("job-integer-as-boolean", "POST", JOBS, 422,
         "train.max_batches: Input should be a valid integer",
         json=job(train={"max_batches": True})),
    Case("job-integer-as-string", "POST", JOBS, 422, "seed: Input should be a valid integer",
         json=job(seed="3")),
    Case("job-integer-as-float", "POST", JOBS, 422, "train.batch: Input should be a valid integer",
         json=job(train={"batch": 16.0})),
    Case("job-number-as-string", "POST", JOBS, 422,
         "train.learning_rate: Input should be a valid number",
         json=job(train={"learning_rate": "0.01"})),
    Case("job-boolean-as-string", "POST", JOBS, 422,
         "train.augment: Input should be a valid boolean", json=job(train={"augment": "false"})),
    Case("job-boolean-as-integer", "POST", JOBS, 422,
         "ae.detach: Input should be a valid boolean", json=ae(detach=0)),
    Case("job-model-as-boolean", "POST", JOBS, 422,
         "model.str: Input should be a valid string; model.int: Input should be a valid integer",
         json=job(model=True)),
    Case("job-ae-layer-as-string", "POST", JOBS, 422,
         "ae.layers.int: Input should be a valid integer", json=job(ae={"layers": "20"})),
    Case("comparison-arm-train-wrong-type", "POST", COMPARISONS, 422,
         "arms.1.train.batch: Input should be a valid integer",
         json=comparison({"name": "big", "train": {"batch": True}})),
    Case("comparison-seed-as-string", "POST", COMPARISONS, 422,
         "seeds.0: Input should be a valid integer",
         json=comparison({"name": "ae16"}, seeds=["0"])),
    Case("job-body-not-an-object", "POST", JOBS, 422,
         "Input should be a valid dictionary or object", json=[1, 2]),
    Case("job-missing-dataset", "POST", JOBS, 422,
         "dataset_id: no dataset 999999; see GET /v1/datasets", json=job(dataset_id=999999)),
    Case("job-unknown-model", "POST", JOBS, 422, "model: no bundled cfg named 'yolov9'; bundled:",
         json=job(model="yolov9")),
    Case("job-missing-uploaded-model", "POST", JOBS, 422,
         "model: no uploaded model 424242; see GET /v1/models", json=job(model=424242)),
    Case("model-over-compute-budget", "POST", MODELS, 422,
         "over this server's budget of 1000; use fewer or smaller layers or a smaller [net]",
         json=cfg("[net]\nwidth=4096\nheight=4096\nchannels=3\n\n[convolutional]\nfilters=64\n\n"
                  "[convolutional]\nfilters=64\nsize=3\nstride=1\npad=1\n")),
    Case("job-over-compute-budget", "POST", JOBS, 422,
         "BFLOPs per image at 4096x4096, over this server's budget of 1000; train at a smaller "
         "size or a smaller cfg",
         json=job(model="yolov3", train={"width": 4096, "height": 4096})),
    Case("model-over-parameter-budget", "POST", MODELS, 422,
         "mine.cfg: the network has 2030.1 M parameters, over this server's budget of 500 M; "
         "use fewer or narrower layers",
         json=cfg("[net]\nwidth=32\nheight=32\nchannels=3\n\n"
                  "[convolutional]\nfilters=4096\nsize=1\nstride=32\n\n"
                  "[convolutional]\nfilters=4096\nsize=11\nstride=1\npad=1\n")),
    Case("job-over-memory-budget", "POST", JOBS, 422,
         "train: a training step needs about 146.6 GiB: 145.9 GiB of activations for a "
         "micro-batch of 64 images (batch=64 / subdivisions=1) at 896x896 (the largest "
         "multi-scale size)",
         json=job(model="yolov3", train={"batch": 64, "subdivisions": 1, "width": 608,
                                         "height": 608})),
    Case("job-model-not-ascii-digits", "POST", JOBS, 422, "model: no bundled cfg named '²'",
         json=job(model="²")),
    Case("job-bad-device", "POST", JOBS, 422, "device must be auto, cpu, cuda or cuda:N",
         json=job(device="gpu")),
    # Comparisons: checked whole; nothing is created unless every arm passes.
    Case("comparison-one-arm", "POST", COMPARISONS, 422, "arms: List should have at least 2 items",
         json={"base": job(), "arms": [{"name": "baseline"}]}),
    Case("comparison-duplicate-arms", "POST", COMPARISONS, 422, "arm names must be unique",
         json=comparison({"name": "baseline"})),
    Case("comparison-unknown-reference", "POST", COMPARISONS, 422,
         "reference 'nope' is not an arm; arms are ['baseline', 'ae16']",
         json=comparison({"name": "ae16"}, reference="nope")),
    Case("comparison-arm-bad-train", "POST", COMPARISONS, 422,
         f"arms.1.train.learning_rat: {EXTRA}",
         json=comparison({"name": "ae16", "train": {"learning_rat": 0.1}})),
    Case("comparison-arm-missing-ae-layer", "POST", COMPARISONS, 422,
         "arms.1.ae.layers: AE layer index 99 is not a layer of this network: valid indices are "
         "0..23",
         json=comparison({"name": "ae99", "ae": {"layers": 99}})),
    Case("comparison-base-missing-ae-layer", "POST", COMPARISONS, 422,
         "base.ae.layers: AE layer index 99 is not a layer of this network: valid indices are "
         "0..23",
         json={"base": ae(layers=99),
               "arms": [{"name": "baseline"}, {"name": "ae20", "ae": {"layers": 20}}]}),
    Case("comparison-arm-over-compute-budget", "POST", COMPARISONS, 422,
         "arms.1.train: the network needs 6332 BFLOPs per image at 4096x4096",
         json={**comparison({"name": "big", "train": {"width": 4096, "height": 4096}}),
               "base": job(model="yolov3")}),
    # Unsafe or unreadable zips: refused before anything is extracted.
    Case("zip-path-traversal", "POST", DATASETS, 422, "zip member '../evil.txt' contains '..'",
         upload=with_member(zipfile.ZipInfo("../evil.txt"))),
    Case("zip-absolute-path", "POST", DATASETS, 422, "is an absolute path",
         upload=with_member(zipfile.ZipInfo("/tmp/evil.txt"))),
    Case("zip-backslashes", "POST", DATASETS, 422, "uses backslashes",
         upload=with_member(zipfile.ZipInfo("images\\..\\..\\evil.txt"))),
    Case("zip-symlink", "POST", DATASETS, 422,
         "zip member 'images/train/link.png' is a symbolic link; zip the files themselves",
         upload=with_member(symlink_member(), b"/etc/passwd")),
    Case("zip-device", "POST", DATASETS, 422, "is not a regular file or folder",
         upload=with_member(special("images/train/pipe", 0o010644))),  # S_IFIFO
    Case("zip-encrypted", "POST", DATASETS, 422, "is encrypted; zip the dataset without a password",
         upload=encrypted),
    Case("zip-duplicate-member", "POST", DATASETS, 422, "'classes.txt' appears twice in the zip",
         upload=duplicated),
    Case("zip-bomb-member", "POST", DATASETS, 422,
         "members compressed more than 100x are refused as a possible zip bomb",
         upload=lambda: zip_bytes({**coco_files(), "images/train/zeros.png": bytes(20 << 20)})),
    Case("zip-bomb-archive", "POST", DATASETS, 422,
         "archives compressed more than 100x are refused as a possible zip bomb",
         upload=lambda: zip_bytes({f"f{i}.txt": bytes(100_000) for i in range(30)})),
    Case("zip-too-many-members", "POST", DATASETS, 422,
         "the zip holds 5 entries, more than the limit of 3",
         upload=lambda: zip_bytes(coco_files()), limits={"max_dataset_files": 3}),
    Case("zip-too-many-bytes", "POST", DATASETS, 422,
         "more than the limit of 1000; upload a smaller dataset",
         upload=lambda: zip_bytes(coco_files()), limits={"max_dataset_bytes": 1000}),
    Case("zip-not-a-zip", "POST", DATASETS, 422, "the upload is not a readable zip archive",
         upload=lambda: b"GIF89a, not a zip" * 20),
    Case("zip-empty", "POST", DATASETS, 422, "the zip archive is empty",
         upload=lambda: zip_bytes({})),
    Case("upload-too-large", "POST", DATASETS, 413,
         "larger than the upload limit of 1000 bytes; upload a smaller zip",
         upload=lambda: zip_bytes(coco_files()), limits={"max_upload_bytes": 1000}),
    Case("upload-without-file", "POST", DATASETS, 422, "file: Field required",
         form={"name": "pets"}),
    # Datasets with errors: every file is read; the first error is in the detail.
    Case("image-truncated", "POST", DATASETS, 422,
         "images/train/001.png (image 2): not a readable image (Truncated File Read); replace or "
         "remove the file",
         upload=coco(lambda f: f.update({"images/train/001.png": png()[:60]}))),
    Case("image-not-an-image", "POST", DATASETS, 422,
         "images/train/001.png (image 2): not a readable image (cannot identify image file "
         "'001.png'); replace or remove the file",
         upload=coco(lambda f: f.update({"images/train/001.png": b"just some text"}))),
    Case("image-pixel-bomb", "POST", DATASETS, 422,
         "not a readable image (Image size (400000000 pixels) exceeds limit",
         upload=coco(lambda f: f.update({"images/train/001.png": png_claiming(20000, 20000)}))),
    Case("image-size-mismatch", "POST", DATASETS, 422,
         "declares 640x48 but images/train/000.png is 64x48; fix 'width' and 'height'",
         upload=coco_entry("images", width=640)),
    Case("coco-box-outside-image", "POST", DATASETS, 422,
         "crosses the right edge of image 1 (64x48); fix the box",
         upload=coco_entry("annotations", bbox=[40, 30, 30, 30])),
    Case("coco-box-without-area", "POST", DATASETS, 422,
         "has no area (width and height must be > 0)",
         upload=coco_entry("annotations", bbox=[4, 4, 0, 10])),
    Case("coco-undeclared-category", "POST", DATASETS, 422,
         "category_id 7 is not declared in 'categories'; declare it or fix the id",
         upload=coco_entry("annotations", category_id=7)),
    Case("yolo-box-outside-image", "POST", DATASETS, 422,
         "labels/train/001.txt:1: box crosses the bottom edge of the image",
         upload=yolo_label("0 0.5 0.9 0.2 0.4\n")),
    Case("yolo-class-out-of-range", "POST", DATASETS, 422,
         "labels/train/001.txt:2: class id 2 is out of range: the names file lists 2 classes "
         "(ids 0..1); fix the id or add names",
         upload=yolo_label("0 0.5 0.5 0.2 0.2\n2 0.5 0.5 0.2 0.2\n")),
    Case("yolo-short-label-line", "POST", DATASETS, 422,
         "expected 5 numbers 'class cx cy w h', got 4", upload=yolo_label("0 0.5 0.5 0.2\n")),
    Case("yolo-without-class-names", "POST", DATASETS, 422,
         "YOLO labels need class names: a classes.txt or one .names file",
         upload=without("classes")),
    Case("dataset-missing-split", "POST", DATASETS, 422,
         "no 'val' split: add annotations/instances_val.json", upload=without("/val/")),
    # Generated datasets.
    Case("generate-unknown-kind", "POST", GENERATE, 422,
         "kind: Input should be 'digits' or 'shapes'", json=generate(kind="faces")),
    Case("generate-too-many-pixels", "POST", GENERATE, 422,
         "402 images of 1024 px are too many pixels to render in a request (at most 312 at this "
         "size); ask for fewer or smaller images",
         json=generate(size=1024, train=400)),
    Case("generate-wrong-type", "POST", GENERATE, 422, "train: Input should be a valid integer",
         json=generate(train="many")),
    Case("generate-size-as-float", "POST", GENERATE, 422, "size: Input should be a valid integer",
         json=generate(size=64.0)),
]  # fmt: skip


# -- the test -----------------------------------------------------------------------------------


@pytest.fixture
def dataset_id(settings: Settings, auth: dict[str, str]) -> int:
    """A ready dataset of alice's, as a row only: jobs are refused before anything reads it."""
    return ready_dataset(settings, "alice", class_names=["cat", "dog"], num_train=2, num_val=1)


def _fill(value: Any, dataset_id: int) -> Any:
    if value == DATASET:
        return dataset_id
    if isinstance(value, dict):
        return {k: _fill(v, dataset_id) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, dataset_id) for v in value]
    return value


def _message(body: Any) -> str:
    """The detail as one line: a string as it is; FastAPI's list as ``field.path: msg; ...``."""
    detail = body["detail"]
    if isinstance(detail, str):
        return detail
    return "; ".join(
        ": ".join([".".join(str(part) for part in error["loc"][1:]), error["msg"]]).lstrip(": ")
        for error in detail
    )


def _state(client: TestClient, auth: dict[str, str], settings: Settings) -> Any:
    """What a request could leave behind: rows per list endpoint, files under the home folder
    (datasets, staging folders, broker messages)."""
    counts = {
        kind: client.get(f"/v1/{kind}", headers=auth).json()["count"]
        for kind in ("datasets", "models", "jobs", "comparisons")
    }
    files = sorted(str(p) for p in settings.home.rglob("*") if not p.is_dir())
    return counts, files


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_is_refused_and_leaves_nothing(
    client: TestClient,
    auth: dict[str, str],
    settings: Settings,
    dataset_id: int,
    case: Case,
) -> None:
    for name, value in case.limits.items():
        setattr(settings, name, value)  # the app's own settings object: read per request
    before = _state(client, auth, settings)
    kwargs: dict[str, Any] = {"headers": auth}
    if case.json is not None:
        kwargs["json"] = _fill(case.json, dataset_id)
    if case.upload is not None:
        kwargs["files"] = {"file": ("data.zip", case.upload(), "application/zip")}
    if case.form:
        kwargs["data"] = case.form
    response = client.request(case.method, case.path, **kwargs)

    assert response.status_code == case.status, response.text
    message = _message(response.json())
    assert case.message in message, message
    assert str(settings.home) not in response.text  # no server paths in messages
    assert _state(client, auth, settings) == before
    assert not Path("/tmp/evil.txt").exists()


def test_the_doc_lists_every_case() -> None:
    """docs/bad_input.md has one table row per case, by id, and no others."""
    rows = re.findall(r"^\|\s*`([a-z0-9-]+)`\s*\|", DOC.read_text(), flags=re.MULTILINE)
    assert len(rows) == len(set(rows)), "a case is listed twice in docs/bad_input.md"
    assert set(rows) == {case.id for case in CASES}


def test_case_ids_are_unique_kebab_case() -> None:
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids))
    assert all(re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", i) for i in ids)
    assert all(400 <= case.status < 500 for case in CASES)
