"""Each dataset loader on a tiny fixture in the dataset's published layout, layout detection, and
the errors for folders that are not one."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cion_ray.errors import CionError
from cion_ray.evaluate.datasets import detect_dataset, load_dataset


def write_images(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, n in enumerate(names):
        Image.fromarray(np.full((16, 8, 3), 10 * i % 255, np.uint8)).save(folder / n)


def market_like(root: Path, train: list[str], query: list[str], test: list[str]) -> Path:
    write_images(root / "bounding_box_train", train)
    write_images(root / "query", query)
    write_images(root / "bounding_box_test", test)
    return root


def labels(s) -> list[tuple[str, int, int]]:
    return [(Path(f).name, int(p), int(c)) for f, p, c in zip(s.files, s.pids, s.cams)]


def test_market1501(tmp_path):
    root = market_like(tmp_path / "Market-1501-v15.09.15",
                       ["0002_c1s1_000451_03.jpg", "0002_c2s1_000551_01.jpg", "0007_c3s3_077419_03.jpg"],
                       ["0001_c1s1_001051_00.jpg", "0003_c4s6_015641_00.jpg"],
                       ["-1_c1s1_000401_03.jpg", "0000_c6s1_000076_01.jpg", "0001_c2s1_000301_01.jpg",
                        "0003_c1s6_015971_02.jpg"])
    (root / "bounding_box_test" / "Thumbs.db").write_bytes(b"x")  # the real archive has these
    d = load_dataset(None, str(root))
    assert d.name == "market1501" and d.root == str(root)
    assert labels(d.query) == [("0001_c1s1_001051_00.jpg", 1, 1), ("0003_c4s6_015641_00.jpg", 3, 4)]
    # junk (-1) dropped, the distractor (0000) kept in the gallery
    assert labels(d.gallery) == [("0000_c6s1_000076_01.jpg", 0, 6), ("0001_c2s1_000301_01.jpg", 1, 2),
                                 ("0003_c1s6_015971_02.jpg", 3, 1)]
    assert labels(d.train) == [("0002_c1s1_000451_03.jpg", 2, 1), ("0002_c2s1_000551_01.jpg", 2, 2),
                               ("0007_c3s3_077419_03.jpg", 7, 3)]
    assert d.train.identities == 2 and d.summary()["gallery"] == {"images": 3, "identities": 2, "cameras": 3}
    assert load_dataset("market1501", str(root), with_train=False).train is None
    assert load_dataset("market1501", str(tmp_path)).root == str(root), "a named dataset looks one folder down"


def test_dukemtmc(tmp_path):
    root = market_like(tmp_path / "DukeMTMC-reID", ["0001_c2_f0046182.jpg", "0001_c5_f0051781.jpg"],
                       ["0005_c2_f0046985.jpg"], ["0005_c5_f0051921.jpg", "0000_c1_f0002541.jpg"])
    d = load_dataset(None, str(root))
    assert d.name == "dukemtmc"
    assert labels(d.query) == [("0005_c2_f0046985.jpg", 5, 2)]
    assert labels(d.gallery) == [("0000_c1_f0002541.jpg", 0, 1), ("0005_c5_f0051921.jpg", 5, 5)]
    assert labels(d.train) == [("0001_c2_f0046182.jpg", 1, 2), ("0001_c5_f0051781.jpg", 1, 5)]
    with pytest.raises(CionError, match=r"query: 1 file names are not Market-style .*0005_c2_f0046985\.jpg"):
        load_dataset("market1501", str(root))


def test_cuhk03np_detected_and_labeled(tmp_path):
    root = tmp_path / "cuhk03-np"
    market_like(root / "detected", ["0001_c1_1.png", "0001_c2_6.png"], ["0003_c1_1.png"], ["0003_c2_7.png"])
    market_like(root / "labeled", ["0002_c1_1.png"], ["0004_c2_6.png"], ["0004_c1_2.png", "0005_c1_3.png"])
    d = load_dataset(None, str(root))
    assert (d.name, d.root) == ("cuhk03np", str(root / "detected"))
    assert labels(d.query) == [("0003_c1_1.png", 3, 1)] and labels(d.gallery) == [("0003_c2_7.png", 3, 2)]
    assert len(d.train) == 2
    lab = load_dataset("cuhk03np", str(root), cuhk03_protocol="labeled")
    assert lab.root == str(root / "labeled") and labels(lab.gallery) == [("0004_c1_2.png", 4, 1), ("0005_c1_3.png", 5, 1)]
    assert load_dataset(None, str(root / "labeled")).name == "cuhk03np", "a protocol folder given directly"
    with pytest.raises(CionError, match="protocol 'both'"):
        load_dataset("cuhk03np", str(root), cuhk03_protocol="both")


def msmt17(root: Path, version: str) -> Path:
    train_dir, test_dir = ("train", "test") if version == "V1" else ("mask_train_v2", "mask_test_v2")
    lists = {"train": ["0000/0000_000_01_0303morning_0015_0.jpg 0", "0001/0001_004_14_0303morning_0031_1.jpg 1"],
             "val": ["0002/0002_000_05_0303noon_0102_0.jpg 2"],
             "query": ["0000/0000_000_01_0303morning_0016_0.jpg 0", "0001/0001_003_07_0113morning_0871_0.jpg 1"],
             "gallery": ["0000/0000_001_11_0303afternoon_0021_1.jpg 0", "0001/0001_005_15_0113noon_0993_2.jpg 1"]}
    for split, lines in lists.items():
        folder = root / (train_dir if split in ("train", "val") else test_dir)
        for line in lines:
            write_images(folder / line.split("/")[0], [line.split("/")[1].split()[0]])
        (root / f"list_{split}.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.parametrize("version", ["V1", "V2"])
def test_msmt17(tmp_path, version):
    root = msmt17(tmp_path / "msmt17" / f"MSMT17_{version}", version)
    d = load_dataset(None, str(tmp_path / "msmt17"))  # the version folder is found one level down
    assert (d.name, d.root) == (f"msmt17_{version.lower()}", str(root))
    test_dir = "test" if version == "V1" else "mask_test_v2"
    assert d.query.files[0] == str(root / test_dir / "0000" / "0000_000_01_0303morning_0016_0.jpg")
    assert d.query.cams.tolist() == [1, 7] and d.gallery.cams.tolist() == [11, 15]
    assert d.gallery.pids.tolist() == [0, 1] and d.train.pids.tolist() == [0, 1]
    assert all(Path(f).exists() for s in (d.train, d.query, d.gallery) for f in s.files)
    both = load_dataset("msmt17", str(root), msmt17_train="train+val")
    assert both.train.pids.tolist() == [0, 1, 2] and both.train.cams.tolist() == [1, 14, 5]


def test_msmt17_bad_list_line_is_named(tmp_path):
    root = msmt17(tmp_path / "MSMT17_V1", "V1")
    (root / "list_gallery.txt").write_text("0000/0000_000_01_0303morning_0015_0.jpg 0\n0001/broken.jpg\n")
    with pytest.raises(CionError, match=r"list_gallery.txt: line 2 is not .*'0001/broken.jpg'"):
        load_dataset("msmt17", str(root))
    (root / "list_query.txt").unlink()
    with pytest.raises(CionError, match="no list_query.txt"):
        load_dataset("msmt17", str(root))


def test_synthetic_world_and_its_split(tmp_path):
    world = tmp_path / "world"
    market_like(world / "reid", ["0002_c1s1_000001_01.jpg"], ["0005_c1s1_000002_01.jpg"],
                ["0005_c2s1_000003_01.jpg", "0006_c3s1_000004_01.jpg"])
    (world / "identities.json").write_text("{}")
    for root in (world, world / "reid"):
        d = load_dataset(None, str(root))
        assert (d.name, d.root) == ("synthetic", str(world / "reid"))
        assert labels(d.gallery) == [("0005_c2s1_000003_01.jpg", 5, 2), ("0006_c3s1_000004_01.jpg", 6, 3)]
    assert load_dataset("synthetic", str(world)).root == str(world / "reid")


def test_folders_that_are_not_datasets(tmp_path):
    with pytest.raises(CionError, match="nowhere: not found"):
        load_dataset(None, str(tmp_path / "nowhere"))
    (tmp_path / "photos").mkdir()
    with pytest.raises(CionError, match="photos: not a ReID dataset folder"):
        detect_dataset(str(tmp_path / "photos"))
    with pytest.raises(CionError, match="unknown dataset 'market'"):
        load_dataset("market", str(tmp_path / "photos"))
    with pytest.raises(CionError, match="photos: no query/ folder"):
        load_dataset("dukemtmc", str(tmp_path / "photos"))
    both = tmp_path / "both"
    market_like(both / "a", [], ["0001_c1s1_000001_01.jpg"], ["0001_c2s1_000002_01.jpg"])
    market_like(both / "b", [], ["0001_c1_f0000001.jpg"], ["0001_c2_f0000002.jpg"])
    with pytest.raises(CionError, match=r"both: holds several datasets \(a, b\)"):
        load_dataset(None, str(both))
    empty = market_like(tmp_path / "empty", [], [], [])
    with pytest.raises(CionError, match="empty/query: no images"):
        load_dataset(None, str(empty))
    odd = market_like(tmp_path / "odd", [], ["person1.jpg"], ["person2.jpg"])
    with pytest.raises(CionError, match="'person1.jpg' follow none of the Market-1501, DukeMTMC-reID or CUHK03-NP"):
        load_dataset(None, str(odd))
