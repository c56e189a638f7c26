"""`tal-data` through click's CliRunner: stats output, generation, one-line errors (exit 2)."""
from __future__ import annotations

from click.testing import CliRunner

from tal_train.data.cli import main


def _run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def _error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def test_stats_of_one_dataset_folder(data_root):
    result = _run("stats", data_root / "Market-1501-v15.09.15")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "dataset     split    ids  images  cameras",
        "market1501  train      2       3        3",
        "            query      2       2        2",
        "            gallery    3       4        4"]


def test_stats_of_every_dataset_under_a_root(data_root):
    result = _run("stats", data_root)
    assert result.exit_code == 0, result.output
    names = [line.split()[0] for line in result.output.splitlines()[1:]
             if not line.startswith(" ")]
    assert names == ["market1501", "msmt17", "cuhk03", "randperson", "my_cameras"]
    assert "randperson  train      3       4        4" in result.output


def test_stats_with_forced_loader(data_root):
    result = _run("stats", data_root / "cuhk03-np" / "detected", "--dataset", "cuhk03")
    assert result.exit_code == 0 and result.output.startswith("dataset ")
    assert "cuhk03   train      2       3        2" in result.output


def test_unknown_dataset_name(data_root):
    line = _error_line(_run("stats", data_root / "my_cameras", "--dataset", "viper"))
    assert line.startswith("error: unknown dataset 'viper' (valid: market1501, msmt17, cuhk03, "
                           "randperson, custom")


def test_missing_folder(tmp_path):
    line = _error_line(_run("stats", tmp_path / "absent"))
    assert line == f"error: {tmp_path / 'absent'}: folder not found"


def test_no_dataset_under_root(tmp_path):
    (tmp_path / "photos").mkdir()
    assert "no dataset found" in _error_line(_run("stats", tmp_path))


def test_missing_split_folder(tmp_path, layouts):
    layout = dict(layouts.CUSTOM)
    del layout["bounding_box_test"]
    root = layouts.write_layout(tmp_path / "cams", layout)
    line = _error_line(_run("stats", root, "--dataset", "custom"))
    assert "missing folder 'bounding_box_test/'" in line


def test_malformed_file_name(tmp_path, layouts):
    root = layouts.write_layout(tmp_path / "cams", layouts.CUSTOM)
    layouts.write_files(root / "bounding_box_train", ["IMG_2041.jpg"])
    line = _error_line(_run("stats", root))
    assert f"{root / 'bounding_box_train' / 'IMG_2041.jpg'}: malformed file name" in line


def test_synthesize_then_stats(tmp_path):
    out = tmp_path / "synth"
    result = _run("synthesize", out, "--identities", "4", "--domains", "2", "--cameras", "2",
                  "--images-per-id", "3", "--size", "32x16", "--distractors", "1", "--junk", "0",
                  "--quiet")
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith(f"wrote 2 domains to {out}")
    stats = _run("stats", out)
    assert stats.exit_code == 0
    # 2 train ids x 3 images; 2 test ids: 6 images minus one query per camera seen twice
    assert "domain-a  train      2       6        2" in stats.output
    assert "domain-b  train      2       6        2" in stats.output


def test_synthesize_bad_options(tmp_path):
    bad_size = _run("synthesize", tmp_path, "--size", "128")
    assert bad_size.exit_code == 2 and "Traceback" not in bad_size.output
    assert "Invalid value for '--size': '128' is not HxW" in bad_size.output
    assert "--images-per-id 'many'" in _error_line(
        _run("synthesize", tmp_path, "--images-per-id", "many"))
    assert "3 <= LO <= HI" in _error_line(_run("synthesize", tmp_path, "--images-per-id", "2"))


def test_synthesize_refuses_non_empty_output(tmp_path):
    args = ("synthesize", tmp_path, "--identities", "2", "--domains", "1", "--cameras", "2",
            "--images-per-id", "3", "--size", "32x16", "--quiet")
    assert _run(*args).exit_code == 0
    assert "use --overwrite" in _error_line(_run(*args))
    assert _run(*args, "--overwrite").exit_code == 0


def test_synthesize_video(tmp_path):
    result = _run("synthesize-video", tmp_path, "--identities", "2", "--frames", "10",
                  "--frame-size", "128x96", "--quiet")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cam2" / "img1" / "000010.jpg").is_file()
    assert (tmp_path / "cam1" / "det" / "det.txt").read_text()
    bad_size = _run("synthesize-video", tmp_path / "v", "--frame-size", "96")
    assert bad_size.exit_code == 2 and "Traceback" not in bad_size.output
    assert "Invalid value for '--frame-size': '96' is not WIDTHxHEIGHT" in bad_size.output


def test_help_has_examples():
    for cmd in (["--help"], ["synthesize", "--help"], ["synthesize-video", "--help"],
                ["stats", "--help"]):
        result = _run(*cmd)
        assert result.exit_code == 0 and "Examples:" in result.output
