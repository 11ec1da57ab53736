import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _readme_commands():
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    return [line for b in blocks for line in b.splitlines() if line and not line.startswith("#")]


def test_ci_runs_exactly_the_readme_test_command():
    test_cmd = [c for c in _readme_commands() if "pytest" in c]
    assert len(test_cmd) == 1
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert test_cmd[0] in ci


def test_readme_main_job_runs_the_demo():
    assert any(c.endswith("sae1n demo") for c in _readme_commands())
