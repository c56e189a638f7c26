"""Protocols p1 (domains = source cameras) and p2 (leave-one-dataset-out): domain assignment,
contiguous labels without collisions, targets; the same for real layouts and synthetic domains."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest

from tal_infer.errors import DataError, TalError
from tal_train.data import build_dataset, build_protocol, resolve_dataset
from tal_train.data.synthetic import SyntheticConfig, synthesize


def _check_labels(protocol):
    """Labels are 0..N-1, each label lives in one (dataset, pid) and vice versa."""
    labels = sorted({r.label for r in protocol.train})
    assert labels == list(range(protocol.num_ids))
    assert all(0 <= r.domain < protocol.num_domains for r in protocol.train)


def test_p1_domains_are_source_cameras(data_root):
    p = build_protocol("p1", data_root, source="market1501")
    assert p.domains == ["market1501-c1", "market1501-c2", "market1501-c3"]
    rows = sorted((Path(r.path).name, r.label, r.camid, r.domain) for r in p.train)
    # pid 2 is seen by cameras 1 and 2: one label, two domains; pid 7 -> next label
    assert rows == [("0002_c1s1_000451_03.jpg", 0, 0, 0), ("0002_c2s1_000301_01.jpg", 0, 1, 1),
                    ("0007_c3s2_012345_02.jpg", 1, 2, 2)]
    _check_labels(p)
    # default targets: every other dataset with a query/gallery split (not RandPerson)
    assert sorted(p.targets) == ["cuhk03", "msmt17", "my_cameras"]
    assert p.sources == ["market1501"]


def test_p1_explicit_targets(data_root):
    p = build_protocol("p1", data_root, source="msmt17", targets=["market1501", "cuhk03"])
    assert list(p.targets) == ["market1501", "cuhk03"]
    # MSMT17 training cameras 01, 02, 05, 15 -> four domains in camid order
    assert p.domains == ["msmt17-c1", "msmt17-c2", "msmt17-c5", "msmt17-c15"]
    cam_of_domain = {r.domain: r.camid for r in p.train}
    assert cam_of_domain == {0: 0, 1: 1, 2: 4, 3: 14}
    _check_labels(p)


def test_p2_leave_one_out(data_root):
    p = build_protocol("p2", data_root, target="market1501")
    assert p.domains == ["msmt17", "cuhk03", "randperson", "my_cameras"]
    assert list(p.targets) == ["market1501"]
    _check_labels(p)
    # labels never collide across datasets: each label belongs to exactly one domain
    domains_of_label = defaultdict(set)
    for r in p.train:
        domains_of_label[r.label].add(r.domain)
    assert all(len(d) == 1 for d in domains_of_label.values())
    # per domain, the number of labels equals the dataset's number of training identities
    for d, name in enumerate(p.domains):
        n_ids = len({r.pid for r in resolve_dataset(data_root, name).train})
        assert len({r.label for r in p.train if r.domain == d}) == n_ids
    # MSMT17 and RandPerson both use pids 0, 1, 2 for different people: six labels, not three
    assert p.num_ids == 3 + 2 + 3 + 2


def test_p2_explicit_sources_keep_order(data_root):
    p = build_protocol("p2", data_root, target="cuhk03", sources=["randperson", "market1501"])
    assert p.domains == ["randperson", "market1501"]
    first = {r.label for r in p.train if r.domain == 0}
    assert first == {0, 1, 2}  # RandPerson's three identities come first
    _check_labels(p)


def test_protocol_errors(data_root):
    with pytest.raises(DataError, match="no query/gallery split"):
        build_protocol("p2", data_root, target="randperson")
    with pytest.raises(TalError, match=r"unknown protocol 'p3' \(valid: p1, p2\)"):
        build_protocol("p3", data_root, source="market1501")
    with pytest.raises(TalError, match="needs a source"):
        build_protocol("p1", data_root)
    with pytest.raises(TalError, match="needs a target"):
        build_protocol("p2", data_root)
    with pytest.raises(DataError, match="cannot also be a source"):
        build_protocol("p2", data_root, target="cuhk03", sources=["msmt17", "cuhk03"])
    with pytest.raises(DataError, match="listed twice"):
        build_protocol("p2", data_root, target="cuhk03", sources=["msmt17", "MSMT17"])


def test_p2_without_sources(tmp_path, layouts):
    layouts.write_layout(tmp_path / "Market-1501", layouts.MARKET)
    with pytest.raises(DataError, match="needs at least one source"):
        build_protocol("p2", tmp_path, target="market1501")


def test_protocols_on_synthetic_domains(tmp_path):
    cfg = SyntheticConfig(identities=4, domains=3, cameras=2, images_per_id=(3, 4),
                          size=(32, 16), distractors=1, junk=1)
    synthesize(tmp_path, cfg, progress=False)
    p2 = build_protocol("p2", tmp_path, target="domain-c")
    assert p2.domains == ["domain-a", "domain-b"]
    assert p2.num_ids == 4  # two training identities per source domain
    assert list(p2.targets) == ["domain-c"] and p2.targets["domain-c"].has_test
    _check_labels(p2)
    p1 = build_protocol("p1", tmp_path, source="domain-a")
    assert p1.domains == ["domain-a-c1", "domain-a-c2"]
    assert sorted(p1.targets) == ["domain-b", "domain-c"]
    _check_labels(p1)
    assert len(p1.train) == len(build_dataset("custom", tmp_path / "domain-a").train)
