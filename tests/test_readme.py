"""The README's commands: every ``recbase`` line parses with the real command line, every preset and script it
names exists, and (slow) its first screen runs as written in a fresh shell on a fresh copy of the repository."""
import re
import shutil
import subprocess

import pytest

from doc_commands import REPO, base_python_dir, code_blocks, commands, new_shell_env
from recbase.cli import build_parser
from recbase.presets import preset_dir

README = (REPO / "README.md").read_text(encoding="utf-8")


def test_first_screen_is_the_two_commands_then_the_environment():
    first = commands(code_blocks(README)[0])
    assert first[:3] == [["make", "demo"], ["make", "test"], ["source", ".venv/bin/activate"]]
    assert all(c[0] == "recbase" for c in first[3:])


def test_every_recbase_line_parses_and_names_real_presets_and_scripts():
    parser = build_parser()
    lines = [c for block in code_blocks(README) for c in commands(block)]
    recbase_lines = [c for c in lines if c[0] == "recbase"]
    assert len(recbase_lines) >= 10
    for c in recbase_lines:
        parser.parse_args(c[1:])          # an unknown sub-command or option exits here
    for c in lines:
        scripts = [a for a in c if a.endswith(".py") and "/" in a]
        for script in scripts:
            assert (REPO / script).is_file(), script
        if "--config" in c:
            name = c[c.index("--config") + 1]
            assert (preset_dir() / name).is_file(), name


@pytest.mark.slow
def test_first_screen_runs_as_written(tmp_path):
    """A copy of the repository's files (as a clone has them), a shell with a bare environment, the first screen's
    lines in order; the first ``make`` installs everything into a new ``.venv`` (network and minutes needed)."""
    clone = tmp_path / "recbase"
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split()
    for name in listed:
        if (REPO / name).is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, clone / name)
    env = new_shell_env(tmp_path, base_python_dir())   # python3 found first is one outside any venv
    script = "set -e\n" + code_blocks(README)[0]
    done = subprocess.run(["bash", "-c", script], cwd=clone, env=env, capture_output=True, text=True, timeout=5400)
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-5000:]
    assert "pipeline finished in" in done.stdout
    assert re.search(r"\d+ passed", done.stdout)
    top = done.stdout[done.stdout.index("top 10 of"):].splitlines()
    assert top[0].startswith("top 10 of 600 news items") and len(top) == 12
