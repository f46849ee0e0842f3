"""The usage example in docs/envs.md runs."""

import re
from pathlib import Path


def test_docs_example_runs():
    text = (Path(__file__).resolve().parents[1] / "docs" / "envs.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks
    for code in blocks:
        exec(compile(code, "docs/envs.md", "exec"), {"__name__": "__docs__"})
