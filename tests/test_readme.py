"""The README's library example runs as written, on the table the README's own simulate command writes."""

from __future__ import annotations

import re
from pathlib import Path

from twoway.app.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def _section_code(title: str, language: str) -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]
    return re.search(rf"```{language}\n(.*?)```", section, re.S).group(1)


def test_library_example_runs_on_what_simulate_writes(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    shell = _section_code("Command line", "sh")
    simulate_line = next(line for line in shell.splitlines() if line.startswith("twoway simulate"))
    assert main(simulate_line.split()[1:]) == 0
    assert Path("data.csv").exists()
    namespace: dict = {}
    exec(compile(_section_code("Library", "python"), "README.md", "exec"), namespace)
    data, fit = namespace["data"], namespace["fit"]
    assert (data.n_replicates, data.n_rows, data.n_cols) == (3, 8, 12)
    assert Path("fit.nc").exists() and "row_effect" in fit.posterior
    assert "intercept" in capsys.readouterr().out  # the summary was printed
