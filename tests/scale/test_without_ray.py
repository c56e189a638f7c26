"""Without Ray installed: every module imports, the embedded runtime works, and asking for the
cluster (the Python API, tal-serve, tal-index build) is one line naming the cluster extra."""
from __future__ import annotations

import subprocess
import sys

from test_imports import BLOCKER

SCRIPT = BLOCKER.format(blocked={"ray"}) + """
import numpy as np
from click.testing import CliRunner
from tal_infer.cluster import bulk, client, routing, scope, service, shard, sharded, wire
from tal_infer.engine import ReIDEngine
from tal_infer.errors import TalError
from tal_infer.index_cli import main as index_main
from tal_infer.serve_cli import main as serve_main
bundle, folder = sys.argv[1], sys.argv[2]
engine = ReIDEngine(bundle)
feats = engine.embed([np.zeros((64, 32, 3), np.uint8)] * 2)
assert engine.scores(feats, feats).shape == (2, 2)
try:
    sharded.ShardedGallery(folder, bundle, shards=2)
except TalError as err:
    print("api:", err)
for main, args in ((serve_main, [bundle, "--gallery", folder]),
                   (index_main, ["build", folder, "--bundle", bundle, "--list", bundle + "/manifest.json"])):
    result = CliRunner().invoke(main, args)
    print("cli:", result.exit_code, result.output.strip())
assert "ray" not in sys.modules
"""


def test_the_cluster_asks_for_its_extra_and_nothing_else_needs_ray(bundle, tmp_path):
    res = subprocess.run([sys.executable, "-c", SCRIPT, str(bundle), str(tmp_path / "g")],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 3, res.stdout
    hint = "pip install 'tal-reid[cluster]', the cluster extra"
    assert lines[0].startswith("api: ") and hint in lines[0]
    for line in lines[1:]:
        assert line.startswith("cli: 2 error: ") and hint in line
