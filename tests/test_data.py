"Dataset readers, P×K sampler, transforms and loaders (deepminer.data) on small fixture trees in each exact format."
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from PIL import Image
from scipy.io import savemat

from deepminer.data import (DATASETS, PUBLISHED_COUNTS, CUHK03, CustomDataset, DukeMTMCreID, Market1501, MSMT17,
                            RandomIdentitySampler, Record, ReIDDataset, ReIDImages, SyntheticMarket, build_dataloaders,
                            build_dataset, build_transforms, max_batches)


# ---------------------------------------------------------------- fixtures: tiny real images in each exact format

def save_image(path: Path, pid: int = 1, camid: int = 0, size=(16, 8)):
    "A tiny RGB image whose colour depends on pid and camera, written by PIL (format from the suffix)."
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = ((37 * pid) % 256, (91 * pid + 40 * camid) % 256, (53 * camid + 17) % 256)
    Image.new("RGB", (size[1], size[0]), colour).save(path)


def market_name(pid, cam, frame):
    return f"{'-1' if pid == -1 else f'{pid:04d}'}_c{cam}s1_{frame:06d}_01.jpg"


def duke_name(pid, cam, frame):
    return f"{'-1' if pid == -1 else f'{pid:04d}'}_c{cam}_f{frame:07d}.jpg"


def cuhk03np_name(pid, cam, frame):
    return f"{pid:04d}_c{cam}_{frame}.png"


def write_market_style(root: Path, name, train=(2, 7, 9, 30), test=(1, 5, 6), cams=(1, 2, 3), junk=2, distractors=3):
    """bounding_box_train/, query/, bounding_box_test/ with every person on every camera (cameras numbered from 1):
    2 train images per camera, 1 query and 2 gallery images per camera, plus junk (-1) and distractors (0)."""
    frame = 0
    def put(folder, pid, cam):
        nonlocal frame
        frame += 1
        save_image(root / folder / name(pid, cam, frame), max(pid, 0), cam)
    for pid in train:
        for cam in cams:
            put("bounding_box_train", pid, cam); put("bounding_box_train", pid, cam)
    for pid in test:
        for cam in cams:
            put("query", pid, cam); put("bounding_box_test", pid, cam); put("bounding_box_test", pid, cam)
    for k in range(junk):
        put("bounding_box_test", -1, cams[k % len(cams)])
    for k in range(distractors):
        put("bounding_box_test", 0, cams[k % len(cams)])
    return root


def write_cuhk03_mat(root: Path, kind="labeled", train=((1, 1), (1, 2), (3, 4)), test=((1, 3), (2, 1)), per_view=2):
    """The official new-protocol file cuhk03_new_protocol_config_<kind>.mat (cell array `filelist`, double `labels`,
    `camId`, 1-based double `train_idx`, `query_idx`, `gallery_idx`) and its PNG images in images_<kind>/."""
    names, labels, idx = [], [], {"train": [], "query": [], "gallery": []}
    for people, is_train in ((train, True), (test, False)):
        for pair, person in people:
            for view in (1, 2):
                for k in range(per_view + (0 if is_train else 1)):
                    name = f"{pair}_{person:03d}_{view}_{len(names) % 10 + 1:02d}.png"
                    save_image(root / f"images_{kind}" / name, 100 * pair + person, view)
                    names.append(name); labels.append(100 * pair + person)
                    idx["train" if is_train else ("query" if k == 0 else "gallery")].append(len(names))
    filelist = np.empty((len(names), 1), dtype=object)
    filelist[:, 0] = names
    column = lambda values: np.array(values, dtype=np.float64).reshape(-1, 1)
    savemat(root / f"cuhk03_new_protocol_config_{kind}.mat",
            {"filelist": filelist, "labels": column(labels), "camId": column([int(n.split("_")[2]) for n in names]),
             **{f"{split}_idx": column(v) for split, v in idx.items()}})
    return root


def write_msmt17(base: Path, train_dir="train", test_dir="test", train=(0, 1, 2), val=(1, 3), test=(0, 4), cams=(1, 7, 15)):
    "MSMT17 files in `base`: list_{train,val,query,gallery}.txt ('PATH PID' lines) and the images they list."
    lists = {"train": [], "val": [], "query": [], "gallery": []}
    for split, ids, folder in (("train", train, train_dir), ("val", val, train_dir), ("test", test, test_dir)):
        for pid in ids:
            for k, cam in enumerate(cams):
                rel = f"{pid:04d}/{pid:04d}_{k + 10 * (split == 'val'):03d}_{cam:02d}_0303morning_{k:04d}_0.jpg"
                save_image(base / folder / rel, pid, cam)
                target = split if split != "test" else ("query" if k == 0 else "gallery")
                lists[target].append(f"{rel} {pid}")
    for name, rows in lists.items():
        (base / f"list_{name}.txt").write_text("\n".join(rows) + "\n")
    return base


def write_custom_folders(root: Path):
    "train/, query/, gallery/ with <pid>/<camid>_<anything>.jpg; a distractor (0) and a junk folder (-1) in the gallery."
    layout = {"train": {3: (0, 1), 8: (0, 2), 11: (1,)}, "query": {20: (0,), 21: (0,)},
              "gallery": {20: (1, 2), 21: (1,), 0: (1,), -1: (2,)}}
    for split, people in layout.items():
        for pid, cams in people.items():
            for cam in cams:
                save_image(root / split / str(pid) / f"{cam}_img{pid}.jpg", max(pid, 0), cam)
    return root


def quiet(make):
    "Call `make()` and return (result, warning messages)."
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = make()
    return result, [str(w.message) for w in caught]


# ---------------------------------------------------------------- readers: counts, relabelling, junk, distractors

def test_market1501_counts_relabelling_junk_and_distractors(tmp_path):
    root = write_market_style(tmp_path / "Market-1501-v15.09.15", market_name)
    (root / "bounding_box_test" / "Thumbs.db").write_bytes(b"\0\1")   # real copies contain these
    (root / "gt_bbox").mkdir()
    data, caught = quiet(lambda: Market1501(root))
    assert caught == []
    assert data.counts() == {"train": {"ids": 4, "images": 24, "cameras": 3},
                             "query": {"ids": 3, "images": 9, "cameras": 3},
                             "gallery": {"ids": 4, "images": 21, "cameras": 3}}  # 18 + 3 distractors; 2 junk dropped
    assert data.train_pids == [2, 7, 9, 30]
    assert data.num_train_ids == 4
    assert sorted({r.pid for r in data.train}) == [0, 1, 2, 3]
    assert all(data.train_pids[r.pid] == int(Path(r.path).name[:4]) for r in data.train)  # labels follow sorted pids
    assert {r.pid for r in data.query} == {1, 5, 6}                                         # query pids kept
    assert Counter(r.pid for r in data.gallery)[0] == 3 and -1 not in {r.pid for r in data.gallery}
    assert {r.camid for r in data.train} == {0, 1, 2}                                       # c1 -> 0
    assert all(isinstance(r, Record) and Path(r.path).is_file() for r in data.train + data.query + data.gallery)
    assert data.summary() == data.counts()


def test_market1501_reads_the_synthetic_layout_and_ignores_extras(tmp_path):
    root = write_market_style(tmp_path / "synthetic", market_name)
    (root / "synthetic.json").write_text("{}")
    for folder in ("bounding_box_train", "query", "bounding_box_test"):   # per-image part maps, as the generator writes
        (root / "parts" / folder).mkdir(parents=True)
        save_image(root / "parts" / folder / "0002_c1s1_000001_01.png")
    assert SyntheticMarket(root).counts() == Market1501(root).counts()
    assert SyntheticMarket(root).published is None


def test_market1501_accepts_two_digit_cameras(tmp_path):
    root = write_market_style(tmp_path / "m", market_name, cams=(1, 12))
    assert {r.camid for r in Market1501(root).train} == {0, 11}


def test_dukemtmcreid(tmp_path):
    root = write_market_style(tmp_path / "DukeMTMC-reID", duke_name, cams=(1, 2, 5, 8), junk=0)
    data = DukeMTMCreID(root)
    assert data.counts()["train"] == {"ids": 4, "images": 32, "cameras": 4}
    assert data.counts()["gallery"] == {"ids": 4, "images": 27, "cameras": 4}
    assert {r.camid for r in data.query} == {0, 1, 4, 7}
    assert data.published == "dukemtmcreid"


@pytest.mark.parametrize("labeled", [True, False])
def test_cuhk03_official_mat(tmp_path, labeled):
    kind = "labeled" if labeled else "detected"
    root = write_cuhk03_mat(tmp_path / "cuhk03", kind)
    data = CUHK03(root, labeled=labeled)
    assert data.counts() == {"train": {"ids": 3, "images": 12, "cameras": 2},
                             "query": {"ids": 2, "images": 4, "cameras": 2},
                             "gallery": {"ids": 2, "images": 8, "cameras": 2}}
    assert data.train_pids == [101, 102, 304]
    assert {r.pid for r in data.query} == {103, 201}
    assert all(Path(r.path).parent.name == f"images_{kind}" for r in data.train)
    assert data.published == f"cuhk03-{kind}"
    assert data.name == f"CUHK03 ({kind})"


def test_cuhk03_np_folders(tmp_path):
    root = tmp_path / "cuhk03-np"
    write_market_style(root / "detected", cuhk03np_name, cams=(1, 2), junk=0, distractors=0)
    data = CUHK03(root, labeled=False)
    assert data.counts() == {"train": {"ids": 4, "images": 16, "cameras": 2},
                             "query": {"ids": 3, "images": 6, "cameras": 2},
                             "gallery": {"ids": 3, "images": 12, "cameras": 2}}
    with pytest.raises(FileNotFoundError, match="lacks both cuhk03_new_protocol_config_labeled.mat and labeled/"):
        CUHK03(root, labeled=True)


@pytest.mark.parametrize("version", [1, 2])
def test_msmt17_both_versions_with_and_without_val(tmp_path, version):
    folders = ("train", "test") if version == 1 else ("mask_train_v2", "mask_test_v2")
    write_msmt17(tmp_path / f"MSMT17_V{version}", *folders)
    for root in (tmp_path, tmp_path / f"MSMT17_V{version}"):   # the version folder or its parent
        data = MSMT17(root)
        assert data.counts() == {"train": {"ids": 3, "images": 9, "cameras": 3},
                                 "query": {"ids": 2, "images": 2, "cameras": 1},
                                 "gallery": {"ids": 2, "images": 4, "cameras": 2}}
        assert {r.camid for r in data.train} == {0, 6, 14}
        assert data.published == "msmt17"
    merged = MSMT17(tmp_path, with_val=True)
    assert merged.counts()["train"] == {"ids": 4, "images": 15, "cameras": 3}   # val adds person 3 and images of 1
    assert merged.train_pids == [0, 1, 2, 3]
    assert merged.published == "msmt17+val"


def test_msmt17_v2_folder_spelling_is_case_insensitive(tmp_path):
    write_msmt17(tmp_path / "MSMT17_V2", "mask_train_V2", "mask_test_V2")
    assert MSMT17(tmp_path).counts()["train"]["images"] == 9


def test_custom_folders_and_csv(tmp_path):
    root = write_custom_folders(tmp_path / "mine")
    (root / "gallery" / "notes.txt").write_text("ignored")
    data = CustomDataset(root)
    assert data.counts() == {"train": {"ids": 3, "images": 5, "cameras": 3},
                             "query": {"ids": 2, "images": 2, "cameras": 1},
                             "gallery": {"ids": 3, "images": 4, "cameras": 2}}   # junk folder -1 dropped
    assert data.train_pids == [3, 8, 11]
    # the same data as CSV files, one with a header; relative and absolute paths
    for split, records in (("train", [(r.path, data.train_pids[r.pid], r.camid) for r in data.train]),
                           ("query", data.query), ("gallery", data.gallery)):
        rows = [f"{Path(p).relative_to(root) if split != 'query' else p},{pid},{cam}" for p, pid, cam in records]
        (root / f"{split}.csv").write_text(("path,pid,camid\n" if split == "train" else "") + "\n".join(rows) + "\n")
    from_csv = CustomDataset(root)
    assert from_csv.counts() == data.counts()
    assert sorted(from_csv.train) == sorted(data.train)


def test_registry(tmp_path):
    root = write_market_style(tmp_path / "m", market_name)
    assert set(DATASETS) >= {"market1501", "dukemtmcreid", "cuhk03", "msmt17", "synthetic", "custom"}
    assert build_dataset("Market-1501", root).counts() == Market1501(root).counts()
    assert isinstance(build_dataset("synthetic", root), SyntheticMarket)
    write_cuhk03_mat(tmp_path / "c", "detected")
    assert build_dataset("cuhk03", tmp_path / "c", labeled=False).name == "CUHK03 (detected)"
    with pytest.raises(ValueError, match="unknown dataset 'viper': expected one of market1501"):
        build_dataset("viper", root)


# ---------------------------------------------------------------- published counts

def fake_benchmark(ids, images, test_ids=700, query=1400, gallery=5332):
    "In-memory records with the given counts, CUHK03-sized by default (paths are never opened by ReIDDataset)."
    spread = lambda n_ids, n_images, cam: [(f"{i}.jpg", i % n_ids + 1, cam) for i in range(n_images)]
    return spread(ids, images, 0), spread(test_ids, query, 0), spread(test_ids, gallery, 1)


def test_published_counts_match_the_table():
    assert PUBLISHED_COUNTS["market1501"] == {"train": (751, 12936), "query": (750, 3368), "gallery": (751, 15913)}
    assert PUBLISHED_COUNTS["msmt17"]["train"] == (1041, 30248)
    assert PUBLISHED_COUNTS["msmt17+val"]["train"] == (1041, 32621)
    assert PUBLISHED_COUNTS["cuhk03-labeled"]["gallery"] == (700, 5328)
    assert PUBLISHED_COUNTS["cuhk03-detected"]["train"] == (767, 7365)
    assert PUBLISHED_COUNTS["dukemtmcreid"]["query"] == (702, 2228)


def test_published_counts_warn_only_for_a_full_copy_that_differs():
    _, caught = quiet(lambda: ReIDDataset(*fake_benchmark(767, 7365), published="cuhk03-detected"))
    assert caught == []                                              # the full benchmark: silent
    _, caught = quiet(lambda: ReIDDataset(*fake_benchmark(767, 7000), published="cuhk03-detected"))
    assert len(caught) == 1 and "train images 7,000 (published 7,365)" in caught[0]
    _, caught = quiet(lambda: ReIDDataset(*fake_benchmark(400, 7000), published="cuhk03-detected"))
    assert len(caught) == 1 and "train ids 400 (published 767)" in caught[0]     # over half the ids: compared
    _, caught = quiet(lambda: ReIDDataset(*fake_benchmark(10, 100), published="cuhk03-detected"))
    assert caught == []                                              # a small sample: not compared (auto)
    _, caught = quiet(lambda: ReIDDataset(*fake_benchmark(10, 100), published="cuhk03-detected", check_counts=True))
    assert "train ids 10 (published 767)" in caught[0]
    _, caught = quiet(lambda: ReIDDataset(*fake_benchmark(767, 7000), published="cuhk03-detected", check_counts=False))
    assert caught == []


def test_query_without_cross_camera_match_warns():
    _, caught = quiet(lambda: ReIDDataset([("a", 1, 0)], [("q", 5, 0), ("r", 6, 0)], [("g", 5, 0), ("h", 6, 1)]))
    assert len(caught) == 1 and "1 of 2 query images have no gallery image of their person from another camera" in caught[0]


# ---------------------------------------------------------------- bad input: every error names what and where

def test_missing_root(tmp_path):
    for reader in (Market1501, DukeMTMCreID, CUHK03, MSMT17, CustomDataset, SyntheticMarket):
        with pytest.raises(FileNotFoundError, match="no dataset folder at .*nowhere"):
            reader(tmp_path / "nowhere")


def test_root_not_in_the_expected_layout(tmp_path):
    (tmp_path / "bounding_box_train").mkdir()
    with pytest.raises(FileNotFoundError, match=r"it lacks query/, bounding_box_test/. Expected: .*bounding_box_train,query,bounding_box_test"):
        Market1501(tmp_path)
    with pytest.raises(FileNotFoundError, match="neither train/ and test/ \\(MSMT17_V1\\) nor mask_train_v2/ and mask_test_v2/"):
        MSMT17(tmp_path)
    with pytest.raises(FileNotFoundError, match="lacks both cuhk03_new_protocol_config_labeled.mat and labeled/"):
        CUHK03(tmp_path)
    (tmp_path / "train").mkdir()
    with pytest.raises(FileNotFoundError, match="it lacks query/, gallery/. Expected either train/, query/, gallery/"):
        CustomDataset(tmp_path)


def test_layout_error_points_to_the_right_subfolder(tmp_path):
    write_market_style(tmp_path / "Market-1501-v15.09.15", market_name)
    with pytest.raises(FileNotFoundError, match="Market-1501-v15.09.15 has this layout: pass it as the root"):
        Market1501(tmp_path)


def test_msmt17_missing_list_and_mat_missing_images_folder(tmp_path):
    base = write_msmt17(tmp_path / "MSMT17_V1")
    (base / "list_gallery.txt").unlink()
    with pytest.raises(FileNotFoundError, match="it lacks list_gallery.txt"):
        MSMT17(tmp_path)
    root = write_cuhk03_mat(tmp_path / "c")
    for image in (root / "images_labeled").iterdir():
        image.unlink()
    (root / "images_labeled").rmdir()
    with pytest.raises(FileNotFoundError, match="lacks images_labeled/"):
        CUHK03(root)


@pytest.mark.parametrize("reader, name, folder, pattern", [
    (Market1501, "0002_c1_000451.jpg", "bounding_box_train", "expected PPPP_cCsS_FFFFFF_BB.jpg"),
    (Market1501, "0002_c0s1_000451_01.jpg", "query", "expected PPPP_cCsS_FFFFFF_BB.jpg"),   # cameras count from 1
    (DukeMTMCreID, "0002_c1s1_000451_01.jpg", "bounding_box_test", "expected PPPP_cC_fFFFFFFF.jpg"),
])
def test_unparsable_file_name(tmp_path, reader, name, folder, pattern):
    root = write_market_style(tmp_path / "d", market_name if reader is Market1501 else duke_name)
    save_image(root / folder / name)
    with pytest.raises(ValueError, match=f"cannot parse the file name .*{name}: {pattern}"):
        reader(root)


def test_unparsable_names_in_cuhk03_np_msmt17_and_custom(tmp_path):
    root = tmp_path / "np"
    write_market_style(root / "labeled", cuhk03np_name, cams=(1, 2), junk=0, distractors=0)
    save_image(root / "labeled" / "query" / "0001_c3_1.png")           # CUHK03 has views 1 and 2 only
    with pytest.raises(ValueError, match="0001_c3_1.png: expected PPPP_cV_N.png"):
        CUHK03(root)
    base = write_msmt17(tmp_path / "msmt")
    (base / "list_query.txt").write_text("0000/0000_000_01_0303morning_0000_0.jpg\n")
    with pytest.raises(ValueError, match=r"list_query.txt, line 1: expected 'PATH PID'"):
        MSMT17(base)
    (base / "list_query.txt").write_text("0000/0000_000_01_0303morning_0000_0.jpg 0\n0000/frame1.jpg 0\n")
    with pytest.raises(ValueError, match=r"list_query.txt, line 2: cannot parse the file name '0000/frame1.jpg': expected PPPP_NNN_CC"):
        MSMT17(base)
    custom = write_custom_folders(tmp_path / "custom")
    save_image(custom / "train" / "3" / "frontview.jpg")
    with pytest.raises(ValueError, match="frontview.jpg: expected <camid>_<anything>.jpg"):
        CustomDataset(custom)
    (custom / "train" / "3" / "frontview.jpg").unlink()
    save_image(custom / "query" / "alice" / "0_a.jpg")
    with pytest.raises(ValueError, match="person folder .*alice: expected an integer pid"):
        CustomDataset(custom)
    (custom / "query" / "alice" / "0_a.jpg").unlink(); (custom / "query" / "alice").rmdir()
    save_image(custom / "gallery" / "1_loose.jpg")
    with pytest.raises(ValueError, match="1_loose.jpg is not in a person folder"):
        CustomDataset(custom)


def test_bad_csv_rows(tmp_path):
    root = write_custom_folders(tmp_path / "custom")
    for split in ("train", "query", "gallery"):
        (root / f"{split}.csv").write_text(f"{split}/3/0_img3.jpg,3,0\n" if split == "train" else "query/20/0_img20.jpg,20,0\n")
    (root / "gallery.csv").write_text("gallery/20/1_img20.jpg,20\n")
    with pytest.raises(ValueError, match=r"gallery.csv, line 1: expected 'path,pid,camid' with integer pid and camid"):
        CustomDataset(root)
    (root / "gallery.csv").write_text("gallery/20/1_img20.jpg,20,one\n")
    with pytest.raises(ValueError, match="gallery.csv, line 1"):
        CustomDataset(root)
    (root / "gallery.csv").write_text("gallery/20/9_missing.jpg,20,1\n")
    with pytest.raises(FileNotFoundError, match=r"1 of the 1 images listed in .*gallery.csv are missing, e.g. .*9_missing.jpg"):
        CustomDataset(root)


def test_empty_split_folder(tmp_path):
    root = write_market_style(tmp_path / "m", market_name)
    for image in (root / "query").iterdir():
        image.unlink()
    with pytest.raises(ValueError, match="query holds no image; expected files named PPPP_cCsS_FFFFFF_BB.jpg"):
        Market1501(root)


def test_split_of_junk_only(tmp_path):
    root = write_market_style(tmp_path / "m", market_name, test=(), junk=3, distractors=0)
    save_image(root / "query" / market_name(-1, 1, 99))
    with pytest.raises(ValueError, match="the query split holds no image \\(junk images, pid -1, do not count\\)"):
        Market1501(root)


def test_cuhk03_bad_mat_files(tmp_path):
    root = write_cuhk03_mat(tmp_path / "c")
    mat = root / "cuhk03_new_protocol_config_labeled.mat"
    good = mat.read_bytes()
    for content in (b"", b"not a mat file" * 20, good[:200]):
        mat.write_bytes(content)
        with pytest.raises(ValueError, match="cannot read .*cuhk03_new_protocol_config_labeled.mat with scipy.io.loadmat"):
            CUHK03(root)
    savemat(mat, {"filelist": np.empty((0, 1), dtype=object), "labels": np.zeros((0, 1))})
    with pytest.raises(ValueError, match="lacks the field\\(s\\) train_idx, query_idx, gallery_idx"):
        CUHK03(root)
    names = np.empty((1, 1), dtype=object); names[0, 0] = "1_001_1_01.png"
    one = np.ones((1, 1))
    savemat(mat, {"filelist": names, "labels": one, "train_idx": one, "query_idx": one, "gallery_idx": 2 * one})
    with pytest.raises(ValueError, match=r"gallery_idx holds 2, outside 1..1"):
        CUHK03(root)
    names[0, 0] = "person1.png"
    savemat(mat, {"filelist": names, "labels": one, "train_idx": one, "query_idx": one, "gallery_idx": one})
    with pytest.raises(ValueError, match="cannot parse the file name 'person1.png': expected C_PPP_V_NN.png"):
        CUHK03(root)
    mat.write_bytes(good)
    (root / "images_labeled" / "1_001_1_01.png").unlink()
    with pytest.raises(FileNotFoundError, match="1 of the 12 images listed in .*labeled.mat are missing, e.g. .*1_001_1_01.png"):
        CUHK03(root)


def test_msmt17_missing_image(tmp_path):
    base = write_msmt17(tmp_path / "MSMT17_V1")
    (base / "train" / "0001" / "0001_001_07_0303morning_0001_0.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="1 of the 9 images listed in .*list_train.txt are missing"):
        MSMT17(tmp_path)


@pytest.fixture
def broken_images(tmp_path):
    "A good JPEG, an empty file, a truncated JPEG, a text file named .jpg and a path that does not exist."
    good = tmp_path / "good.jpg"
    save_image(good, size=(128, 64))
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "truncated.jpg").write_bytes(good.read_bytes()[:200])
    (tmp_path / "text.jpg").write_text("not an image")
    return good, [tmp_path / name for name in ("empty.jpg", "truncated.jpg", "text.jpg", "absent.jpg")]


def test_unreadable_image_fails_fast_naming_the_file(broken_images):
    good, bad = broken_images
    assert ReIDImages([(good, 1, 0)])[0][0].shape == (3, 128, 64)
    for path in bad:
        with pytest.raises(OSError, match=f"cannot read the image {path} .*bad_images='skip'"):
            ReIDImages([(good, 1, 0), (path, 2, 0)])[1]


def test_unreadable_images_skipped_with_a_warning(broken_images):
    good, bad = broken_images
    images, caught = quiet(lambda: ReIDImages([(good, 1, 0)] + [(p, 2, 0) for p in bad], bad_images="skip"))
    assert len(images) == 1 and images.records[0].path == str(good)
    assert len(caught) == 1 and "left out 4 unreadable image(s) of 5" in caught[0] and "truncated.jpg" in caught[0]
    with pytest.raises(ValueError, match="none of the 2 images can be read"):
        quiet(lambda: ReIDImages([(p, 2, 0) for p in bad[:2]], bad_images="skip"))
    with pytest.raises(ValueError, match="bad_images must be one of"):
        ReIDImages([], bad_images="ignore")


def test_unreadable_image_in_a_worker_still_names_the_file(tmp_path, broken_images):
    good, bad = broken_images
    data = ReIDDataset([(good, 1, 0)] * 4 + [(bad[1], 2, 0)] * 4, [(good, 5, 0)], [(good, 5, 1)])
    loaders = build_dataloaders(data, 32, 16, P=2, K=4, num_workers=1, pin_memory=False)
    with pytest.raises(Exception, match="cannot read the image .*truncated.jpg"):
        next(iter(loaders.train))


def test_sampler_bad_arguments():
    train = [Record(f"{p}_{k}", p, 0) for p in range(5) for k in range(3)]
    with pytest.raises(ValueError, match="P = 6 persons per batch, but the training set has only 5 identities: lower P"):
        RandomIdentitySampler(train, P=6, K=2)
    with pytest.raises(ValueError, match=r"a batch of P·K = 5·4 = 20 images is larger than the training set \(15 images\)"):
        RandomIdentitySampler(train, P=5, K=4)
    for kwargs, message in ((dict(P=0), "P must be a positive integer"), (dict(K=2.5), "K must be a positive integer"),
                            (dict(P=True), "P must be a positive integer"), (dict(epoch="steps"), "epoch must be one of")):
        with pytest.raises(ValueError, match=message):
            RandomIdentitySampler(train, **{"P": 2, "K": 2, **kwargs})


def test_loader_bad_arguments(tmp_path):
    data = Market1501(write_market_style(tmp_path / "m", market_name))
    with pytest.raises(ValueError, match="batch_size_test must be a positive integer"):
        build_dataloaders(data, P=2, K=2, batch_size_test=0)
    with pytest.raises(ValueError, match="num_workers must be an integer >= 0"):
        build_dataloaders(data, P=2, K=2, num_workers=-1)
    with pytest.raises(ValueError, match="only 4 identities: lower P"):
        build_dataloaders(data, P=16, K=4)


# ---------------------------------------------------------------- sampler properties

def check_epoch(sampler: RandomIdentitySampler, pids: list[int]) -> list[list[int]]:
    "Assert the P×K block structure of one epoch and return the blocks' pids."
    P, K = sampler.P, sampler.K
    order = list(sampler)
    assert len(order) == len(sampler) == sampler.num_batches * P * K
    blocks = [[pids[i] for i in order[b:b + P * K]] for b in range(0, len(order), P * K)]
    for block in blocks:
        persons = block[::K]
        assert len(set(persons)) == P                                 # P distinct identities …
        assert block == [p for p in persons for _ in range(K)]        # … K consecutive images each
    return blocks


counts_strategy = st.lists(st.integers(1, 12), min_size=1, max_size=30)


@settings(max_examples=150, deadline=None)
@given(counts_strategy, st.integers(1, 8), st.integers(1, 6), st.sampled_from(["images", "identities"]), st.integers(0, 3))
def test_sampler_blocks_are_p_identities_times_k(counts, P, K, epoch, seed):
    pids = [10 * p + 3 for p, n in enumerate(counts) for _ in range(n)]   # sparse pids: the sampler needs no relabelling
    train = [Record(str(i), pid, 0) for i, pid in enumerate(pids)]
    assume(len(counts) >= P and P * K <= len(train))   # the errors otherwise: test_sampler_bad_arguments
    sampler = RandomIdentitySampler(train, P, K, seed=seed, epoch=epoch)
    assert sampler.num_batches >= 1
    blocks = check_epoch(sampler, pids)
    per_person = Counter(block[k] for block in blocks for k in range(0, P * K, K))
    groups = {10 * p + 3: (1 if epoch == "identities" else max(1, n // K)) for p, n in enumerate(counts)}
    assert all(per_person[pid] <= groups[pid] for pid in per_person)        # never more groups than a person has
    # B is the most batches the groups can fill
    B = sampler.num_batches
    assert sum(min(g, B) for g in groups.values()) >= P * B
    assert sum(min(g, B + 1) for g in groups.values()) < P * (B + 1)
    # an image repeats within the epoch only for a person with fewer than K images
    for index, times in Counter(sampler).items():
        assert times == 1 or counts[pids[index] // 10] < K


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 9), min_size=2, max_size=24), st.integers(1, 6), st.integers(1, 4))
def test_identities_epoch_uses_each_person_at_most_once(counts, P, K):
    train = [Record(str(i), p, 0) for p, n in enumerate(counts) for i in range(n)]
    assume(len(counts) >= P and P * K <= len(train))
    sampler = RandomIdentitySampler(train, P, K, epoch="identities")
    persons = [train[i].pid for i in list(sampler)[::K]]
    assert len(persons) == len(set(persons)) == (len(counts) // P) * P
    assert len(sampler) == (len(counts) // P) * P * K


def test_identities_epoch_covers_every_identity_once_when_p_divides_n():
    train = [Record(str(i), p, 0) for p in range(12) for i in range(p % 5 + 1)]
    sampler = RandomIdentitySampler(train, P=4, K=3, epoch="identities")
    for epoch in range(3):
        sampler.set_epoch(epoch)
        blocks = check_epoch(sampler, [r.pid for r in train])
        assert Counter(p for block in blocks for p in block) == {p: 3 for p in range(12)}


def test_images_epoch_uses_each_image_at_most_once_for_persons_with_k_images_or_more():
    train = [Record(str(i), p, 0) for p in range(20) for i in range(4 + p % 7)]
    sampler = RandomIdentitySampler(train, P=4, K=4, epoch="images")
    used = Counter(sampler)
    assert max(used.values()) == 1
    assert len(sampler) == sum(n // 4 for n in Counter(r.pid for r in train).values()) * 4   # every group fits here


def test_sampler_is_deterministic_per_seed_and_epoch():
    train = [Record(str(i), p, 0) for p in range(30) for i in range(6)]
    a, b = RandomIdentitySampler(train, 4, 4, seed=7), RandomIdentitySampler(train, 4, 4, seed=7)
    assert list(a) == list(b) == list(a)
    a.set_epoch(3); first = list(a)
    assert first != list(b)                                     # another epoch, another order
    b.set_epoch(3)
    assert list(b) == first                                     # a resumed run reproduces epoch 3
    assert list(RandomIdentitySampler(train, 4, 4, seed=8)) != list(RandomIdentitySampler(train, 4, 4, seed=7))


@pytest.mark.parametrize("groups, P, expected", [([1] * 751, 16, 46), ([1, 1, 1], 3, 1), ([5, 1, 1], 2, 2),
                                                  ([10], 1, 10), ([3, 3, 3, 3], 4, 3), ([9, 1, 1, 1], 2, 3)])
def test_max_batches(groups, P, expected):
    assert max_batches(groups, P) == expected


# ---------------------------------------------------------------- transforms and loaders

def test_transform_shapes_and_switches():
    image = Image.new("RGB", (50, 110), (120, 30, 200))
    assert build_transforms()(image).shape == (3, 384, 128)
    assert build_transforms(256, 128, train=False)(image).shape == (3, 256, 128)
    assert build_transforms(64, 32, flip_p=0, pad=0, erasing_p=0)(image).shape == (3, 64, 32)
    plain = build_transforms(64, 32, flip_p=0, pad=0, erasing_p=0)
    assert [type(t).__name__ for t in plain.transforms] == ["Resize", "ToTensor", "Normalize"]
    assert [type(t).__name__ for t in build_transforms().transforms] == \
        ["Resize", "RandomHorizontalFlip", "Pad", "RandomCrop", "ToTensor", "Normalize", "RandomErasing"]
    assert [type(t).__name__ for t in build_transforms(train=False).transforms] == ["Resize", "ToTensor", "Normalize"]
    for kwargs, message in ((dict(flip_p=2), "flip_p must lie in"), (dict(erasing_p=-0.1), "erasing_p must lie in"),
                            (dict(width=0), "width must be a positive integer"), (dict(pad=1.5), "pad must be an integer")):
        with pytest.raises(ValueError, match=message):
            build_transforms(**kwargs)


def test_flip_and_erasing_do_what_they_say():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 32, 3), dtype=np.uint8))
    test = build_transforms(64, 32, train=False)(image)
    assert torch.allclose(test.mean(dim=(1, 2)), (torch.tensor(np.asarray(image), dtype=torch.float32).mean(dim=(0, 1)) / 255
                                                  - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225]), atol=1e-4)
    flipped = build_transforms(64, 32, flip_p=1, pad=0, erasing_p=0)(image)
    assert torch.equal(flipped, test.flip(-1))
    torch.manual_seed(0)
    erased = build_transforms(64, 32, flip_p=0, pad=0, erasing_p=1)(image)
    assert 0 < (erased != test).any(0).float().mean() <= 0.4 + 1e-6 and ((erased == test) | (erased == 0)).all()


def test_dataloaders_yield_batches_of_the_right_shape(tmp_path):
    data = Market1501(write_market_style(tmp_path / "m", market_name))
    loaders = build_dataloaders(data, 64, 32, P=2, K=4, batch_size_test=4, num_workers=0, seed=1)
    assert len(loaders.train) == loaders.train.sampler.num_batches == 2   # 4 persons, one group of 4 images each
    batches = list(loaders.train)
    for images, pids, camids in batches:
        assert images.shape == (8, 3, 64, 32) and images.dtype == torch.float32
        assert pids.shape == camids.shape == (8,)
        assert len(set(pids.tolist())) == 2
    loaders.train.sampler.set_epoch(1)
    assert [p.tolist() for _, p, _ in loaders.train] != [p.tolist() for _, p, _ in batches]
    query = list(loaders.query)
    assert [x.shape[0] for x, _, _ in query] == [4, 4, 1]
    assert torch.cat([p for _, p, _ in query]).tolist() == [r.pid for r in data.query]   # file order kept
    assert sum(x.shape[0] for x, _, _ in loaders.gallery) == 21
    x, pid, camid, path = ReIDImages(data.gallery, build_transforms(64, 32, train=False), return_path=True)[0]
    assert (x.shape, pid, camid, path) == ((3, 64, 32), data.gallery[0].pid, data.gallery[0].camid, data.gallery[0].path)


def test_reads_what_the_synthetic_generator_writes(tmp_path):
    synthetic = pytest.importorskip("deepminer.synthetic")
    root = synthetic.make_synthetic_reid(tmp_path / "synthetic", seed=0, progress=False, train_ids=4, test_ids=4,
                                         cameras=3, max_cameras_per_id=3, distractors=2, junk=2)
    data, caught = quiet(lambda: build_dataset("synthetic", root))
    assert caught == []
    counts = data.counts()
    assert counts["train"]["ids"] == 4 and counts["query"]["ids"] == 4
    assert counts["gallery"]["ids"] == 5                                                   # 4 persons + distractors
    manifest = __import__("json").loads((root / "synthetic.json").read_text())["counts"]
    assert counts["train"]["images"] == manifest["bounding_box_train"]
    assert counts["gallery"]["images"] == manifest["bounding_box_test"] - 2               # junk dropped


def test_synthetic_part_labels_are_never_read_as_images(tmp_path):
    from deepminer.synthetic import make_synthetic_reid
    root = make_synthetic_reid(tmp_path / "syn", train_ids=4, test_ids=4, cameras=3, distractors=2, junk=1, progress=False)
    for image in (root / "query").iterdir():      # parts/ still has the whole layout (of label maps)
        image.unlink()
    (root / "query").rmdir()
    with pytest.raises(FileNotFoundError) as err:
        build_dataset("market1501", root)
    assert "lacks query/" in str(err.value) and "parts" not in str(err.value)   # no hint towards parts/
    with pytest.raises(ValueError, match="holds the part labels of the synthetic set"):
        build_dataset("market1501", root / "parts")
