"""The preset configs (``launch/configs/*.json``), found the same way from a checkout and from an installed wheel.

Users keep and edit presets in ``launch/configs``; ``setup.py`` ships the same files as package data
(``recbase/configs``), so ``--config tiny.json`` works from any working directory, in a clone or after
``pip install``. A checkout's folder wins when both exist, so an edited preset takes effect without reinstalling.
"""
from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
CHECKOUT_DIR = PACKAGE.parent / "launch" / "configs"   # a source checkout (or an editable install)
PACKAGED_DIR = PACKAGE / "configs"                      # a built wheel: setup.py's package data


def preset_dir() -> Path:
    """The folder of the preset configs; the one place every command looks them up."""
    for folder in (CHECKOUT_DIR, PACKAGED_DIR):
        if folder.is_dir():
            return folder
    raise FileNotFoundError(f"no preset configs: neither {CHECKOUT_DIR} nor {PACKAGED_DIR} exists "
                            f"(a broken install? reinstall recbase)")
