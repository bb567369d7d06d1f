"""The README's Python example runs as written."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def test_readme_example_runs(capsys):
    section = README.read_text().split("## From Python", 1)[1]
    example = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "import eia" in example and len(example.splitlines()) <= 11
    exec(compile(example, str(README), "exec"), {})
    assert "GFLOP" in capsys.readouterr().out
