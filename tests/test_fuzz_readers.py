"""Property tests of the dataset readers: any input either reads as valid labels or raises DataError.

Arbitrary bytes and text, and structured-but-wrong files (right format, wrong fields, widths, types, ids),
are written to disk and read back. Anything other than a consistent MultiLabelData or a DataError fails.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hst.data.base import DataError, MultiLabelData
from hst.data.readers import (
    VOC_CLASSES,
    read_class_list,
    read_coco,
    read_csv_manifest,
    read_jsonl_manifest,
    read_vg,
    read_voc,
    read_yolo,
)
from hst.data.spec import load_dataset

pytestmark = pytest.mark.timeout(120)

FUZZ = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Short alphabets make collisions (duplicate ids, names, columns) and separators likely.
NAMES = st.sampled_from(["a", "b", "cat", "dog", " a", "a ", "", "é", "x,y", 'q"', "0", "-1", "\t", "a/b"])
CELLS = st.sampled_from(["1", "-1", "0", "", " 1", "2", "x", "1.0", "+1", "-0", "nan", '"1"'])
JSON_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=False), st.text(max_size=4), NAMES
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6) | NAMES, inner, max_size=4),
    max_leaves=12,
)
TEXT = st.text(max_size=300)
BYTES = st.binary(max_size=300)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Module scope: hypothesis runs many examples per test call, each in a fresh sub-folder.
    return tmp_path_factory.mktemp("fuzz")


def fresh(workdir: Path, name: str) -> Path:
    """An empty folder for one example (examples run one after another)."""
    folder = workdir / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def put(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_bytes(content.encode("utf-8", "surrogatepass"))
    return path


def check(read: Callable[[], MultiLabelData]) -> MultiLabelData | None:
    """Run a reader: DataError is a fine answer; a result must be a consistent label set."""
    try:
        data = read()
    except DataError as error:
        assert str(error), "a DataError must say what is wrong"
        return None
    assert isinstance(data, MultiLabelData)
    labels = data.labels
    assert labels.dtype == np.int8 and labels.ndim == 2
    assert labels.shape == (len(data.image_ids), len(data.class_names))
    assert set(np.unique(labels).tolist()) <= {-1, 0, 1}
    assert len(set(data.image_ids)) == len(data.image_ids)
    assert len(set(data.class_names)) == len(data.class_names) and all(data.class_names)
    assert data.image_paths is not None and len(data.image_paths) == len(data.image_ids)
    return data


# ---------------------------------------------------------------- CSV manifest


@FUZZ
@given(content=st.one_of(TEXT, BYTES))
def test_csv_arbitrary_content(workdir: Path, content: str | bytes) -> None:
    path = put(fresh(workdir, "csv") / "labels.csv", content)
    check(lambda: read_csv_manifest(path))


@FUZZ
@given(
    header=st.lists(NAMES, min_size=0, max_size=4),
    rows=st.lists(st.tuples(NAMES, st.lists(CELLS, max_size=5)), max_size=6),
    first=st.sampled_from(["image", "Image", "", " image"]),
    ending=st.sampled_from(["\n", "\r\n", "\r"]),
)
def test_csv_structured(
    workdir: Path, header: list[str], rows: list[tuple[str, list[str]]], first: str, ending: str
) -> None:
    stream = io.StringIO()
    writer = csv.writer(stream, lineterminator=ending)
    writer.writerow([first, *header])
    writer.writerows([image, *cells] for image, cells in rows)
    path = put(fresh(workdir, "csv") / "labels.csv", stream.getvalue())
    data = check(lambda: read_csv_manifest(path))
    if data is not None:
        # A file that reads must hold exactly the rows and columns it was given.
        assert data.class_names == [name.strip() for name in header]
        assert len(data) == sum(1 for image, cells in rows if image.strip() or cells)


# ---------------------------------------------------------------- JSON lines manifest


@FUZZ
@given(content=st.one_of(TEXT, BYTES))
def test_jsonl_arbitrary_content(workdir: Path, content: str | bytes) -> None:
    path = put(fresh(workdir, "jsonl") / "labels.jsonl", content)
    check(lambda: read_jsonl_manifest(path))


RECORDS = st.dictionaries(
    st.sampled_from(["image", "positive", "negative", "classes", "other"]),
    JSON_VALUES | st.lists(NAMES, max_size=4),
    max_size=4,
)


@FUZZ
@given(records=st.lists(RECORDS | JSON_VALUES, max_size=6))
def test_jsonl_structured(workdir: Path, records: list[object]) -> None:
    lines = [json.dumps(record) for record in records]
    path = put(fresh(workdir, "jsonl") / "labels.jsonl", "\n".join(lines))
    check(lambda: read_jsonl_manifest(path))
    check(lambda: read_jsonl_manifest(path, class_names=["a", "b", "cat"]))


# ---------------------------------------------------------------- YOLO


YAML_TEXT = st.one_of(
    TEXT,
    st.builds(
        lambda names, nc: "names:\n" + "".join(f"  {key}: {value}\n" for key, value in names) + nc,
        st.lists(
            st.tuples(st.sampled_from(["0", "1", "2", "-1", "'1'", "x", "²", "1.5", "true", "null"]), NAMES), max_size=4
        ),
        st.sampled_from(["", "nc: 2\n", "nc: x\n", "nc: [1]\n"]),
    ),
    st.builds(lambda values: json.dumps({"names": values}), JSON_VALUES),
)
LABEL_LINES = st.lists(
    st.lists(st.sampled_from(["0", "1", "2", "-1", "0.5", "1e3", "x", "nan", "99999999999999999999", ""]), max_size=8),
    max_size=5,
).map(lambda rows: "\n".join(" ".join(row) for row in rows))


@FUZZ
@given(
    classes=YAML_TEXT | BYTES,
    labels=st.dictionaries(st.sampled_from(["a", "b", "c"]), LABEL_LINES | TEXT | BYTES, max_size=3),
    images=st.lists(st.sampled_from(["a.jpg", "b.png", "a.png", "c.txt", "B.JPG"]), max_size=4, unique=True),
)
def test_yolo_tree(workdir: Path, classes: str | bytes, labels: dict[str, str | bytes], images: list[str]) -> None:
    root = fresh(workdir, "yolo")
    put(root / "classes.yaml", classes)
    (root / "labels" / "s").mkdir(parents=True)
    (root / "images" / "s").mkdir(parents=True)
    for name in images:
        put(root / "images" / "s" / name, b"")
    for stem, content in labels.items():
        put(root / "labels" / "s" / f"{stem}.txt", content)
    check(lambda: read_yolo(root, "s"))


# ---------------------------------------------------------------- COCO


# Near misses first (they hash or compare like valid values), then anything.
WRONG = (
    st.sampled_from([True, 1.0, 10.0, "1", 0, -1, False, None, 2.5, [1], {}, ""])
    | st.sampled_from([True, 1.0, 11.0])
    | JSON_VALUES
)


@st.composite
def coco_documents(draw: st.DrawFn) -> dict[str, object]:
    """A well-formed instances file, then up to three edits that may break it (wrong types, missing keys...)."""
    num_images = draw(st.integers(0, 3))
    num_categories = draw(st.integers(1, 3))
    images = [{"id": index + 1, "file_name": f"{index}.jpg"} for index in range(num_images)]
    names = draw(
        st.lists(st.sampled_from(["cat", "dog", "bird", "cow"]), min_size=num_categories, max_size=num_categories)
    )
    categories = [{"id": 10 + index, "name": name} for index, name in enumerate(names)]
    pairs = draw(st.lists(st.tuples(st.integers(1, 3), st.integers(10, 9 + num_categories)), max_size=5))
    annotations = [{"id": n, "image_id": i, "category_id": c} for n, (i, c) in enumerate(pairs)]
    document: dict[str, object] = {"images": images, "annotations": annotations, "categories": categories}
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from(["images", "annotations", "annotations", "categories"]))
        action = draw(st.sampled_from(["set", "set", "drop_field", "drop_key", "replace", "duplicate"]))
        records = document.get(key)
        if action == "drop_key":
            document.pop(key, None)
        elif action == "replace":
            document[key] = draw(JSON_VALUES)
        elif isinstance(records, list) and records and isinstance(records[0], dict):
            record = records[draw(st.integers(0, len(records) - 1))]
            if action == "duplicate":
                records.append(dict(record))
            elif record:
                field = draw(st.sampled_from(sorted(record)))
                if action == "drop_field":
                    del record[field]
                else:
                    record[field] = draw(WRONG)
    return document


@FUZZ
@given(document=coco_documents() | JSON_VALUES, keep_empty=st.booleans())
def test_coco_structured(workdir: Path, document: object, keep_empty: bool) -> None:
    path = put(fresh(workdir, "coco") / "instances.json", json.dumps(document))
    data = check(lambda: read_coco(path.parent, path, keep_empty=keep_empty))
    if data is not None:
        assert isinstance(document, dict)
        # Accepted ids are true integers: True or 1.0 must not stand in for id 1.
        for key, fields in (("images", ["id"]), ("annotations", ["image_id", "category_id"]), ("categories", ["id"])):
            assert all(type(record[name]) is int for record in document[key] for name in fields)
        assert int(np.count_nonzero(data.labels == 1)) == len(
            {(a["image_id"], a["category_id"]) for a in document["annotations"]}
        )


@FUZZ
@given(content=st.one_of(TEXT, BYTES))
def test_coco_arbitrary_content(workdir: Path, content: str | bytes) -> None:
    path = put(fresh(workdir, "coco") / "instances.json", content)
    check(lambda: read_coco(path.parent, path))


# ---------------------------------------------------------------- Pascal VOC


OBJECT = st.builds(
    lambda name, difficult, extra: f"<object>{name}{difficult}{extra}</object>",
    st.sampled_from(VOC_CLASSES[:3]).map(lambda n: f"<name>{n}</name>")
    | NAMES.map(lambda n: f"<name>{n}</name>")
    | st.just(""),
    st.sampled_from(["", "<difficult>1</difficult>", "<difficult>0</difficult>", "<difficult>yes</difficult>"]),
    st.sampled_from(["", "<name>dog</name>", "<bndbox/>"]),
)
XML = st.one_of(
    st.lists(OBJECT, max_size=4).map(lambda objects: "<annotation>" + "".join(objects) + "</annotation>"),
    st.sampled_from(
        [
            "",
            "<annotation>",
            '<?xml version="1.0" encoding="utf-16"?><annotation/>',
            '<?xml version="1.0" encoding="bogus"?><annotation/>',
            '<!DOCTYPE a [<!ENTITY e "&#38;#60;">]><annotation>&e;</annotation>',
            '<!DOCTYPE a SYSTEM "http://example.invalid/a.dtd"><annotation/>',
        ]
    ),
    TEXT,
    BYTES,
)


@FUZZ
@given(
    split=st.just("000001\n000002\n")
    | st.lists(
        st.sampled_from(["000001", "000002", "000001 -1", "000003 1", "", "  ", "../x", "a\x00b"]), max_size=5
    ).map("\n".join)
    | TEXT
    | BYTES,
    xmls=st.fixed_dictionaries({"000001": XML}, optional={"000002": XML}),
    difficult=st.sampled_from(["unknown", "negative", "positive"]),
)
def test_voc_tree(workdir: Path, split: str | bytes, xmls: dict[str, str | bytes], difficult: str) -> None:
    root = fresh(workdir, "voc")
    put(root / "ImageSets" / "Main" / "s.txt", split)
    (root / "Annotations").mkdir()
    for image_id, content in xmls.items():
        put(root / "Annotations" / f"{image_id}.xml", content)
    check(lambda: read_voc(root, "s", difficult=difficult))


# ---------------------------------------------------------------- Visual Genome


VG_NAMES = st.sampled_from(["1.jpg", "2.jpg", "1.png", ".", "..", "/", "a/", "x", " ", "d/1.jpg"])
VG_INDICES = st.lists(st.integers(0, 2), max_size=3) | st.lists(
    st.integers(-1, 201) | st.sampled_from([True, 1.0, "1"]), max_size=3
)


def vg_mapping(names: list[str]) -> st.SearchStrategy[object]:
    """Entries for the listed names (mostly well-formed), or any JSON."""
    listed = st.fixed_dictionaries({name: VG_INDICES for name in names})
    return listed | listed | st.dictionaries(VG_NAMES, VG_INDICES | JSON_VALUES, max_size=6) | JSON_VALUES


@FUZZ
@given(
    layout=st.lists(VG_NAMES, max_size=4).flatmap(lambda names: st.tuples(st.just(names), vg_mapping(names))),
    classes=st.none() | st.lists(NAMES, max_size=3).map(json.dumps) | TEXT | BYTES,
)
def test_vg_layout(workdir: Path, layout: tuple[list[str], object], classes: str | bytes | None) -> None:
    names, mapping = layout
    root = fresh(workdir, "vg")
    list_file = put(root / "list.txt", "\n".join(names))
    labels_json = put(root / "labels.json", json.dumps(mapping))
    classes_file = None if classes is None else put(root / "classes.txt", classes)
    check(lambda: read_vg(root, list_file, labels_json, classes_file))
    if classes_file is not None:
        try:
            listed = read_class_list(classes_file)
        except DataError:
            return
        assert listed and len(set(listed)) == len(listed) and all(listed)


# ---------------------------------------------------------------- data specs


@FUZZ
@given(
    spec=(st.text(alphabet=st.sampled_from(list("csvjolyugcoe:?=&/.1x ")), max_size=24) | TEXT).filter(
        lambda text: not text.strip().lower().startswith("synthetic")
    )
)
def test_data_spec_strings(workdir: Path, spec: str) -> None:
    # Relative paths in fuzzed specs resolve inside the empty work folder, never in the project.
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(fresh(workdir, "spec"))
        try:
            data = load_dataset(spec)
        except DataError:
            return
    assert len(data) > 0
