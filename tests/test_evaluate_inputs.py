"""`cfbi evaluate` with bad inputs reports one line: bad checkpoints, result files that are folders,
decompression bombs among the predictions; and --threads / --device for the model run."""

from __future__ import annotations

import os
import shutil
import struct
import zlib
from pathlib import Path

import pytest
import torch

from cfbi_model.build import shipped_weights
from cfbi_model.cli import main
from cfbi_model.data.synthetic import SyntheticConfig, write_synthetic_davis

pytestmark = pytest.mark.usefixtures("single_thread_module")


@pytest.fixture(scope="module")
def davis(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("davis")
    write_synthetic_davis(
        root, num_train=0, num_val=2, seed=9, config=SyntheticConfig(height=48, width=64, num_frames=(5, 5))
    )
    return root


def bomb_png(path: Path, side: int = 30000) -> None:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))


def one_line_error(capsys, args: list, code: int, expect: list[str]) -> None:
    got = main(["evaluate", *map(str, args)])
    captured = capsys.readouterr()
    assert got == code, captured.err
    assert len(captured.err.strip().splitlines()) == 1, captured.err
    for text in expect:
        assert text in captured.err, (text, captured.err)
    assert "weights_only=False" not in captured.err and "Traceback" not in captured.err


def test_checkpoint_run_with_threads_and_device(davis, tmp_path, capsys):
    json_path = tmp_path / "r.json"
    args = [
        "--checkpoint",
        shipped_weights(),
        "--data",
        davis,
        "--threads",
        "1",
        "--device",
        "cpu",
        "--workers",
        "1",
        "--json",
        json_path,
    ]
    assert main(["evaluate", *map(str, args)]) == 0
    assert "Global results (2 sequences" in capsys.readouterr().out and json_path.is_file()


class _SystemCall:
    def __reduce__(self):
        return (os.system, ("exit 0",))


def test_bad_checkpoints(davis, tmp_path, capsys):
    base = ["--data", davis, "--workers", "1", "--checkpoint"]
    one_line_error(capsys, [*base, tmp_path / "missing.pth"], 1, ["missing.pth", "does not exist"])
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"\x80\x04 garbage")
    one_line_error(capsys, [*base, corrupt], 1, ["corrupt.pth", "cannot read checkpoint"])
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "payload": _Payload()}, evil)
    one_line_error(capsys, [*base, evil], 1, ["evil.pth", "holds Python objects", "was not loaded"])
    system = tmp_path / "system.pth"  # a callable of a blocked module: torch words its refusal differently
    torch.save({"state_dict": {}, "payload": _SystemCall()}, system)
    one_line_error(capsys, [*base, system], 1, ["system.pth", "holds Python objects", "was not loaded"])


def test_result_files_that_are_folders(davis, tmp_path, capsys):
    gt = davis / "Annotations" / "480p"
    for option in ("--json", "--csv"):
        one_line_error(capsys, ["--gt", gt, "--pred", gt, option, tmp_path], 2, [option, "is a folder"])


def test_decompression_bomb_prediction(davis, tmp_path, capsys):
    gt = davis / "Annotations" / "480p"
    pred = tmp_path / "pred"
    shutil.copytree(gt, pred)
    bomb_png(pred / "synth_val_0000" / "00002.png")
    one_line_error(capsys, ["--gt", gt, "--pred", pred, "--workers", "1"], 1, ["00002.png", "decompression bomb"])


class _Payload:
    """Any class: pickling it makes a file that weights_only loading refuses."""
