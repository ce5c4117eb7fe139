"""The README's Python example, run verbatim at its written size (real bundled model)."""

from __future__ import annotations

import re
import sys

import pytest

from conftest import REPO, run_subprocess


def readme_python_example() -> str:
    """The first ```python block of the README's "### Python" section, as written."""
    section = (REPO / "README.md").read_text().split("\n### Python\n", 1)[1]
    return section.split("```python\n", 1)[1].split("\n```", 1)[0] + "\n"


def test_the_example_is_extracted_whole():
    code = readme_python_example()
    compile(code, "README.md", "exec")
    assert code.startswith("from xcross_registry") and "evaluate_composition" in code


@pytest.mark.slow
@pytest.mark.realmodel
def test_readme_python_example_runs_as_written(tmp_path):
    """It trains two source adapters and a composition on the bundled all-MiniLM-L6-v2
    and prints Hit@1 as a number, not a dict."""
    result = run_subprocess([sys.executable, "-c", readme_python_example()],
                            env={"XREG_HOME": str(tmp_path / "home")}, cwd=tmp_path, timeout=3600)
    assert result.returncode == 0, result.stderr[-3000:]
    last = result.stdout.strip().splitlines()[-1]
    match = re.fullmatch(r"Hit@1 (\d\.\d{3})", last)
    assert match, result.stdout
    assert 0.0 <= float(match[1]) <= 1.0
    assert "epoch 1/1" not in result.stderr and "evaluating" not in result.stderr  # no bars in a pipe
