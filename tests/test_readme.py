"""The README's quick start must run as written."""

import os
import re

import pytest

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def _python_blocks():
    text = open(README, encoding="utf-8").read()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_has_quick_start():
    blocks = _python_blocks()
    assert any("DiceLoss(" in b and "MalisLoss(" in b for b in blocks)


@pytest.mark.parametrize("index", range(len(_python_blocks())))
def test_readme_block_runs(index, monkeypatch):
    block = _python_blocks()[index]
    monkeypatch.chdir(os.path.dirname(README))
    exec(compile(block, f"README.md block {index}", "exec"), {})
