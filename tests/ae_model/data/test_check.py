"""Dataset validation on real files: valid layouts, and problems named by file, line and id."""

import json
import os
from pathlib import Path
from typing import Any

import pytest

from ae_model.data.check import (
    MAX_CLASS_NAME_CHARS,
    MAX_LISTED_PROBLEMS,
    MAX_PROBLEM_CHARS,
    check_dataset,
)
from ae_model.data.datasets import open_dataset
from ae_model.data.synthetic import generate_dataset
from tests.ae_model.data.dataset_files import Files, coco_files, png, write_files, yolo_files


def check(tmp_path: Path, files: Files) -> dict[str, Any]:
    return check_dataset(write_files(tmp_path / "ds", files)).as_dict()


def messages(report: dict[str, Any], kind: str = "errors") -> str:
    return "\n".join(f"{p['file']}:{p.get('line', '')}: {p['message']}" for p in report[kind])


# -- valid datasets ---------------------------------------------------------------------------


def test_generated_dataset_passes_with_counts(tmp_path: Path) -> None:
    info = generate_dataset("shapes", tmp_path, train=3, val=2, size=96, min_scale=0.1)
    report = check_dataset(tmp_path)
    assert report.ok and not report.warnings, report.as_dict()
    assert report.class_names == list(info.class_names)
    counts = report.as_dict()["counts"]
    assert counts["train"] == {
        "layout": "coco",
        "images": 3,
        "objects": info.splits["train"].num_objects,
    }
    assert counts["val"]["images"] == 2


def test_valid_coco_and_yolo(tmp_path: Path) -> None:
    coco = check(tmp_path / "coco", coco_files(train=3))
    assert not coco["errors"] and not coco["warnings"]
    assert coco["counts"]["train"] == {"layout": "coco", "images": 3, "objects": 3}
    yolo = check_dataset(write_files(tmp_path / "yolo", yolo_files(train=3)))
    assert yolo.ok and not yolo.warnings, yolo.as_dict()
    assert yolo.class_names == ["cat", "dog"]
    assert yolo.as_dict()["counts"]["val"] == {"layout": "yolo", "images": 1, "objects": 1}


def test_darknet_list_layout(tmp_path: Path) -> None:
    files = yolo_files()
    files["train.txt"] = "images/train/000.png\nimages/train/001.png\n"
    report = check(tmp_path, files)
    assert not report["errors"]
    assert report["counts"]["train"] == {"layout": "darknet_list", "images": 2, "objects": 2}


def test_the_loader_reads_what_the_check_accepts(tmp_path: Path) -> None:
    for layout, files in (("coco", coco_files()), ("yolo", yolo_files())):
        root = write_files(tmp_path / layout, files)
        report = check_dataset(root)
        assert report.ok
        for split in ("train", "val"):
            dataset = open_dataset(root, split)
            assert len(dataset) == report.splits[split].images
            assert sum(len(dataset[i].boxes) for i in range(len(dataset))) == (
                report.splits[split].objects
            )
            assert list(dataset.class_names) == report.class_names


# -- errors -------------------------------------------------------------------------------------


def test_coco_problems_name_file_and_id(tmp_path: Path) -> None:
    files = coco_files(train=5)
    train = files["annotations/instances_train.json"]
    train["annotations"][0]["bbox"] = [50, 4, 30, 16]  # right edge 80 > 64
    train["annotations"][1]["category_id"] = 9
    train["annotations"][2]["image_id"] = 99
    train["annotations"][3]["bbox"] = [4, 4, 0, 10]
    train["images"][4]["width"] = 640
    report = check(tmp_path, files)
    text = messages(report)
    assert "crosses the right edge" in text
    assert "category_id 9 is not declared" in text
    assert "image_id 99" in text
    assert "has no area" in text
    assert "declares 640x48 but images/train/004.png is 64x48" in text
    by_annotation = {p.get("annotation_id"): p for p in report["errors"]}
    assert by_annotation[1]["file"] == "annotations/instances_train.json"
    assert set(by_annotation) >= {1, 2, 3}


def test_coco_file_name_must_stay_inside_the_image_folder(tmp_path: Path) -> None:
    files = coco_files()
    files["annotations/instances_train.json"]["images"][0]["file_name"] = "../../secret.png"
    files["secret.png"] = png()
    report = check(tmp_path, files)
    assert "must be a path relative to images/train/" in messages(report)


def test_missing_image_and_unreadable_image(tmp_path: Path) -> None:
    files = coco_files()
    del files["images/train/001.png"]
    files["images/val/000.png"] = b"this is not a picture"
    report = check(tmp_path, files)
    text = messages(report)
    assert "images/train/001.png does not exist" in text
    problem = next(p for p in report["errors"] if p["file"] == "images/val/000.png")
    assert "not a readable image" in problem["message"]


def test_truncated_image_is_an_error(tmp_path: Path) -> None:
    files = coco_files()
    files["images/train/000.png"] = png()[:-20]
    report = check(tmp_path, files)
    assert any(p["file"] == "images/train/000.png" for p in report["errors"]), report


def test_val_annotations_need_area_and_iscrowd_for_evaluation(tmp_path: Path) -> None:
    files = coco_files()
    del files["annotations/instances_train.json"]["annotations"][0]["area"]
    del files["annotations/instances_val.json"]["annotations"][0]["iscrowd"]
    report = check(tmp_path, files)
    assert [p["file"] for p in report["errors"]] == ["annotations/instances_val.json"]
    assert [p["file"] for p in report["warnings"]] == ["annotations/instances_train.json"]
    assert "'area' or 'iscrowd'" in report["errors"][0]["message"]


def test_yolo_problems_name_file_and_line(tmp_path: Path) -> None:
    files = yolo_files()
    files["labels/train/000.txt"] = (
        "0 0.5 0.5 0.2 0.2\n"
        "5 0.5 0.5 0.2 0.2\n"  # class out of range
        "1 0.95 0.5 0.2 0.2\n"  # right edge 1.05
        "1 0.5 0.5 0 0.2\n"  # no width
        "1 0.5 0.5 0.2\n"  # 4 numbers
        "a b c d e\n"
        "1.5 0.5 0.5 0.2 0.2\n"
    )
    report = check(tmp_path, files)
    lines = {p["line"]: p["message"] for p in report["errors"]}
    assert set(lines) == {2, 3, 4, 5, 6, 7}
    assert "class id 5 is out of range" in lines[2] and "2 classes" in lines[2]
    assert "right edge" in lines[3]
    assert "must be > 0" in lines[4]
    assert "got 4" in lines[5]
    assert "expected numbers" in lines[6]
    assert "integer" in lines[7]
    assert all(p["file"] == "labels/train/000.txt" for p in report["errors"])
    assert report["counts"]["train"]["objects"] == 1 + 1  # line 1 and image 001


def test_small_overhang_is_tolerated(tmp_path: Path) -> None:
    files = yolo_files()
    files["labels/train/000.txt"] = "0 0.5 0.5 1.005 1.005\n"
    assert not check(tmp_path, files)["errors"]


def test_yolo_needs_class_names(tmp_path: Path) -> None:
    files = yolo_files()
    del files["classes.txt"]
    assert "classes.txt or one .names file" in messages(check(tmp_path / "a", files))
    files["a.names"] = "x\n"
    files["b.names"] = "y\n"
    assert "keep exactly one" in messages(check(tmp_path / "b", files))


def test_missing_split(tmp_path: Path) -> None:
    files = {k: v for k, v in coco_files().items() if "val" not in k}
    report = check(tmp_path, files)
    assert "no 'val' split" in messages(report)
    assert "annotations/instances_val.json" in messages(report)


def test_splits_must_agree_on_classes(tmp_path: Path) -> None:
    files = coco_files()
    files["annotations/instances_val.json"]["categories"].append({"id": 3, "name": "owl"})
    assert "same classes" in messages(check(tmp_path, files))


def test_warnings_for_unused_files(tmp_path: Path) -> None:
    files = coco_files()
    files["images/train/extra.png"] = png()
    yolo = yolo_files()
    yolo["labels/train/orphan.txt"] = "0 0.5 0.5 0.1 0.1\n"
    coco_report, yolo_report = check(tmp_path / "c", files), check(tmp_path / "y", yolo)
    assert not coco_report["errors"] and not yolo_report["errors"]
    assert "not listed in instances_train.json" in messages(coco_report, "warnings")
    assert "match no image" in messages(yolo_report, "warnings")


def test_splits_without_objects_are_warned_about(tmp_path: Path) -> None:
    files = yolo_files()
    files["labels/val/000.txt"] = "\n"
    no_labels = {k: v for k, v in yolo_files().items() if not k.startswith("labels/val")}
    empty, missing = check(tmp_path / "e", files), check(tmp_path / "m", no_labels)
    assert not empty["errors"] and not missing["errors"]
    assert "'val' split has no objects" in messages(empty, "warnings")
    assert "expected e.g. labels/val/000.txt" in messages(missing, "warnings")


def test_many_problems_are_counted_not_listed(tmp_path: Path) -> None:
    files = yolo_files()
    files["labels/train/000.txt"] = "7 0.5 0.5 0.1 0.1\n" * (MAX_LISTED_PROBLEMS + 30)
    report = check(tmp_path, files)
    assert len(report["errors"]) == MAX_LISTED_PROBLEMS
    assert report["omitted_errors"] == 30


# -- text a report and the class names can store ---------------------------------------------


def test_class_names_must_be_one_line_of_text(tmp_path: Path) -> None:
    files = coco_files()
    # json.loads turns the escape "\ud800" into a lone surrogate, "\u0000" into a NUL.
    files["annotations/instances_train.json"]["categories"] = [
        {"id": 1, "name": "cat\ud800"},
        {"id": 2, "name": "d\x00g"},
        {"id": 3, "name": "o" * (MAX_CLASS_NAME_CHARS + 1)},
        {"id": 4, "name": "tab\there"},
    ]
    report = check_dataset(write_files(tmp_path / "coco", files))
    text = messages(report.as_dict())
    assert "categories[0] name 'cat\\ud800' contains the character '\\ud800'" in text
    assert "categories[1] name 'd\\x00g' contains the character '\\x00'" in text
    assert f"is {MAX_CLASS_NAME_CHARS + 1} characters long, over the limit of" in text
    assert "categories[3] name 'tab\\there' contains the character '\\t'" in text
    json.dumps(report.as_dict(), ensure_ascii=False).encode()  # raises on a lone surrogate
    yolo = yolo_files()
    yolo["classes.txt"] = "cat\n\n" + "d" * (MAX_CLASS_NAME_CHARS + 1) + "\n"
    problems = check(tmp_path / "yolo", yolo)["errors"]
    assert [(p["file"], p["line"]) for p in problems] == [("classes.txt", 3)]  # once, not per split
    assert "characters long" in problems[0]["message"]


def test_the_number_of_classes_can_be_bounded(tmp_path: Path) -> None:
    coco = check_dataset(write_files(tmp_path / "coco", coco_files()), max_classes=1)
    assert [p.file for p in coco.errors] == [
        "annotations/instances_train.json",
        "annotations/instances_val.json",
    ]
    assert "declares 2 classes, more than this server's limit of 1" in coco.errors[0].message
    yolo = check_dataset(write_files(tmp_path / "yolo", yolo_files()), max_classes=1)
    assert [str(p) for p in yolo.errors] == [
        "classes.txt: declares 2 classes, more than this server's limit of 1; merge or drop classes"
    ]
    assert check_dataset(tmp_path / "coco", max_classes=2).ok


@pytest.mark.parametrize(
    ("file_name", "expected"),
    [
        ("a\ud800.png", "contains the character '\\ud800'"),
        ("a" * 300 + ".png", "has a name of 304 bytes, over the 255"),
        ("/".join(["d"] * 40) + "/a.png", "is 41 folders deep"),
    ],
    ids=["surrogate", "too-long", "too-deep"],
)
def test_coco_file_names_must_be_paths_a_file_system_holds(
    tmp_path: Path, file_name: str, expected: str
) -> None:
    files = coco_files()
    files["annotations/instances_train.json"]["images"][0]["file_name"] = file_name
    problems = check(tmp_path, files)["errors"]
    assert problems[0]["image_id"] == 1
    assert expected in problems[0]["message"] and problems[0]["message"].startswith("file_name ")
    assert len(problems[0]["message"]) < 300


def test_a_darknet_list_entry_too_long_for_the_file_system(tmp_path: Path) -> None:
    files = yolo_files()
    files["train.txt"] = "images/train/000.png\n" + "x" * 5000 + ".png\n"
    report = check(tmp_path, files)
    assert [(p["file"], p["line"]) for p in report["errors"]] == [("train.txt", 2)]
    assert "has a name of 5004 bytes" in report["errors"][0]["message"]


def test_integers_json_or_float_cannot_hold_are_errors(tmp_path: Path) -> None:
    files = coco_files()
    files["annotations/instances_train.json"] = '{"images": [' + "1" * 5000 + "]}"
    assert "is not valid JSON" in messages(check(tmp_path / "a", files))
    files = coco_files()
    files["annotations/instances_train.json"]["annotations"][0]["bbox"] = [10**400, 4, 20, 16]
    assert "'bbox' must be 4 finite numbers" in messages(check(tmp_path / "b", files))


def test_a_report_holds_only_storable_text(tmp_path: Path) -> None:
    # A file name that is not UTF-8 (possible on disk, not through a zip) and an image id of
    # 4000 digits both end up in problems; both are stored as JSON text.
    files = coco_files()
    files["annotations/instances_train.json"]["annotations"][0]["image_id"] = int("9" * 4000)
    root = write_files(tmp_path, files)
    (root / "images" / "train").joinpath(os.fsdecode(b"\xff.png")).write_bytes(png())
    report = check_dataset(root).as_dict()
    stored = json.dumps(report, ensure_ascii=False).encode()  # raises on a lone surrogate
    assert b"\\\\udcff.png" in stored
    long_message = next(p["message"] for p in report["errors"] if "image_id" in p["message"])
    assert len(long_message) == MAX_PROBLEM_CHARS and long_message.endswith("…")


def test_splits_that_disagree_name_the_first_difference(tmp_path: Path) -> None:
    files = coco_files()
    files["annotations/instances_val.json"]["categories"][1]["name"] = "owl"
    assert "(class 1 is 'owl', not 'dog')" in messages(check(tmp_path / "a", files))
    files["annotations/instances_val.json"]["categories"].append({"id": 3, "name": "eel"})
    files["annotations/instances_val.json"]["categories"][1]["name"] = "dog"
    assert "(3 classes, not 2)" in messages(check(tmp_path / "b", files))
