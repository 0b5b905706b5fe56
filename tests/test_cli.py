"""Tests of `python -m engine`: results, exit codes and error messages, on the real data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from engine.cli import EXIT_INPUT_ERROR, EXIT_OK, main
from tests.conftest import REPO_ROOT


@pytest.fixture
def run(data_dir: Path, studio, capsys):
    """Run the CLI in-process against the session cache; return (status, stdout, stderr)."""

    def invoke(*args: str) -> tuple[int, str, str]:
        status = main([*args, "--data", str(data_dir), "--cache", str(studio.cache_dir)])
        captured = capsys.readouterr()
        return status, captured.out, captured.err

    return invoke


def test_info_json_counts(run, studio) -> None:
    status, out, _ = run("info", "--json")
    assert status == EXIT_OK
    assert json.loads(out)["images"] == len(studio.dataset.digits)


def test_info_human_output(run) -> None:
    status, out, _ = run("info")
    assert status == EXIT_OK
    assert "empty_cells:" in out


def test_cluster_reports_cache_path(run) -> None:
    status, out, _ = run("cluster", "--digit", "3", "--k", "7", "--json")
    result = json.loads(out)["clusterings"][0]
    assert status == EXIT_OK
    assert Path(result["cache"]).is_file()
    assert len(result["cluster_sizes"]) == 7


def test_digit_out_of_range_exit_2(run) -> None:
    status, _, err = run("cluster", "--digit", "11")
    assert status == EXIT_INPUT_ERROR
    assert err.strip() == "error: digit must be 0-9, got 11"


def test_unknown_writer_exit_2(run) -> None:
    status, _, err = run("fill", "--writer", "f9999_99", "--digit", "3", "--no-train")
    assert status == EXIT_INPUT_ERROR
    assert "writer 'f9999_99' not found" in err
    assert "e.g. f" in err


def test_k_out_of_range_exit_2(run) -> None:
    status, _, err = run("cluster", "--digit", "3", "--k", "40")
    assert status == EXIT_INPUT_ERROR
    assert "k must be 2-20, got 40" in err


def test_cluster_out_of_range_exit_2(run) -> None:
    status, _, err = run("train", "--digit", "3", "--cluster", "9", "--epochs", "1")
    assert status == EXIT_INPUT_ERROR
    assert "cluster must be 0-6" in err


def test_train_and_fill_write_png(run, tmp_path: Path) -> None:
    status, out, err = run("train", "--digit", "4", "--cluster", "0", "--epochs", "1", "--json")
    assert status == EXIT_OK, err
    assert Path(json.loads(out)["models"][0]["checkpoint"]).is_file()

    png = tmp_path / "fill.png"
    status, out, err = run("fill", "--writer", "f0424_27", "--digit", "4", "--n", "9", "--epochs", "1", "--hide", "--out", str(png), "--json")
    result = json.loads(out)
    assert status == EXIT_OK, err
    assert result["generated"] == 9
    assert result["choice"]["cluster"] == result["consistency"]["cluster"]
    assert Image.open(png).size[0] > 28


def test_missing_data_exit_2(tmp_path: Path, capsys) -> None:
    status = main(["info", "--data", str(tmp_path / "absent"), "--cache", str(tmp_path)])
    assert status == EXIT_INPUT_ERROR
    assert "does not exist" in capsys.readouterr().err


def test_module_entry_point_exit_code(data_dir: Path, tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "engine", "info", "--data", str(data_dir), "--cache", str(tmp_path), "--json"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout)["writers"] > 0
    assert "loaded" in completed.stderr


def test_module_entry_point_bad_input(data_dir: Path, tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "engine", "cluster", "--data", str(data_dir), "--cache", str(tmp_path), "--digit", "11"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 2
    assert completed.stderr.strip().endswith("digit must be 0-9, got 11")


@pytest.mark.parametrize("command", ["info", "cluster", "train", "fill", "download", "worker", "models"])
def test_help_describes_options(command: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "--json" in capsys.readouterr().out
