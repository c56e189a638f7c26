"""Dataset loaders parse each real layout exactly: counts, pids, cameras, junk/distractor rules,
timestamps, and one clear error for unknown names, missing folders and malformed names."""
from __future__ import annotations

from pathlib import Path

import pytest

from tal_infer.errors import DataError
from tal_train.data import build_dataset, discover_datasets, resolve_dataset
from tal_train.data.records import format_summaries


def _triples(records):
    return sorted((Path(r.path).name, r.pid, r.camid) for r in records)


def test_market1501_rules_and_counts(data_root):
    ds = build_dataset("market1501", data_root / "Market-1501-v15.09.15")
    assert ds.name == "market1501"
    assert _triples(ds.train) == [("0002_c1s1_000451_03.jpg", 2, 0), ("0002_c2s1_000301_01.jpg", 2, 1),
                                  ("0007_c3s2_012345_02.jpg", 7, 2)]
    # junk (-1) dropped, distractor (0000) kept in the gallery only
    assert _triples(ds.gallery) == [("0000_c1s1_000001_01.jpg", 0, 0),
                                    ("0003_c4s1_000200_01.jpg", 3, 3),
                                    ("0003_c5s3_000250_02.jpg", 3, 4),
                                    ("0004_c6s1_000999_01.jpg", 4, 5)]
    assert _triples(ds.query) == [("0003_c1s1_000100_00.jpg", 3, 0), ("0004_c2s1_002500_00.jpg", 4, 1)]
    assert {r.domain for r in ds.train + ds.query + ds.gallery} == {"market1501"}
    stamps = {Path(r.path).name: r.timestamp for r in ds.train}
    assert stamps["0002_c1s1_000451_03.jpg"] == pytest.approx(451 / 25)
    assert stamps["0007_c3s2_012345_02.jpg"] == pytest.approx(12345 / 25)
    assert all(Path(r.path).is_file() and Path(r.path).is_absolute() for r in ds.gallery)
    assert ds.summary() == {"train": {"ids": 2, "images": 3, "cameras": 3},
                            "query": {"ids": 2, "images": 2, "cameras": 2},
                            "gallery": {"ids": 3, "images": 4, "cameras": 4}}


@pytest.mark.parametrize("version", ["V1", "V2"])
def test_msmt17_lists_both_versions(tmp_path, layouts, version):
    root = layouts.write_msmt17(tmp_path / f"MSMT17_{version}", version)
    ds = build_dataset("msmt17", root)
    train_dir = "train" if version == "V1" else "mask_train_v2"
    # train = list_train + list_val; pid 0 is a real identity in MSMT17
    assert _triples(ds.train) == [("0000_000_01_0303morning_0015_0.jpg", 0, 0),
                                  ("0000_001_05_0303noon_0020_1.jpg", 0, 4),
                                  ("0001_000_15_0303afternoon_0100_0.jpg", 1, 14),
                                  ("0002_000_02_0303morning_0300_0.jpg", 2, 1)]
    assert all(Path(r.path).parent.parent.name == train_dir for r in ds.train)
    assert all(Path(r.path).is_file() for r in ds.train + ds.query + ds.gallery)
    assert _triples(ds.query) == [("0000_000_03_0113morning_0008_0.jpg", 0, 2)]
    assert _triples(ds.gallery) == [("0000_001_04_0113noon_0010_0.jpg", 0, 3),
                                    ("0001_000_03_0113noon_0011_1.jpg", 1, 2)]
    assert all(r.timestamp is None and r.domain == "msmt17" for r in ds.train)


def test_cuhk03_np_detected(data_root):
    ds = build_dataset("cuhk03", data_root / "cuhk03-np" / "detected")
    assert _triples(ds.train) == [("0001_c1_1.png", 1, 0), ("0001_c2_6.png", 1, 1),
                                  ("0005_c1_2.png", 5, 0)]
    assert len(ds.query) == 2 and len(ds.gallery) == 3
    # CUHK03-NP names carry an image index, not a time
    assert all(r.timestamp is None for r in ds.train + ds.query + ds.gallery)


def test_cuhk03_parent_folder_points_to_subset(data_root):
    with pytest.raises(DataError, match=r"detected"):
        build_dataset("cuhk03", data_root / "cuhk03-np")


def test_randperson_cameras_are_scene_camera_pairs(data_root):
    ds = build_dataset("randperson", data_root / "randperson_subset")
    rec = {Path(r.path).name: r for r in ds.train}
    # pairs (s00,c00) (s00,c01) (s01,c00) (s01,c01) -> camids 0..3; both field orders read
    assert [(rec[n].pid, rec[n].camid) for n in sorted(rec)] == [(0, 0), (0, 1), (1, 2), (2, 3)]
    assert rec["000000_s00_c01_f001032.jpg"].timestamp == pytest.approx(1032 / 24)
    assert ds.query == [] and ds.gallery == [] and not ds.has_test


def test_randperson_flat_folder(tmp_path, layouts):
    layouts.write_files(tmp_path / "rp", ["000003_s02_c00_f000001.jpg"])
    ds = build_dataset("randperson", tmp_path / "rp")
    assert [(r.pid, r.camid) for r in ds.train] == [(3, 0)]


def test_custom_market_layout_named_after_folder(data_root):
    ds = build_dataset("custom", data_root / "my_cameras")
    assert ds.name == "my_cameras"
    assert _triples(ds.train) == [("0101_c1s1_000010_01.jpg", 101, 0), ("0102_c3s1_000020_01.png", 102, 2)]
    assert {r.domain for r in ds.train} == {"my_cameras"}


def test_unknown_dataset_lists_valid_names(tmp_path):
    with pytest.raises(DataError, match=r"unknown dataset 'dukemtmc'.*market1501.*msmt17.*cuhk03.*randperson.*custom"):
        build_dataset("dukemtmc", tmp_path)


def test_missing_split_folder_is_named(tmp_path, layouts):
    layout = dict(layouts.MARKET)
    del layout["query"]
    root = layouts.write_layout(tmp_path / "market", layout)
    with pytest.raises(DataError, match=r"missing folder 'query/'"):
        build_dataset("market1501", root)


def test_missing_dataset_folder(tmp_path):
    with pytest.raises(DataError, match=r"not found"):
        build_dataset("market1501", tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"not an MSMT17 folder"):
        build_dataset("msmt17", tmp_path)


def test_malformed_market_name_names_the_file(tmp_path, layouts):
    layout = {k: list(v) for k, v in layouts.MARKET.items()}
    layout["query"].append("person_a.jpg")
    root = layouts.write_layout(tmp_path / "market", layout)
    with pytest.raises(DataError, match=r"query/person_a\.jpg: malformed file name"):
        build_dataset("market1501", root)


def test_malformed_msmt17_line_names_file_and_line(tmp_path, layouts):
    root = layouts.write_msmt17(tmp_path / "MSMT17_V1", "V1")
    with open(root / "list_gallery.txt", "a") as f:
        f.write("broken_line\n")
    with pytest.raises(DataError, match=r"list_gallery\.txt:3: malformed line"):
        build_dataset("msmt17", root)


def test_malformed_randperson_name(tmp_path, layouts):
    layouts.write_files(tmp_path / "rp", ["000001_s00_c00_f000001.jpg", "frame_12.jpg"])
    with pytest.raises(DataError, match=r"frame_12\.jpg: malformed RandPerson file name"):
        build_dataset("randperson", tmp_path / "rp")


def test_resolve_by_usual_folder_names(data_root):
    expected = {"market1501": "Market-1501-v15.09.15", "msmt17": "MSMT17_V2",
                "cuhk03": "detected", "randperson": "randperson_subset", "my_cameras": "my_cameras"}
    for name, folder in expected.items():
        ds = resolve_dataset(data_root, name)
        assert ds.name == name and ds.root.name == folder


def test_resolve_is_case_insensitive_and_accepts_nested_layouts(tmp_path, layouts):
    layouts.write_layout(tmp_path / "MARKET1501", layouts.MARKET)
    layouts.write_msmt17(tmp_path / "msmt17" / "MSMT17_V1", "V1")
    assert resolve_dataset(tmp_path, "market1501").root.name == "MARKET1501"
    assert resolve_dataset(tmp_path, "msmt17").root.name == "MSMT17_V1"


def test_resolve_missing_lists_what_was_found(data_root):
    with pytest.raises(DataError, match=r"dataset 'viper' not found.*found: market1501, msmt17, "
                                        r"cuhk03, randperson, my_cameras"):
        resolve_dataset(data_root, "viper")


def test_discover_datasets(data_root):
    found = discover_datasets(data_root)
    assert [(f.name, f.loader) for f in found] == [
        ("market1501", "market1501"), ("msmt17", "msmt17"), ("cuhk03", "cuhk03"),
        ("randperson", "randperson"), ("my_cameras", "custom")]


def test_format_summaries_table(data_root):
    text = format_summaries([build_dataset("custom", data_root / "my_cameras")])
    assert text.splitlines() == ["dataset     split    ids  images  cameras",
                                 "my_cameras  train      2       2        2",
                                 "            query      1       1        1",
                                 "            gallery    2       2        2"]
