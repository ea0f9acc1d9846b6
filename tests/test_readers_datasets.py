"""Readers of public dataset layouts (YOLO, COCO, Pascal VOC, Visual Genome): real shared data, tiny layouts
built in tmp_path, and every malformed-input error."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

from _helpers_bad_input import raises_with, write
from conftest import real_data
from hst.data.readers import (
    VOC_CLASSES,
    read_coco,
    read_vg,
    read_voc,
    read_yolo,
)
from hst.data.spec import load_dataset

# ---------------------------------------------------------------- YOLO


def recount_yolo(root: Path, split: str) -> dict[str, set[int]]:
    """Classes per image straight from the label files, independent of the reader."""
    counts: dict[str, set[int]] = {}
    for image in (root / "images" / split).glob("*.jpg"):
        label_file = root / "labels" / split / f"{image.stem}.txt"
        lines = label_file.read_text().splitlines() if label_file.exists() else []
        counts[image.stem] = {int(line.split()[0]) for line in lines if line.strip()}
    return counts


@pytest.mark.parametrize("split", ["train2017", "val2017"])
def test_yolo_reads_coco128(split: str) -> None:
    data = read_yolo(real_data("coco128"), split)
    assert len(data) == 128
    assert data.num_classes == 80
    assert data.class_names[0] == "person"
    assert data.class_names[79] == "toothbrush"
    assert data.image_ids == sorted(data.image_ids)
    assert data.image_paths is not None and all(path.is_file() for path in data.image_paths)
    assert all(path.stem == image_id for path, image_id in zip(data.image_paths, data.image_ids, strict=True))
    assert set(np.unique(data.labels)) <= {-1, 1}

    expected = recount_yolo(real_data("coco128"), split)
    assert set(expected) == set(data.image_ids)
    for row, image_id in enumerate(data.image_ids):
        assert set(np.flatnonzero(data.labels[row] == 1)) == expected[image_id], image_id
    mean_positives = float((data.labels == 1).sum(axis=1).mean())
    assert mean_positives == pytest.approx(np.mean([len(v) for v in expected.values()]))
    assert 2.5 < mean_positives < 3.3  # the README says about 2.9


def test_yolo_coco128_images_without_labels_are_all_negative() -> None:
    data = read_yolo(real_data("coco128"), "train2017")
    unlabeled = [
        row
        for row, image_id in enumerate(data.image_ids)
        if not (real_data("coco128") / "labels" / "train2017" / f"{image_id}.txt").exists()
    ]
    assert unlabeled, "coco128 train2017 has images without a label file"
    assert (data.labels[unlabeled] == -1).all()
    assert data.info["unmatched_label_files"] == 2


def make_yolo(root: Path, names: str = "names:\n  0: cat\n  1: dog\n  2: bird\n") -> Path:
    write(root / "classes.yaml", names)
    images = root / "images" / "train"
    images.mkdir(parents=True)
    for name in ["b.jpg", "a.png", "c.jpg", "d.JPG", "notes.txt"]:
        (images / name).write_bytes(b"")
    labels = root / "labels" / "train"
    write(labels / "a.txt", "2 0.5 0.5 0.1 0.1\n\n0 0.2 0.2 0.1 0.1\n2 0.4 0.4 0.2 0.2")
    write(labels / "b.txt", "")
    # A segmentation polygon line: class then x/y pairs.
    write(labels / "d.txt", "1 0.1 0.1 0.2 0.1 0.2 0.2\n")
    return root


def test_yolo_tiny_tree(tmp_path: Path) -> None:
    data = read_yolo(make_yolo(tmp_path), "train")
    assert data.image_ids == ["a", "b", "c", "d"]
    assert data.class_names == ["cat", "dog", "bird"]
    np.testing.assert_array_equal(data.labels, [[1, -1, 1], [-1, -1, -1], [-1, -1, -1], [-1, 1, -1]])
    assert data.image_paths is not None and data.image_paths[0].name == "a.png"


def test_yolo_names_as_list(tmp_path: Path) -> None:
    data = read_yolo(make_yolo(tmp_path, "names: [cat, dog, bird]\n"), "train")
    assert data.class_names == ["cat", "dog", "bird"]


def test_yolo_class_id_out_of_range(tmp_path: Path) -> None:
    root = make_yolo(tmp_path)
    write(root / "labels" / "train" / "c.txt", "0 0.5 0.5 0.1 0.1\n3 0.5 0.5 0.1 0.1\n")
    raises_with(lambda: read_yolo(root, "train"), "c.txt", "line 2", "class id 3", "0..2")


@pytest.mark.parametrize("line", ["0 0.5 0.5 0.1", "x 0.5 0.5 0.1 0.1", "1 0.5 0.5 0.1 abc", "1 0.5 0.5 0.1 0.1 0.9"])
def test_yolo_malformed_line(tmp_path: Path, line: str) -> None:
    root = make_yolo(tmp_path)
    write(root / "labels" / "train" / "c.txt", f"0 0.5 0.5 0.1 0.1\n\n{line}\n")
    raises_with(lambda: read_yolo(root, "train"), "c.txt", "line 3", "malformed")


def test_yolo_missing_classes_yaml(tmp_path: Path) -> None:
    root = make_yolo(tmp_path)
    (root / "classes.yaml").unlink()
    raises_with(lambda: read_yolo(root, "train"), "classes.yaml", "not found")


def test_yolo_missing_images_dir(tmp_path: Path) -> None:
    root = make_yolo(tmp_path)
    raises_with(lambda: read_yolo(root, "val"), str(Path("images") / "val"), "not found")


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("names:\n  0: cat\n  2: bird\n", ["classes.yaml", "without gaps"]),
        ("nc: 2\n", ["classes.yaml", "'names'"]),
        ("names: [cat, dog\n", ["classes.yaml", "line 2", "invalid YAML"]),
        ("names: [cat, cat]\n", ["classes.yaml", "'cat'", "twice"]),
        ("nc: 3\nnames: [cat, dog]\n", ["classes.yaml", "'nc'"]),
    ],
)
def test_yolo_bad_classes_yaml(tmp_path: Path, text: str, fragments: list[str]) -> None:
    root = make_yolo(tmp_path, text)
    raises_with(lambda: read_yolo(root, "train"), *fragments)


def test_yolo_two_images_one_stem(tmp_path: Path) -> None:
    root = make_yolo(tmp_path)
    (root / "images" / "train" / "a.jpg").write_bytes(b"")
    raises_with(lambda: read_yolo(root, "train"), "'a.jpg'", "'a.png'", "a.txt")


# ---------------------------------------------------------------- COCO

COCO_DOC = {
    "images": [
        {"id": 30, "file_name": "000030.jpg", "width": 10, "height": 10},
        {"id": 100, "file_name": "000100.jpg"},
        {"id": 4, "file_name": "000004.jpg"},
        {"id": 7, "file_name": "000007.jpg"},
    ],
    # Non-contiguous, unsorted ids like COCO's 1..90 with gaps.
    "categories": [
        {"id": 90, "name": "toothbrush", "supercategory": "indoor"},
        {"id": 1, "name": "person"},
        {"id": 18, "name": "dog"},
        {"id": 3, "name": "car"},
    ],
    "annotations": [
        {"id": 501, "image_id": 30, "category_id": 18, "bbox": [0, 0, 1, 1]},
        {"id": 502, "image_id": 30, "category_id": 18},
        {"id": 503, "image_id": 30, "category_id": 1},
        {"id": 504, "image_id": 100, "category_id": 90},
        {"id": 505, "image_id": 4, "category_id": 3, "iscrowd": 1},
    ],
}


def coco_file(tmp_path: Path, doc: object = COCO_DOC, text: str | None = None) -> Path:
    return write(tmp_path / "instances.json", json.dumps(doc, indent=1) if text is None else text)


def test_coco_category_order_and_drop_empty(tmp_path: Path) -> None:
    data = read_coco(tmp_path / "img", coco_file(tmp_path))
    assert data.class_names == ["person", "car", "dog", "toothbrush"]
    assert data.info["category_ids"] == [1, 3, 18, 90]
    # Sorted by integer id: 100 comes after 30 (a string sort would put it first).
    assert data.image_ids == ["4", "30", "100"]
    np.testing.assert_array_equal(data.labels, [[-1, 1, -1, -1], [1, -1, 1, -1], [-1, -1, -1, 1]])
    assert data.image_paths == [tmp_path / "img" / f"{i:06d}.jpg" for i in (4, 30, 100)]
    assert data.info["images_without_annotations"] == 1


def test_coco_keep_empty(tmp_path: Path) -> None:
    data = read_coco(tmp_path / "img", coco_file(tmp_path), keep_empty=True)
    assert data.image_ids == ["4", "7", "30", "100"]
    assert (data.labels[1] == -1).all()
    assert (data.labels == 1).sum() == 4


def test_coco_through_data_spec(tmp_path: Path) -> None:
    path = coco_file(tmp_path)
    assert len(load_dataset(f"coco:{tmp_path}:{path}")) == 3
    assert len(load_dataset(f"coco:{tmp_path}:{path}?keep_empty=true")) == 4


def test_coco_missing_file(tmp_path: Path) -> None:
    raises_with(lambda: read_coco(tmp_path, tmp_path / "nope.json"), "nope.json", "not found")


def test_coco_invalid_json(tmp_path: Path) -> None:
    path = coco_file(tmp_path, text='{\n  "images": [],\n  "annotations": [,]\n}\n')
    raises_with(lambda: read_coco(tmp_path, path), "instances.json", "line 3", "column 19", "invalid JSON")


def test_coco_unknown_category(tmp_path: Path) -> None:
    doc = json.loads(json.dumps(COCO_DOC))
    doc["annotations"].append({"id": 777, "image_id": 7, "category_id": 2})
    raises_with(lambda: read_coco(tmp_path, coco_file(tmp_path, doc)), "instances.json", "id 777", "category_id 2")


def test_coco_unknown_image(tmp_path: Path) -> None:
    doc = json.loads(json.dumps(COCO_DOC))
    doc["annotations"].insert(0, {"id": 778, "image_id": 5, "category_id": 1})
    raises_with(lambda: read_coco(tmp_path, coco_file(tmp_path, doc)), "instances.json", "id 778", "image_id 5")


@pytest.mark.parametrize(
    ("mutate", "fragments"),
    [
        (lambda d: d.pop("categories"), ["'categories'"]),
        (lambda d: d["images"][1].pop("file_name"), ["images[1]", "'file_name'"]),
        (lambda d: d["categories"][2].pop("name"), ["categories[2]", "'name'"]),
        (lambda d: d["annotations"][3].pop("category_id"), ["annotations[3]", "id 504", "'category_id'"]),
        (lambda d: d["images"].append({"id": 4, "file_name": "x.jpg"}), ["images[4]", "duplicate image id 4"]),
        (lambda d: d["images"][0].update(id="30"), ["images[0]", "'id' must be an integer"]),
    ],
)
def test_coco_missing_keys(tmp_path: Path, mutate: Callable[[dict], object], fragments: list[str]) -> None:
    doc = json.loads(json.dumps(COCO_DOC))
    mutate(doc)
    raises_with(lambda: read_coco(tmp_path, coco_file(tmp_path, doc)), "instances.json", *fragments)


# ---------------------------------------------------------------- VOC


def voc_xml(objects: list[tuple[str, int | None]]) -> str:
    parts = ["<annotation>", "  <folder>VOC2007</folder>"]
    for name, difficult in objects:
        flag = "" if difficult is None else f"<difficult>{difficult}</difficult>"
        parts.append(f"  <object><name>{name}</name><pose>Left</pose>{flag}<bndbox><xmin>1</xmin></bndbox></object>")
    parts.append("</annotation>")
    return "\n".join(parts) + "\n"


def make_voc(root: Path, split_text: str = "000005\n000001\n\n000003") -> Path:
    write(root / "ImageSets" / "Main" / "train.txt", split_text)
    annotations = root / "Annotations"
    # person easy, dog only difficult; cat both easy and difficult; bottle only difficult (twice).
    write(annotations / "000005.xml", voc_xml([("person", 0), ("dog", 1)]))
    write(annotations / "000001.xml", voc_xml([("cat", 1), ("cat", None), ("person", 0)]))
    write(annotations / "000003.xml", voc_xml([("bottle", 1), ("bottle", 1)]))
    return root


def voc_row(positive: Sequence[str] = (), unknown: Sequence[str] = ()) -> list[int]:
    row = [-1] * 20
    for name in positive:
        row[VOC_CLASSES.index(name)] = 1
    for name in unknown:
        row[VOC_CLASSES.index(name)] = 0
    return row


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        (
            "unknown",
            [voc_row(["person"], ["dog"]), voc_row(["cat", "person"]), voc_row([], ["bottle"])],
        ),
        ("negative", [voc_row(["person"]), voc_row(["cat", "person"]), voc_row()]),
        ("positive", [voc_row(["person", "dog"]), voc_row(["cat", "person"]), voc_row(["bottle"])]),
    ],
)
def test_voc_difficult_modes(tmp_path: Path, mode: str, expected: list[list[int]]) -> None:
    data = read_voc(make_voc(tmp_path), "train", difficult=mode)
    assert data.image_ids == ["000005", "000001", "000003"]  # split-file order, last line without newline
    assert data.class_names == list(VOC_CLASSES)
    assert len(VOC_CLASSES) == 20 and VOC_CLASSES[10] == "diningtable"
    np.testing.assert_array_equal(data.labels, expected)
    assert data.image_paths == [tmp_path / "JPEGImages" / f"{i}.jpg" for i in data.image_ids]


def test_voc_default_is_unknown_and_spec_option(tmp_path: Path) -> None:
    root = make_voc(tmp_path)
    assert read_voc(root, "train").labels[2, VOC_CLASSES.index("bottle")] == 0
    data = load_dataset(f"voc:{root}:train?difficult=negative")
    assert data.labels[2, VOC_CLASSES.index("bottle")] == -1


def test_voc_missing_split_file(tmp_path: Path) -> None:
    raises_with(lambda: read_voc(make_voc(tmp_path), "val"), "val.txt", "not found")


def test_voc_missing_xml(tmp_path: Path) -> None:
    root = make_voc(tmp_path, "000005\n000009\n")
    raises_with(lambda: read_voc(root, "train"), "000009.xml", "not found", "line 2", "train.txt")


def test_voc_unknown_class_name(tmp_path: Path) -> None:
    root = make_voc(tmp_path)
    write(root / "Annotations" / "000001.xml", voc_xml([("cat", 0), ("unicorn", 0)]))
    raises_with(lambda: read_voc(root, "train"), "000001.xml", "'unicorn'", "object 2")


def test_voc_malformed_xml(tmp_path: Path) -> None:
    root = make_voc(tmp_path)
    write(root / "Annotations" / "000003.xml", "<annotation>\n  <object>\n    <name>cat</nam>\n</annotation>\n")
    raises_with(lambda: read_voc(root, "train"), "000003.xml", "line 3", "malformed XML")


def test_voc_bad_option_and_duplicate_id(tmp_path: Path) -> None:
    root = make_voc(tmp_path)
    raises_with(lambda: read_voc(root, "train", difficult="ignore"), "difficult")
    write(root / "ImageSets" / "Main" / "dup.txt", "000005\n000001\n000005\n")
    raises_with(lambda: read_voc(root, "dup"), "dup.txt", "line 3", "line 1")


# ---------------------------------------------------------------- VG


def make_vg(root: Path, mapping: dict[str, list[int]] | None = None) -> tuple[Path, Path, Path]:
    list_file = write(root / "test_list.txt", "2.jpg\n10.jpg\n\n1.jpg")
    mapping = {"1.jpg": [0, 199], "2.jpg": [], "10.jpg": [5, 5, 17], "99.jpg": [3]} if mapping is None else mapping
    labels_json = write(root / "vg_category_200_labels_index.json", json.dumps(mapping))
    return root / "VG_100K", list_file, labels_json


def test_vg_layout(tmp_path: Path) -> None:
    images, list_file, labels_json = make_vg(tmp_path)
    data = read_vg(images, list_file, labels_json)
    assert data.image_ids == ["2", "10", "1"]
    assert data.num_classes == 200
    assert data.class_names[0] == "class_000" and data.class_names[199] == "class_199"
    assert data.image_paths == [images / "2.jpg", images / "10.jpg", images / "1.jpg"]
    assert (data.labels[0] == -1).all()
    assert sorted(np.flatnonzero(data.labels[1] == 1)) == [5, 17]
    assert sorted(np.flatnonzero(data.labels[2] == 1)) == [0, 199]
    assert (data.labels == 1).sum() == 4 and (data.labels == 0).sum() == 0


def test_vg_classes_file(tmp_path: Path) -> None:
    mapping = {"1.jpg": [0], "2.jpg": [2], "10.jpg": []}
    images, list_file, labels_json = make_vg(tmp_path, mapping)
    text_names = write(tmp_path / "classes.txt", "man\nwindow\n\ntree\n")
    data = read_vg(images, list_file, labels_json, text_names)
    assert data.class_names == ["man", "window", "tree"]
    json_names = write(tmp_path / "classes.json", json.dumps(["man", "window", "tree", "sky"]))
    assert read_vg(images, list_file, labels_json, json_names).num_classes == 4
    spec = f"vg:{images}:{list_file}:{labels_json}?classes={text_names}"
    assert load_dataset(spec).class_names == ["man", "window", "tree"]


def test_vg_index_out_of_range(tmp_path: Path) -> None:
    images, list_file, labels_json = make_vg(tmp_path, {"1.jpg": [0], "2.jpg": [200], "10.jpg": []})
    raises_with(lambda: read_vg(images, list_file, labels_json), labels_json.name, "'2.jpg'", "200", "0..199")
    classes = write(tmp_path / "classes.txt", "a\nb\n")
    images, list_file, labels_json = make_vg(tmp_path, {"1.jpg": [2], "2.jpg": [], "10.jpg": []})
    raises_with(lambda: read_vg(images, list_file, labels_json, classes), "'1.jpg'", "0..1")


def test_vg_image_missing_from_json(tmp_path: Path) -> None:
    images, list_file, labels_json = make_vg(tmp_path, {"1.jpg": [0], "2.jpg": [1]})
    raises_with(lambda: read_vg(images, list_file, labels_json), "test_list.txt", "line 2", "'10.jpg'")


def test_vg_bad_inputs(tmp_path: Path) -> None:
    images, list_file, labels_json = make_vg(tmp_path, {"1.jpg": "0", "2.jpg": [], "10.jpg": []})
    raises_with(lambda: read_vg(images, list_file, labels_json), labels_json.name, "'1.jpg'", "list")
    write(list_file, "1.jpg\n2.jpg\n1.jpg\n")
    raises_with(lambda: read_vg(images, list_file, labels_json), "test_list.txt", "line 3", "line 1")
