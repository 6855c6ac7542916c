"""The predict benchmarks run end to end on tiny inputs: memory of a streamed video, frames per second of
`cfbi predict` with 1 and 2 processes."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HAS_FFMPEG = importlib.util.find_spec("imageio") is not None and importlib.util.find_spec("imageio_ffmpeg") is not None


def run_script(*args: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.skipif(not HAS_FFMPEG, reason="needs imageio and imageio-ffmpeg")
def test_stream_memory_samples_rss_along_the_video():
    out = run_script(
        "-m", "benchmarks.stream_memory", "--frames", "40", "--every", "20", "--height", "32", "--width", "48"
    )
    assert "40 frames, 2 object(s)" in out and "40 masks written" in out
    rows = [line for line in out.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [row.split("|")[1].strip() for row in rows] == ["1", "20", "40"]
    assert all(float(row.split("|")[2]) > 0 for row in rows) and "peak RSS" in out


def test_predict_speed_with_one_and_two_processes():
    out = run_script(
        "-m",
        "benchmarks.predict_speed",
        "--videos",
        "2",
        "--frames",
        "3",
        "3",
        "--height",
        "32",
        "--width",
        "48",
        "--processes",
        "1",
        "2",
    )
    rows = [line.split("|") for line in out.splitlines() if line.startswith("| 1 ") or line.startswith("| 2 ")]
    assert [r[1].strip() for r in rows] == ["1", "2"] and all(float(r[3]) > 0 for r in rows)
    assert "6 frames of 48x32" in out
