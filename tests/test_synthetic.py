"The synthetic benchmark (deepminer.synthetic): determinism, Market-1501 format, layouts, the sharing rule."
import hashlib
import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import deepminer.synthetic as synthetic
from deepminer.synthetic import MARKET_FOLDERS, PARTS, PART_ATTRIBUTES, Identity, SyntheticConfig, make_synthetic_reid

SMALL = dict(train_ids=8, test_ids=8, cameras=4, distractors=6, junk=4, progress=False)
MARKET_NAME = re.compile(r"^(-1|\d{4})_c(\d)s(\d)_(\d{6})_(\d{2})\.jpg$")


def tree_hash(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    return make_synthetic_reid(tmp_path_factory.mktemp("syn") / "small", seed=0, **SMALL)


def test_same_seed_writes_byte_identical_files(small_set, tmp_path):
    again = make_synthetic_reid(tmp_path / "again", seed=0, **SMALL)
    other = make_synthetic_reid(tmp_path / "other", seed=1, **SMALL)
    assert tree_hash(again) == tree_hash(small_set)
    assert tree_hash(other) != tree_hash(small_set)


def test_market1501_layout_and_names(small_set):
    assert sorted(p.name for p in small_set.iterdir()) == sorted([*MARKET_FOLDERS, "parts", "synthetic.json"])
    manifest = json.loads((small_set / "synthetic.json").read_text())
    train_pids = {p["pid"] for p in manifest["identities"]["train"]}
    test_pids = {p["pid"] for p in manifest["identities"]["test"]}
    assert not train_pids & test_pids
    seen = defaultdict(set)
    for folder in MARKET_FOLDERS:
        files = sorted((small_set / folder).iterdir())
        assert len(files) == manifest["counts"][folder]
        for f in files:
            m = MARKET_NAME.match(f.name)
            assert m, f.name
            pid, cam = int(m.group(1)), int(m.group(2))
            assert 1 <= cam <= 4
            seen[folder].add(pid)
            with Image.open(f) as im:
                assert im.format == "JPEG" and im.size == (64, 128) and im.mode == "RGB"
    assert seen["bounding_box_train"] == train_pids
    assert seen["query"] == test_pids
    assert seen["bounding_box_test"] == test_pids | {0, -1}


def test_every_query_has_a_gallery_match_in_another_camera(small_set):
    gallery = defaultdict(set)
    for f in (small_set / "bounding_box_test").glob("*.jpg"):
        m = MARKET_NAME.match(f.name)
        gallery[int(m.group(1))].add(int(m.group(2)))
    for f in (small_set / "query").glob("*.jpg"):
        m = MARKET_NAME.match(f.name)
        pid, cam = int(m.group(1)), int(m.group(2))
        assert gallery[pid] - {cam}, f.name


def test_part_layouts_exist_for_every_image_and_cover_the_person(small_set):
    for folder in MARKET_FOLDERS:
        for f in (small_set / folder).glob("*.jpg"):
            layout = np.asarray(Image.open(small_set / "parts" / folder / (f.stem + ".png")))
            assert layout.shape == (128, 64) and layout.max() < len(PARTS)
            if not f.name.startswith(("-1", "0000")):  # a detection shows a person: torso and legs are visible
                present = set(np.unique(layout).tolist())
                assert {PARTS.index("torso"), PARTS.index("legs")} <= present or PARTS.index("background") in present


def test_no_part_look_identifies_a_person(small_set):
    manifest = json.loads((small_set / "synthetic.json").read_text())
    for split in ("train", "test"):
        people = [Identity(**p) for p in manifest["identities"][split]]
        assert len({p.appearance() for p in people}) == len(people)
        for part in PART_ATTRIBUTES:
            looks = [p.look(part) for p in people]
            assert min(looks.count(look) for look in looks) >= 2, (split, part)


def test_existing_sets_and_foreign_folders(small_set, tmp_path):
    before = tree_hash(small_set)
    assert make_synthetic_reid(small_set, seed=0, **SMALL) == small_set  # already there: nothing written
    assert tree_hash(small_set) == before
    with pytest.raises(FileExistsError, match="other settings"):
        make_synthetic_reid(small_set, seed=2, **SMALL)
    foreign = tmp_path / "foreign"
    (foreign / "query").mkdir(parents=True)
    (foreign / "query" / "0001_c1s1_000001_01.jpg").write_bytes(b"user data")
    with pytest.raises(FileExistsError, match="not a deepminer synthetic set"):
        make_synthetic_reid(foreign, overwrite=True, **SMALL)
    assert (foreign / "query" / "0001_c1s1_000001_01.jpg").read_bytes() == b"user data"


def test_overwrite_replaces_a_synthetic_set(tmp_path):
    root = make_synthetic_reid(tmp_path / "s", seed=0, **SMALL)
    make_synthetic_reid(root, seed=1, overwrite=True, **SMALL)
    assert json.loads((root / "synthetic.json").read_text())["seed"] == 1


def test_interrupted_generation_leaves_nothing_behind(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = synthetic.render_image
    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 10:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(synthetic, "render_image", flaky)
    with pytest.raises(KeyboardInterrupt):
        make_synthetic_reid(tmp_path / "s", **SMALL)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("sizes, message", [
    (dict(cameras=1), "cameras must be between 2 and 9"),
    (dict(train_ids=0), "train_ids must be a positive integer"),
    (dict(test_ids=3), "at least 2 \\* min_shared"),
    (dict(min_cameras_per_id=1), "min_cameras_per_id"),
    (dict(max_cameras_per_id=7), "max_cameras_per_id <= cameras"),
    (dict(occlusion=1.5), "occlusion"),
    (dict(height=16), "at least 32x16"),
])
def test_bad_sizes_name_the_argument(sizes, message):
    with pytest.raises(ValueError, match=message):
        SyntheticConfig(**sizes)


def test_market1501_reader_reads_the_synthetic_set_unchanged(small_set):
    import warnings

    from deepminer.data import Market1501
    manifest = json.loads((small_set / "synthetic.json").read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no count warning, no missing-match warning
        dataset = Market1501(small_set)
    junk = sum(1 for f in (small_set / "bounding_box_test").glob("-1_*.jpg"))
    assert len(dataset.train) == manifest["counts"]["bounding_box_train"]
    assert len(dataset.query) == manifest["counts"]["query"]
    assert len(dataset.gallery) == manifest["counts"]["bounding_box_test"] - junk  # junk is dropped
    assert dataset.num_train_ids == len(manifest["identities"]["train"])
    assert sorted({r.pid for r in dataset.train}) == list(range(dataset.num_train_ids))
    assert {r.pid for r in dataset.gallery} == {p["pid"] for p in manifest["identities"]["test"]} | {0}
