"""The README's quick start runs as written (keeps the front page true)."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_quick_start_runs():
    block = _python_blocks()[0]
    ns: dict = {}
    exec(compile(block, "README quick start", "exec"), ns)  # our own README, not user input
    assert ns["K"].shape == (10, 10)
    assert ns["F"].shape == (10, 4, 2, 2)
    assert ns["out"].test.shape[0] == 2
    assert ns["final"].train.shape == ns["y_train"].shape


def test_conv_example_runs():
    block = _python_blocks()[1].replace("torch.randn(32, 3, 16, 16)", "torch.randn(4, 3, 8, 8)")
    block = block.replace(", progress=True", "")
    ns: dict = {"torch": pytest.importorskip("torch")}
    exec(compile("from ntkit import layers as L\n" + block, "README conv example", "exec"), ns)
    assert ns["k"].ntk.shape == (4, 4)
