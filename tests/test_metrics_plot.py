"""The metrics JSON-lines file and the loss plot (with and without matplotlib)."""

import sys

import pytest

from npgpt.training import metrics
from npgpt.training.plot import plot_losses

RECORDS = [
    {"step": 0, "tokens": 0, "loss": None, "lr": None, "tokens_per_s": None,
     "train_loss": 10.0, "val_loss": 10.1},
    {"step": 1, "tokens": 64, "loss": 9.0, "lr": 1e-3, "tokens_per_s": 100.0},
    {"step": 2, "tokens": 128, "loss": 8.0, "lr": 1e-3, "tokens_per_s": 100.0,
     "train_loss": 7.9, "val_loss": 8.2},
]  # fmt: skip


def test_metrics_append_read_and_truncate_to_a_resumed_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    assert metrics.read(path) == []
    for record in RECORDS:
        metrics.append(path, record)
    assert metrics.read(path) == RECORDS
    with open(path, "a") as f:
        f.write('{"step": 3, "loss"')  # torn by a kill mid-write
    assert metrics.read(path) == RECORDS
    metrics.truncate(path, 1)
    assert metrics.read(path) == RECORDS[:2]
    assert path.read_text().count("\n") == 2


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib not installed (the plot extra)")
    path = tmp_path / "loss.png"
    assert plot_losses(RECORDS, path, title="test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_matplotlib_the_plot_is_skipped_with_a_note(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    assert plot_losses(RECORDS, tmp_path / "loss.png") is False
    assert not (tmp_path / "loss.png").exists()
    assert "matplotlib is not installed" in capsys.readouterr().err
