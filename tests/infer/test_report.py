"""Report: file names are HTML-escaped, borders follow the labels, correspondences are the
per-location argmax of the similarity map."""
from __future__ import annotations

import numpy as np
from click.testing import CliRunner

from tal_infer.cli import main
from tal_infer.report import BORDER, GREEN, RED, correspondences, rank_list_image

from runtime_fixtures import write_crops


def test_html_escapes_file_names(fake_bundle, tmp_path):
    nasty = "0001_c1s1_000001_<script>alert('x')<&>.jpg"
    write_crops(tmp_path / "q", [nasty], seed=1)
    write_crops(tmp_path / "g", ["0001_c2s1_000002_00.jpg", "0002_c2s1_000003_<b>.jpg"], seed=2)
    res = CliRunner().invoke(main, ["--gallery", str(tmp_path / "g"), "--queries",
                                    str(tmp_path / "q"), "--model", str(fake_bundle),
                                    "--device", "cpu", "--report", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.stderr
    page = (tmp_path / "rep" / "index.html").read_text()
    assert "<script>" not in page and "<b>" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;&amp;&gt;.jpg" in page
    assert "&lt;b&gt;.jpg" in page
    assert 'class="hit"' in page and 'class="miss"' in page  # labels known from the names


def test_rank_list_borders_follow_labels():
    crop = np.full((40, 20, 3), 128, np.uint8)
    strip = rank_list_image(crop, [crop, crop], [0.9, 0.1], [True, False])
    tile_w = 64 + 2 * BORDER
    first, second = tile_w + 12, 2 * tile_w + 12  # the gap after the query
    assert tuple(strip[1, first + 1]) == GREEN and tuple(strip[1, second + 1]) == RED


def test_correspondences_are_the_strongest_per_location_argmax():
    rng = np.random.default_rng(1)
    q = rng.standard_normal((12, 5)).astype(np.float32)
    g = rng.standard_normal((9, 5)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    pairs = correspondences(q, g, top=4)
    brute = sorted(((float(q[i] @ g[j]), i, j) for i in range(12) for j in range(9)
                    if j == int(np.argmax(g @ q[i]))), reverse=True)[:4]
    assert [(i, j) for i, j, _ in pairs] == [(i, j) for _, i, j in brute]
    np.testing.assert_allclose([v for _, _, v in pairs], [v for v, _, _ in brute], atol=1e-6)


def test_thumbnails_are_read_under_the_users_pixel_limit(fake_bundle, tmp_path, monkeypatch):
    """--max-pixels reaches the report's second read of the crops, not only extraction."""
    import tal_infer.report as report

    limits = []

    def spy(path, max_pixels):
        limits.append(max_pixels)
        return read_image(path, max_pixels)

    read_image = report.read_image
    monkeypatch.setattr(report, "read_image", spy)
    write_crops(tmp_path / "q", ["0001_c1s1_000001_00.jpg"], seed=1)
    write_crops(tmp_path / "g", ["0001_c2s1_000002_00.jpg", "0002_c2s1_000003_00.jpg"], seed=2)
    res = CliRunner().invoke(main, ["--gallery", str(tmp_path / "g"), "--queries",
                                    str(tmp_path / "q"), "--model", str(fake_bundle),
                                    "--device", "cpu", "--max-pixels", "123456",
                                    "--report", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.stderr
    assert limits and set(limits) == {123456}
