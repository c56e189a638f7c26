"""`tal-track` end to end on a tiny network, and bad input: one line naming the file (and line),
exit code 2, nothing written."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import cv2
import pytest
from click.testing import CliRunner

from runtime_fixtures import isolated_cli, write_crops
from tal_infer.video.cli import main
from tal_infer.video.mot import read_ground_truth


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture()
def network(tiny_network, tmp_path):
    shutil.copytree(tiny_network, tmp_path / "net")
    return tmp_path / "net"


def _track(network, out, bundle, *extra):
    return _run("run", network, "--out", out, "--model", bundle, "--backend", "onnxruntime",
                "--device", "cpu", "--quiet", *extra)


def test_calibrate_then_track_end_to_end(network, video_bundle, tmp_path):
    names = [f"{pid:04d}_c{cam}s1_{pid * 10 + j:06d}_00.jpg"
             for pid in (1, 2, 3) for cam in (1, 2) for j in range(2)]
    write_crops(tmp_path / "train", names)
    cal = tmp_path / "cal.json"
    result = _run("calibrate", "--images", tmp_path / "train", "--model", video_bundle,
                  "--backend", "onnxruntime", "--device", "cpu", "--out", cal, "--quiet")
    assert result.exit_code == 0, result.output
    assert "tal: threshold" in result.output and cal.is_file()
    out = tmp_path / "out"
    result = _track(network, out, video_bundle, "--calibration", cal)
    assert result.exit_code == 0, result.output
    assert "cam1:" in result.output and "cross-camera IDF1" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["per_camera"]) == {"cam1", "cam2"}
    assert summary["threshold"] == json.loads(cal.read_text())["thresholds"]["tal"]
    for cam in ("cam1", "cam2"):
        rows = read_ground_truth(out / f"{cam}.txt")  # MOTChallenge rows, parsed back
        assert rows and summary["cameras"][cam]["tracklets"] > 0
    assert "<table>" in (out / "report.html").read_text()


def test_online_mode_with_transitions_and_escaped_report(network, video_bundle, tmp_path):
    os.rename(network / "cam2", network / "c<2>&")
    result = _track(network, tmp_path / "out", video_bundle, "--threshold", "0.5", "--mode",
                    "online", "--transition", "cam1:c<2>&:-5:30", "--scoring", "descriptor")
    assert result.exit_code == 0, result.output
    page = (tmp_path / "out" / "report.html").read_text()
    assert "c&lt;2&gt;&amp;" in page and "c<2>&" not in page
    assert (tmp_path / "out" / "c<2>&.txt").is_file()


def _error(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.mark.parametrize("line, problem", [
    ("3,-1,10,20,x,40,0.9,-1,-1,-1", "not a number"),
    ("3,-1,10,20", "expected at least 7"),
    ("0,-1,10,20,30,40,0.9,-1,-1,-1", "whole number >= 1"),
    ("3,-1,10,20,-30,40,0.9,-1,-1,-1", "negative box width"),
])
def test_malformed_det_line_names_file_and_line(network, video_bundle, tmp_path, line, problem):
    det = network / "cam2" / "det" / "det.txt"
    rows = det.read_text().splitlines()
    det.write_text("\n".join(rows[:4] + [line] + rows[4:]) + "\n")
    out = tmp_path / "out"
    message = _error(_track(network, out, video_bundle, "--threshold", "0.5"))
    assert f"{det}:5:" in message and problem in message
    assert not out.exists()  # nothing written


def test_missing_and_unreadable_frames_fail_or_are_skipped(network, video_bundle, tmp_path):
    (network / "cam1" / "img1" / "000007.jpg").unlink()
    (network / "cam1" / "img1" / "000009.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "out"
    message = _error(_track(network, out, video_bundle, "--threshold", "0.5"))
    assert "000007" in message and "frame file missing" in message and not out.exists()
    result = _track(network, out, video_bundle, "--threshold", "0.5",
                    "--on-missing-frame", "skip")
    assert result.exit_code == 0, result.output
    assert "2 frames missing or unreadable (skipped)" in result.output
    assert json.loads((out / "summary.json").read_text())["cameras"]["cam1"][
        "missing_frames"] == 2


def test_video_file_frames_and_one_that_cannot_be_opened(network, video_bundle, tmp_path):
    cam = network / "cam1"
    frames = sorted((cam / "img1").glob("*.jpg"))
    first = cv2.imread(str(frames[0]))
    writer = cv2.VideoWriter(str(cam / "cam1.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 25,
                             (first.shape[1], first.shape[0]))
    for f in frames:
        writer.write(cv2.imread(str(f)))
    writer.release()
    shutil.rmtree(cam / "img1")
    result = _track(network, tmp_path / "ok", video_bundle, "--threshold", "0.5")
    assert result.exit_code == 0, result.output
    assert f"cam1: {len(frames)} frames" in result.output
    (cam / "cam1.avi").write_bytes(b"\x00" * 1000)
    message = _error(_track(network, tmp_path / "bad", video_bundle, "--threshold", "0.5"))
    assert "cam1.avi" in message and "cannot be opened as a video" in message


def test_camera_without_detections(network, video_bundle, tmp_path):
    (network / "cam2" / "det" / "det.txt").write_text("")
    result = _track(network, tmp_path / "out", video_bundle, "--threshold", "0.5")
    assert result.exit_code == 0, result.output
    assert "cam2: no detections" in result.output
    assert (tmp_path / "out" / "cam2.txt").read_text() == ""


def test_det_file_that_is_not_a_regular_file(network, video_bundle, tmp_path):
    det = network / "cam1" / "det" / "det.txt"
    det.unlink()
    os.mkfifo(det)
    message = _error(_track(network, tmp_path / "out", video_bundle, "--threshold", "0.5"))
    assert str(det) in message and "named pipe" in message


def test_missing_calibration_says_how_to_make_one(network, video_bundle, tmp_path):
    message = _error(_track(network, tmp_path / "out", video_bundle))
    assert "tal-track calibrate" in message


def test_unknown_camera_in_a_transition_window(network, video_bundle, tmp_path):
    message = _error(_track(network, tmp_path / "out", video_bundle, "--threshold", "0.5",
                            "--transition", "cam1:cam9:0:5"))
    assert "no camera 'cam9'" in message


def test_tal_track_runs_without_torch_or_the_training_code(network, video_bundle, tmp_path):
    res = subprocess.run([sys.executable, "-c", isolated_cli("tal_infer.video.cli"), "run",
                          str(network), "--out", str(tmp_path / "out"), "--model",
                          str(video_bundle), "--threshold", "0.5", "--quiet"],
                         capture_output=True, text=True)
    assert res.returncode == 0 and "isolated run ok" in res.stdout, res.stderr[-3000:]
    assert (tmp_path / "out" / "cam1.txt").stat().st_size > 0
