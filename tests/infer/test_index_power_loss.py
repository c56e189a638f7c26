"""No catalog commit names feature rows that a power loss could take back: every feature file,
and its directory entries, are fsynced before the commit that makes them part of the index
(power_loss.py records the fsyncs; the SIGKILL tests cannot see a missing one)."""
from __future__ import annotations

from power_loss import DurabilityLog
from test_index import SHAPES, extract_features, make_gallery, market_file

from tal_infer.index import GalleryIndex


def test_every_commit_names_only_fsynced_feature_rows(tmp_path, monkeypatch):
    log = DurabilityLog(tmp_path / "idx")
    log.install(monkeypatch)
    files = make_gallery(tmp_path / "g", 12)
    index = GalleryIndex(tmp_path / "idx", "model-a", SHAPES)
    index.sync(files, extract_features, batch_size=5)           # appends: 3 commits
    appended = log.checked
    for f in files[:7]:                                         # dead rows: a compaction
        f.unlink()
    files[9].write_bytes(b"another look")
    index.sync(files[7:] + [market_file(tmp_path / "g", 30)], extract_features)
    index.remove([files[8]])                                    # erasure: a new generation
    index.compact()
    assert appended == 3 and log.checked >= 7, log.checked
    assert log.violations == []
