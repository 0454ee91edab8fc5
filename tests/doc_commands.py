"""The shell commands a documentation page shows, read the way the tests that check or run them need them, and the
bare environment of a new shell to run them in."""
import os
import re
import shlex
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def code_blocks(text: str, lang: str = "bash") -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def commands(block: str) -> list[list[str]]:
    """The block's commands as argument lists: continuations joined, comments dropped."""
    return [shlex.split(line, comments=True) for line in block.replace("\\\n", " ").splitlines()
            if shlex.split(line, comments=True)]


def new_shell_env(home: Path, bin_dir: Path) -> dict[str, str]:
    """What a new login shell has: a system PATH (``bin_dir`` first, as an activated environment puts it), a home
    of its own, no variables of the shell that runs the tests (a package index, when one is set, is kept)."""
    env = {"PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}
    if "PIP_INDEX_URL" in os.environ:
        env["PIP_INDEX_URL"] = os.environ["PIP_INDEX_URL"]
    return env


def base_python_dir() -> Path:
    """The folder of a python3 outside any virtualenv (the one the test's environment was made from)."""
    return Path(getattr(sys, "_base_executable", sys.executable)).parent
