"""User errors: one line on stderr and exit status 2 from the console command; a bug keeps its traceback."""
from __future__ import annotations

import pytest

from recbase import cli
from recbase.config import ConfigError
from recbase.data.readers.common import InputError
from recbase.errors import UserError
from recbase.tokenizer.artifact import ArtifactError


def test_existing_error_types_are_user_errors():
    for cls in (ConfigError, InputError, ArtifactError):
        assert issubclass(cls, UserError)


def _failing_command(monkeypatch, exc: Exception):
    """Make ``recbase export`` raise ``exc``."""
    import recbase.commands.export

    def run(args):
        raise exc
    monkeypatch.setattr(recbase.commands.export, "run", run)


def test_user_error_is_one_line_and_exit_2(monkeypatch, capsys):
    _failing_command(monkeypatch, UserError("data/x.parquet, row 3, field 'ts':\nnot an integer; fix the row"))
    assert cli.main(["export", "a", "b"]) == 2
    err = capsys.readouterr().err
    assert err == "error: data/x.parquet, row 3, field 'ts': not an integer; fix the row\n"


def test_other_exceptions_keep_their_traceback(monkeypatch):
    _failing_command(monkeypatch, ZeroDivisionError("a bug"))
    with pytest.raises(ZeroDivisionError):
        cli.main(["export", "a", "b"])
