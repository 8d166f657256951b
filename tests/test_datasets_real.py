"""CUHK03 from its official download (cuhk-03.mat, MATLAB v7.3 = HDF5) under both protocols, MSMT17's validation
option through build_dataset, build_dataset's options and '+' names, and combine_datasets, on fixtures written here."""
import itertools
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import savemat

import deepminer.data as data_module
from deepminer.data import (CUHK03, MSMT17, CombinedDataset, DukeMTMCreID, Market1501, RandomIdentitySampler,
                            build_dataloaders, build_dataset, combine_datasets, cuhk03_image_name, dataset_options,
                            extract_cuhk03, find_cuhk03_raw, parse_dataset_options, read_cuhk03_testsets)
from test_data import duke_name, market_name, quiet, write_cuhk03_mat, write_market_style, write_msmt17

h5py = pytest.importorskip("h5py")

# ---------------------------------------------------------------- a small cuhk-03.mat in the official structure

PEOPLE = (3, 2, 4, 2, 3)                       # persons per camera pair
EMPTY = {(1, 2, 7), (1, 2, 8), (3, 4, 0), (5, 1, 9)}   # (pair, person, column) cells left empty, as in the real file
EVERYONE = [(pair, person) for pair, n in enumerate(PEOPLE, start=1) for person in range(1, n + 1)]
TEST_PEOPLE = 3


def classic_test_people(s: int) -> list[tuple[int, int]]:
    "The (pair, person) rows of classic split `s` of the fixture."
    return [EVERYONE[(3 * s + k) % len(EVERYONE)] for k in range(TEST_PEOPLE)]


def pixels(pair, person, column, kind, height=12, width=6):
    """The (height, width, 3) uint8 image of a cell: red from the person, green from the column and kind, blue rising
    down the rows and one bright pixel at the top-left: a transposed, flipped or channel-swapped copy differs."""
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 0] = 30 * pair + person
    image[..., 1] = 20 * column + (5 if kind == "detected" else 0)
    image[..., 2] = np.arange(height)[:, None] * 15
    image[0, 0] = 255
    return image


def write_release(root: Path, folder: str | None = "cuhk03_release", people=PEOPLE, empty=EMPTY) -> Path:
    """root[/folder]/cuhk-03.mat as MATLAB 7.3 writes it: a 512-byte user block with the MATLAB header, cell contents
    under #refs#, cell arrays of object references, every array with its axes reversed, [] as a 2-element uint64
    array marked MATLAB_empty; `labeled` and `detected` 5x1 cells of (persons x 10) cells; `testsets` 20x1 cells."""
    path = (root / folder if folder else root) / "cuhk-03.mat"
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w", userblock_size=512) as f:
        refs, counter = f.create_group("#refs#"), itertools.count()

        def store(array, cell_class="uint8"):
            dataset = refs.create_dataset(f"r{next(counter)}", data=array)
            dataset.attrs["MATLAB_class"] = np.bytes_(cell_class)
            return dataset.ref

        def empty_cell():
            ref = store(np.zeros(2, np.uint64), "double")
            f[ref].attrs["MATLAB_empty"] = np.uint8(1)
            return ref

        for kind in ("labeled", "detected"):
            pairs = []
            for pair, n in enumerate(people, start=1):
                cells = np.empty((n, 10), dtype=h5py.ref_dtype)
                for person, column in itertools.product(range(1, n + 1), range(10)):
                    cells[person - 1, column] = (empty_cell() if (pair, person, column) in empty
                                                 else store(pixels(pair, person, column, kind).T))
                pairs.append(store(cells.T, "cell"))
            f.create_dataset(kind, data=np.array(pairs, dtype=h5py.ref_dtype).reshape(1, -1))
        splits = [store(np.array(classic_test_people(s), dtype=np.float64).T, "double") for s in range(20)]
        f.create_dataset("testsets", data=np.array(splits, dtype=h5py.ref_dtype).reshape(1, -1))
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2018 HDF5 schema 1.00 ."
    with open(path, "r+b") as f:
        f.write(header.ljust(116) + b"\0" * 8 + b"\x00\x02IM")
    return root


def expected_names(people=PEOPLE, empty=EMPTY) -> set[str]:
    return {cuhk03_image_name(pair, person, column) for pair, n in enumerate(people, start=1)
            for person in range(1, n + 1) for column in range(10) if (pair, person, column) not in empty}


def write_config(root: Path, kind: str, test=((1, 1), (3, 2), (5, 3))):
    "cuhk03_new_protocol_config_<kind>.mat over the fixture's images: `test` people tested, one query per view."
    names, labels, idx = [], [], {"train": [], "query": [], "gallery": []}
    for pair, n in enumerate(PEOPLE, start=1):
        for person in range(1, n + 1):
            firsts = set()
            for column in range(10):
                if (pair, person, column) in EMPTY:
                    continue
                view = column // 5
                names.append(cuhk03_image_name(pair, person, column)); labels.append(100 * pair + person)
                split = "train" if (pair, person) not in test else ("gallery" if view in firsts else "query")
                firsts.add(view)
                idx[split].append(len(names))
    filelist = np.empty((len(names), 1), dtype=object)
    filelist[:, 0] = names
    as_column = lambda v: np.array(v, dtype=np.float64).reshape(-1, 1)
    savemat(root / f"cuhk03_new_protocol_config_{kind}.mat",
            {"filelist": filelist, "labels": as_column(labels), **{f"{s}_idx": as_column(v) for s, v in idx.items()}})
    return root


def one_line(err) -> str:
    message = str(err.value)
    assert "\n" not in message, message
    return message


# ---------------------------------------------------------------- extraction

@pytest.mark.parametrize("kind", ["labeled", "detected"])
def test_extraction_names_counts_and_pixels(tmp_path, kind, capsys):
    root = write_release(tmp_path / "cuhk03")
    data = CUHK03(root, kind=kind, protocol="classic", split=0, progress=False)
    folder = root / f"images_{kind}"
    names = {p.name for p in folder.iterdir()}
    assert names == expected_names()                                # one PNG per non-empty cell, official names
    assert len(names) == 10 * sum(PEOPLE) - len(EMPTY)
    assert "1_002_2_08.png" not in names and "1_002_2_07.png" in names
    for pair, person, column in ((1, 1, 0), (3, 4, 9), (5, 3, 4), (2, 2, 5)):
        image = Image.open(folder / cuhk03_image_name(pair, person, column))
        assert image.mode == "RGB" and image.size == (6, 12)        # width 6, height 12: upright
        np.testing.assert_array_equal(np.asarray(image), pixels(pair, person, column, kind))
    assert {Path(r.path).parent for r in data.train + data.query} == {folder}
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and f"extracting the {kind} images" in out
    assert not list(root.glob(f".images_{kind}.partial*"))           # the temporary folder was renamed
    assert not (root / f"images_{'detected' if kind == 'labeled' else 'labeled'}").exists()   # only the kind asked for


def test_raw_file_directly_in_root_and_progress_bar(tmp_path, capsys):
    root = write_release(tmp_path / "c", folder=None)
    assert find_cuhk03_raw(root) == root / "cuhk-03.mat"
    CUHK03(root, protocol="classic")                                  # progress bar on stderr by default
    assert "CUHK03 labeled" in capsys.readouterr().err
    assert find_cuhk03_raw(tmp_path) is None


def test_reuse_does_not_extract_again(tmp_path, capsys, monkeypatch):
    root = write_release(tmp_path / "c")
    first = CUHK03(root, protocol="classic", split=2, progress=False)
    capsys.readouterr()
    stamps = {p.name: p.stat().st_mtime_ns for p in (root / "images_labeled").iterdir()}
    monkeypatch.setattr(data_module, "_write_cuhk03_images", lambda *a: pytest.fail("extracted again"))
    again = CUHK03(root, protocol="classic", split=2, progress=False)
    assert again.counts() == first.counts() and capsys.readouterr().out == ""
    assert {p.name: p.stat().st_mtime_ns for p in (root / "images_labeled").iterdir()} == stamps


def test_killed_extraction_is_redone(tmp_path, monkeypatch):
    root = write_release(tmp_path / "c")
    saved, real_save = [], Image.Image.save

    def dying_save(self, path, *args, **kwargs):                      # the process dies after 5 images
        if len(saved) == 5:
            raise KeyboardInterrupt
        saved.append(path)
        return real_save(self, path, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        CUHK03(root, protocol="classic", progress=False)
    monkeypatch.undo()
    assert not (root / "images_labeled").exists()                     # no half-filled images folder
    assert len(list((root / ".images_labeled.partial").iterdir())) == 5
    data = CUHK03(root, protocol="classic", progress=False)
    assert {p.name for p in (root / "images_labeled").iterdir()} == expected_names()
    assert not (root / ".images_labeled.partial").exists()
    assert data.counts()["query"]["ids"] == TEST_PEOPLE


def test_leftover_partial_folder_is_replaced(tmp_path):
    root = write_release(tmp_path / "c")
    partial = root / ".images_detected.partial"
    partial.mkdir()
    (partial / "1_001_1_01.png").write_bytes(b"truncated")            # as a killed process leaves it
    (partial / "stray.png").write_bytes(b"")
    images = extract_cuhk03(find_cuhk03_raw(root), "detected", root / "images_detected", progress=False)
    assert {p.name for p in images.iterdir()} == expected_names()
    np.testing.assert_array_equal(np.asarray(Image.open(images / "1_001_1_01.png")), pixels(1, 1, 0, "detected"))


def test_extraction_errors_are_one_line(tmp_path, monkeypatch):
    root = tmp_path / "c"
    (root / "cuhk03_release").mkdir(parents=True)
    (root / "cuhk03_release" / "cuhk-03.mat").write_bytes(b"MATLAB 5.0 MAT-file, not HDF5" + b"\0" * 200)
    with pytest.raises(ValueError) as err:
        CUHK03(root, protocol="classic")
    assert "cannot read" in one_line(err) and "MATLAB v7.3" in str(err.value)
    assert not (root / ".images_labeled.partial").exists() and not (root / "images_labeled").exists()
    with h5py.File(root / "cuhk03_release" / "cuhk-03.mat", "w") as f:
        f.create_dataset("labeled", data=np.zeros((1, 5)))
    with pytest.raises(ValueError) as err:
        CUHK03(root, protocol="classic")
    assert "has no cell array 'testsets'" in one_line(err)
    with pytest.raises(ValueError) as err:
        extract_cuhk03(root / "cuhk03_release" / "cuhk-03.mat", "labeled", root / "images_labeled")
    assert "has no cell array 'labeled'" in one_line(err)
    monkeypatch.setitem(sys.modules, "h5py", None)                    # h5py not installed
    with pytest.raises(ImportError) as err:
        CUHK03(root, protocol="classic")
    assert "pip install h5py" in one_line(err)


# ---------------------------------------------------------------- the classic protocol

@pytest.mark.parametrize("kind", ["labeled", "detected"])
@pytest.mark.parametrize("split", [0, 7, 19])
def test_classic_splits(tmp_path, kind, split):
    root = write_release(tmp_path / "c")
    data = CUHK03(root, kind=kind, protocol="classic", split=split, progress=False)
    test_pids = {1000 * pair + person for pair, person in classic_test_people(split)}
    assert {r.pid for r in data.query} == test_pids and data.query == data.gallery
    assert data.num_train_ids == len(EVERYONE) - TEST_PEOPLE
    assert set(data.train_pids) == {1000 * pair + person for pair, person in EVERYONE} - test_pids
    assert sorted(data.train_pids) == data.train_pids
    test_images = sum(10 - sum((p, q, c) in EMPTY for c in range(10)) for p, q in classic_test_people(split))
    assert data.counts()["query"] == {"ids": TEST_PEOPLE, "images": test_images, "cameras": 2}
    assert len(data.train) + test_images == len(expected_names())
    for record in data.query:
        view = int(Path(record.path).name.split("_")[2])
        assert record.camid == view - 1
    assert data.name == f"CUHK03 ({kind}, classic split {split})" and data.published is None
    assert (data.kind, data.protocol, data.split) == (kind, "classic", split)
    assert [sorted(s) for s in read_cuhk03_testsets(find_cuhk03_raw(root))] == [sorted(classic_test_people(s)) for s in range(20)]


def test_classic_protocol_errors(tmp_path):
    root = write_release(tmp_path / "c")
    for split, message in ((20, "split must be 0..19"), (-1, "split must be 0..19"), ("3", "must be an integer 0..19"),
                           (True, "must be an integer 0..19")):
        with pytest.raises(ValueError) as err:
            CUHK03(root, protocol="classic", split=split)
        assert message in one_line(err)
    assert not (root / "images_labeled").exists()                     # options checked before any extraction
    np_root = tmp_path / "np"
    write_market_style(np_root / "labeled", lambda pid, cam, frame: f"{pid:04d}_c{cam}_{frame}.png", cams=(1, 2),
                       junk=0, distractors=0)
    with pytest.raises(FileNotFoundError) as err:
        CUHK03(np_root, protocol="classic")
    assert "protocol='classic' needs the official cuhk-03.mat" in one_line(err)


# ---------------------------------------------------------------- the 767/700 protocol and the official download

def test_new_protocol_without_its_config_says_what_is_missing(tmp_path):
    root = write_release(tmp_path / "c")
    for kind in ("labeled", "detected"):
        with pytest.raises(FileNotFoundError) as err:
            CUHK03(root, kind=kind)
        message = one_line(err)
        assert f"needs cuhk03_new_protocol_config_{kind}.mat, which the official download does not contain" in message
        assert f"put it in {root}" in message and "protocol='classic'" in message
    assert not (root / "images_labeled").exists()


@pytest.mark.parametrize("kind", ["labeled", "detected"])
def test_new_protocol_from_the_official_download(tmp_path, kind, capsys):
    root = write_config(write_release(tmp_path / "c"), kind)
    data = CUHK03(root, kind=kind, progress=False)
    assert "extracting" in capsys.readouterr().out
    counts = data.counts()
    assert counts["train"]["ids"] == len(EVERYONE) - 3 and counts["query"] == {"ids": 3, "images": 6, "cameras": 2}
    assert counts["query"]["images"] + counts["gallery"]["images"] + counts["train"]["images"] == len(expected_names())
    assert {r.pid for r in data.query} == {101, 302, 503}
    record = data.query[0]
    np.testing.assert_array_equal(np.asarray(Image.open(record.path)), pixels(1, 1, 0, kind))
    assert data.name == f"CUHK03 ({kind})" and data.published == f"cuhk03-{kind}"
    assert CUHK03(root, kind=kind).counts() == counts and capsys.readouterr().out == ""


def test_new_protocol_config_with_images_from_another_toolkit_needs_no_raw_file(tmp_path):
    root = write_cuhk03_mat(tmp_path / "c", "labeled")                # test_data's fixture: config + images_labeled/
    write_release(root)                                               # plus the official file: nothing re-extracted
    before = sorted(p.name for p in (root / "images_labeled").iterdir())
    CUHK03(root, progress=False)
    assert sorted(p.name for p in (root / "images_labeled").iterdir()) == before


def test_cuhk03_np_layout_wins_over_the_raw_file_for_the_new_protocol(tmp_path):
    root = write_release(tmp_path / "c")
    write_market_style(root / "detected", lambda pid, cam, frame: f"{pid:04d}_c{cam}_{frame}.png", cams=(1, 2),
                       junk=0, distractors=0)
    data = CUHK03(root, kind="detected")
    assert data.num_train_ids == 4 and not (root / "images_detected").exists()


def test_cuhk03_option_errors(tmp_path):
    root = write_release(tmp_path / "c")
    cases = [(dict(kind="both"), "kind must be one of labeled, detected"),
             (dict(protocol="old"), "protocol must be 'new' (767/700) or 'classic'"),
             (dict(labeled=False, kind="labeled"), "labeled=False contradicts kind='labeled'"),
             (dict(split=3), "split=3 needs protocol='classic'")]
    for options, message in cases:
        with pytest.raises(ValueError) as err:
            CUHK03(root, **options)
        assert message in one_line(err)
    assert CUHK03(root, labeled=False, protocol="classic", progress=False).kind == "detected"
    assert CUHK03(root, labeled=False, kind="detected", protocol="classic", progress=False).kind == "detected"


# ---------------------------------------------------------------- build_dataset: options

def test_build_dataset_takes_each_readers_options(tmp_path):
    root = write_release(tmp_path / "c")
    data = build_dataset("CUHK03", root, kind="detected", protocol="classic", split=4, progress=False)
    assert data.name == "CUHK03 (detected, classic split 4)"
    write_msmt17(tmp_path / "m" / "MSMT17_V1")
    assert build_dataset("msmt17", tmp_path / "m").counts()["train"]["images"] == 9
    assert build_dataset("msmt17", tmp_path / "m", with_val=True).counts()["train"]["images"] == 15
    assert build_dataset("msmt17", tmp_path / "m", with_val=True).published == "msmt17+val"
    assert set(dataset_options("cuhk03")) == {"labeled", "check_counts", "kind", "protocol", "split", "progress"}
    assert dataset_options("MSMT17") == {"with_val": False, "check_counts": None}
    assert dataset_options("custom") == {}


def test_build_dataset_refuses_an_option_in_one_line(tmp_path):
    market = write_market_style(tmp_path / "m", market_name)
    for name, option, message in (("market1501", "kind", "market1501 takes no option 'kind'; options: check_counts"),
                                  ("custom", "with_val", "custom takes no option 'with_val'; options: none"),
                                  ("msmt17", "split", "msmt17 takes no option 'split'; options: check_counts, with_val")):
        with pytest.raises(ValueError) as err:
            build_dataset(name, market, **{option: 1})
        assert message in one_line(err)


def test_parse_dataset_options():
    assert parse_dataset_options(["kind=detected", "protocol=classic", "split=12", "with_val=True",
                                  "check_counts=none"]) == {"kind": "detected", "protocol": "classic", "split": 12,
                                                            "with_val": True, "check_counts": None}
    assert parse_dataset_options([]) == {}
    for bad in ("kind", "=3", "two words=1"):
        with pytest.raises(ValueError, match="expected KEY=VALUE"):
            parse_dataset_options([bad])


# ---------------------------------------------------------------- several sets at once

def market_and_duke(tmp_path):
    market = Market1501(write_market_style(tmp_path / "market", market_name, train=(2, 7, 9), cams=(1, 2, 3)))
    duke = DukeMTMCreID(write_market_style(tmp_path / "duke", duke_name, train=(2, 7, 11, 12), test=(1, 5),
                                           cams=(1, 2), junk=0, distractors=1))
    return market, duke


def test_combine_relabels_identities_and_separates_cameras(tmp_path):
    market, duke = market_and_duke(tmp_path)
    both = combine_datasets([market, duke])
    assert isinstance(both, CombinedDataset)
    assert both.num_train_ids == 3 + 4 and both.train_pids == list(range(7))
    assert (both.label_offsets, both.camera_offsets) == ([0, 3], [0, 3])
    assert len(both.train) == len(market.train) + len(duke.train)
    for record, original in zip(both.train, market.train + duke.train):
        assert record.path == original.path
    market_labels = {r.pid for r in both.train[:len(market.train)]}
    duke_labels = {r.pid for r in both.train[len(market.train):]}
    assert market_labels == {0, 1, 2} and duke_labels == {3, 4, 5, 6}   # Market's person 2 and Duke's person 2 differ
    assert {r.camid for r in both.train[len(market.train):]} == {3, 4}
    assert [both.train_origin[label] for label in (0, 3, 6)] == [(0, 2), (1, 2), (1, 12)]
    assert (both.query, both.gallery) == (market.query, market.gallery)
    assert both.datasets == [market, duke] and both.test == 0 and both.name == "Market1501 + DukeMTMCreID"
    other = combine_datasets([market, duke], test=1, name="mixed")
    assert [r.camid for r in other.query] == [r.camid + 3 for r in duke.query] and other.name == "mixed"
    assert {r.pid for r in other.gallery} == {r.pid for r in duke.gallery}


def test_combined_set_trains_like_any_other(tmp_path):
    market, duke = market_and_duke(tmp_path)
    both = combine_datasets([market, duke])
    sampler = RandomIdentitySampler(both.train, P=4, K=2)
    for batch in sampler.batches():
        assert len({both.train[i].pid for i in batch}) == 4
    loaders = build_dataloaders(both, height=16, width=8, P=4, K=2, num_workers=0, batch_size_test=8)
    images, pids, camids = next(iter(loaders.train))[:3]
    assert images.shape == (8, 3, 16, 8) and int(pids.max()) < both.num_train_ids
    assert torch.all(camids < 5)


def test_combine_errors_and_warnings(tmp_path):
    market, duke = market_and_duke(tmp_path)
    with pytest.raises(ValueError, match="no dataset to combine"):
        combine_datasets([])
    for test in (2, -1, "0"):
        with pytest.raises(ValueError, match="test must index one of the 2 datasets"):
            combine_datasets([market, duke], test=test)
    _, messages = quiet(lambda: combine_datasets([market, duke]))
    assert messages == []


def test_build_dataset_several_names(tmp_path):
    market, duke = market_and_duke(tmp_path)
    cuhk = write_release(tmp_path / "cuhk")
    roots = [tmp_path / "market", tmp_path / "duke"]
    joined = build_dataset("market1501+dukemtmcreid", roots)
    listed = build_dataset(["Market-1501", "DukeMTMC-reID"], [str(r) for r in roots])
    assert joined.counts() == listed.counts() == combine_datasets([market, duke]).counts()
    assert build_dataset(["market1501+dukemtmcreid"], roots).num_train_ids == 7
    three = build_dataset("market1501 + dukemtmcreid + cuhk03", roots + [cuhk], kind="detected",
                          protocol="classic", split=1, progress=False, check_counts=False)
    assert three.datasets[2].name == "CUHK03 (detected, classic split 1)"
    assert three.num_train_ids == 7 + len(EVERYONE) - TEST_PEOPLE and three.camera_offsets == [0, 3, 5]
    with pytest.raises(ValueError) as err:
        build_dataset("market1501+dukemtmcreid", roots, with_val=True)
    assert "no dataset of market1501+dukemtmcreid takes the option 'with_val'" in one_line(err)
    with pytest.raises(ValueError) as err:
        build_dataset("market1501+dukemtmcreid", roots[0])
    assert "2 dataset(s) (market1501+dukemtmcreid) but 1 root(s)" in one_line(err)
    with pytest.raises(ValueError) as err:
        build_dataset("market1501+viper", roots)
    assert "unknown dataset 'viper'" in one_line(err)
    with pytest.raises(ValueError) as err:
        build_dataset("cuhk03", [cuhk, cuhk])
    assert "1 dataset(s) (cuhk03) but 2 root(s)" in one_line(err)
