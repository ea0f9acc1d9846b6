"""Dataset readers: real shared data, tiny layouts built in tmp_path, and every malformed-input error."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

from hst.data.base import DataError, MultiLabelData
from hst.data.readers import (
    VOC_CLASSES,
    read_coco,
    read_csv_manifest,
    read_jsonl_manifest,
    read_vg,
    read_voc,
    read_yolo,
    write_csv_manifest,
)
from hst.data.spec import load_dataset

try:
    from conftest import real_data
except ImportError:  # tests collected as a package
    from tests.conftest import real_data


def raises_with(call: Callable[[], object], *fragments: str) -> str:
    """Run ``call``; it must raise DataError whose message contains every fragment."""
    with pytest.raises(DataError) as info:
        call()
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


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


# ---------------------------------------------------------------- CSV manifest


def test_csv_reads_voc2007_train() -> None:
    data = read_csv_manifest(real_data("voc2007-train", "labels.csv"))
    assert len(data) == 2500
    assert data.class_names == list(VOC_CLASSES)  # also proves CRLF line ends were handled
    assert (data.labels == 0).any(), "empty cells (difficult-only classes) are unknown"
    assert ((data.labels == 1).sum(axis=1) + (data.labels == 0).sum(axis=1) >= 1).all()
    assert data.image_ids[0] == "JPEGImages/000012.jpg"
    assert data.image_paths is not None and all(path.is_file() for path in data.image_paths)
    assert data.labels[0, VOC_CLASSES.index("car")] == 1
    assert len(load_dataset(f"csv:{real_data('voc2007-train', 'labels.csv')}")) == 2500


def test_csv_values_and_paths(tmp_path: Path) -> None:
    absolute = tmp_path / "elsewhere" / "z.jpg"
    path = write(
        tmp_path / "m" / "labels.csv",
        f" image , cat,dog , bird\nimg/a.jpg,1, -1 ,\n\n{absolute},0,,-1\n",
    )
    data = read_csv_manifest(path)
    assert data.class_names == ["cat", "dog", "bird"]
    assert data.image_ids == ["img/a.jpg", str(absolute)]
    np.testing.assert_array_equal(data.labels, [[1, -1, 0], [0, 0, -1]])
    assert data.image_paths == [tmp_path / "m" / "img" / "a.jpg", absolute]


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("image,cat,dog\na.jpg,1,-1\nb.jpg,1\n", ["line 3", "2 columns", "expected 3"]),
        ("image,cat,dog\na.jpg,1,-1\nb.jpg,1,1.0\n", ["line 3", "'dog'", "'1.0'"]),
        ("image,cat,dog\na.jpg,yes,-1\n", ["line 2", "'cat'", "'yes'"]),
        ("file,cat,dog\na.jpg,1,-1\n", ["line 1", "'image'"]),
        ("image,cat,dog,cat\na.jpg,1,-1,1\n", ["line 1", "duplicate class name 'cat'"]),
        ("image,cat\na.jpg,1\nb.jpg,-1\na.jpg,0\n", ["line 4", "line 2", "'a.jpg'"]),
        ("", ["empty"]),
        ("  \n\n", ["empty"]),
        ("image\na.jpg\n", ["line 1", "no class"]),
    ],
)
def test_csv_errors(tmp_path: Path, text: str, fragments: list[str]) -> None:
    path = write(tmp_path / "bad.csv", text)
    raises_with(lambda: read_csv_manifest(path), "bad.csv", *fragments)


def test_csv_missing_file(tmp_path: Path) -> None:
    raises_with(lambda: read_csv_manifest(tmp_path / "none.csv"), "none.csv", "not found")


# ---------------------------------------------------------------- JSON lines manifest


def test_jsonl_declared_classes(tmp_path: Path) -> None:
    lines = [
        {"classes": ["dog", "cat", "bird"]},
        {"image": "a.jpg", "positive": ["cat"], "negative": ["dog"]},
        {},
        {"image": "sub/b.jpg", "negative": ["bird", "cat"]},
        {"image": "c.jpg"},
    ]
    text = "\n".join("" if not line else json.dumps(line) for line in lines) + "\n\n"
    data = read_jsonl_manifest(write(tmp_path / "m.jsonl", text))
    assert data.class_names == ["dog", "cat", "bird"]
    assert data.image_ids == ["a.jpg", "sub/b.jpg", "c.jpg"]
    np.testing.assert_array_equal(data.labels, [[-1, 1, 0], [0, -1, -1], [0, 0, 0]])
    assert data.image_paths == [tmp_path / "a.jpg", tmp_path / "sub" / "b.jpg", tmp_path / "c.jpg"]


def test_jsonl_undeclared_and_given_classes(tmp_path: Path) -> None:
    lines = [{"image": "a.jpg", "positive": ["zebra"]}, {"image": "b.jpg", "negative": ["ant", "zebra"]}]
    path = write(tmp_path / "m.jsonl", "\n".join(json.dumps(line) for line in lines))
    data = read_jsonl_manifest(path)
    assert data.class_names == ["ant", "zebra"]
    np.testing.assert_array_equal(data.labels, [[0, 1], [-1, -1]])
    given = read_jsonl_manifest(path, class_names=["zebra", "cow", "ant"])
    np.testing.assert_array_equal(given.labels, [[1, 0, 0], [-1, 0, -1]])
    raises_with(lambda: read_jsonl_manifest(path, class_names=["zebra"]), "m.jsonl", "line 2", "'ant'")
    assert len(load_dataset(f"jsonl:{path}")) == 2


@pytest.mark.parametrize(
    ("lines", "fragments"),
    [
        (['{"classes": ["a", "b"]}', '{"image": "x.jpg", "positive": ["a"]', ""], ["line 2", "invalid JSON"]),
        (['{"classes": ["a", "b"]}', '{"positive": ["a"]}'], ["line 2", '"image"']),
        (['{"image": "x.jpg"}', "", '{"image": "y.jpg", "positive": ["a"], "negative": ["a"]}'], ["line 3", "'a'"]),
        (['{"classes": ["a", "b"]}', '{"image": "x.jpg", "negative": ["c"]}'], ["line 2", "unknown class name 'c'"]),
        (['{"image": "x.jpg", "positive": "a"}'], ["line 1", "'positive'", "list"]),
        (['{"image": "x.jpg", "negative": {"a": 1}}'], ["line 1", "'negative'", "list"]),
        (['{"image": "x.jpg", "positive": ["a"]}', '{"classes": ["a"]}'], ["line 2", "first line"]),
        (['{"image": "x.jpg", "positive": ["a"]}', '{"image": "x.jpg"}'], ["line 2", "line 1", "'x.jpg'"]),
        (['["x.jpg"]'], ["line 1", "JSON object"]),
        (['{"image": 3}'], ["line 1", '"image"']),
        (["", "  "], ["empty"]),
    ],
)
def test_jsonl_errors(tmp_path: Path, lines: list[str], fragments: list[str]) -> None:
    path = write(tmp_path / "bad.jsonl", "\n".join(lines))
    raises_with(lambda: read_jsonl_manifest(path), "bad.jsonl", *fragments)


# ---------------------------------------------------------------- CSV writer


def test_write_csv_round_trip_with_paths(tmp_path: Path) -> None:
    images = tmp_path / "images"
    labels = np.array([[1, -1, 0], [0, 1, -1], [-1, -1, -1]], dtype=np.int8)
    data = MultiLabelData(
        image_ids=["a", "b", "c"],
        labels=labels,
        class_names=["cat", "dog", "hot, dog"],
        image_paths=[images / "a.jpg", images / "sub" / "b.jpg", tmp_path / "c.jpg"],
    )
    out = tmp_path / "manifests" / "labels.csv"
    write_csv_manifest(data, out)
    text = out.read_text(encoding="utf-8")
    assert text.splitlines()[0] == 'image,cat,dog,"hot, dog"'
    assert text.splitlines()[2] == "../images/sub/b.jpg,0,1,-1"
    back = read_csv_manifest(out)
    assert back.class_names == data.class_names
    np.testing.assert_array_equal(back.labels, labels)
    assert back.image_paths is not None
    assert [p.resolve() for p in back.image_paths] == [p.resolve() for p in data.image_paths]


def test_write_csv_into_a_symlinked_folder_points_at_the_real_images(tmp_path: Path) -> None:
    data_root = tmp_path / "project" / "data"
    (data_root / "images").mkdir(parents=True)
    (data_root / "images" / "a.jpg").write_bytes(b"x")
    elsewhere = tmp_path / "elsewhere" / "deep"
    elsewhere.mkdir(parents=True)
    (tmp_path / "project" / "link").symlink_to(elsewhere, target_is_directory=True)
    data = MultiLabelData(
        image_ids=["a"],
        labels=np.array([[1]], dtype=np.int8),
        class_names=["cat"],
        image_paths=[data_root / "images" / "a.jpg"],
    )
    out = tmp_path / "project" / "link" / "labels.csv"  # written through the link, lands in elsewhere/deep
    write_csv_manifest(data, out)
    back = read_csv_manifest(out)
    assert back.image_paths is not None and back.image_paths[0].resolve() == (data_root / "images" / "a.jpg")
    assert back.image_paths[0].is_file()


def test_write_csv_without_paths_and_custom_column(tmp_path: Path) -> None:
    from PIL import Image

    data = MultiLabelData(
        image_ids=["s0", "s1"],
        labels=np.array([[1, 0], [-1, 1]], dtype=np.int8),
        class_names=["x", "y"],
        render=lambda i: Image.new("RGB", (4, 4)),
    )
    out = tmp_path / "synthetic.csv"
    write_csv_manifest(data, out)
    assert out.read_text().splitlines() == ["image,x,y", "s0,1,0", "s1,-1,1"]
    write_csv_manifest(data, out, image_column=["p/0.png", "p/1.png"])
    assert read_csv_manifest(out).image_ids == ["p/0.png", "p/1.png"]
    with pytest.raises(ValueError, match="image_column"):
        write_csv_manifest(data, out, image_column=["only-one.png"])


def test_write_csv_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = write(tmp_path / "labels.csv", "image,cat\nold.jpg,1\n")
    data = MultiLabelData(
        image_ids=["a"], labels=np.array([[1]]), class_names=["cat"], image_paths=[tmp_path / "a.jpg"]
    )

    def crash(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        write_csv_manifest(data, out)
    assert out.read_text() == "image,cat\nold.jpg,1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.csv"]
    monkeypatch.undo()
    write_csv_manifest(data, out)
    assert out.read_text() == "image,cat\na.jpg,1\n"
