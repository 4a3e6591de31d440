"""User errors (errors.LooperError) are one line and exit 2; bugs keep their traceback; --debug shows both."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from looper_math import errors
from looper_math.cli import app


def test_every_user_error_is_a_looper_error():
    from looper_math.config import ConfigError
    from looper_math.modeling import ModelError
    from looper_math.runio import DataError, OutputExistsError, StaleOutputError
    from looper_math.train_common import NonFiniteLossError

    for cls in (ConfigError, DataError, ModelError, OutputExistsError, StaleOutputError, NonFiniteLossError, errors.UsageError):
        assert issubclass(cls, errors.LooperError), cls
    assert issubclass(errors.DataError, ValueError)  # callers that caught ValueError still do


def _boom(exc):
    def f(*a, **k):
        raise exc
    return f


def test_user_error_is_one_line_and_debug_shows_the_traceback(monkeypatch, tmp_path):
    import looper_math.compare as compare

    monkeypatch.setattr(compare, "compare", _boom(errors.DataError("x.jsonl:3: missing field 'correct'")))
    r = CliRunner().invoke(app, ["compare", str(tmp_path / "a"), str(tmp_path / "b")])
    assert r.exit_code == 2 and "error: x.jsonl:3: missing field 'correct'" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(app, ["--debug", "compare", str(tmp_path / "a"), str(tmp_path / "b")])
    assert isinstance(r.exception, errors.DataError)  # raised with its traceback, not turned into one line
    r = CliRunner().invoke(app, ["compare", str(tmp_path / "a"), str(tmp_path / "b")])
    assert r.exit_code == 2  # --debug held for that invocation only


@pytest.mark.parametrize("bug", [ValueError("internal: bad shape"), FileNotFoundError(2, "No such file", "/tmp/cache")])
def test_an_internal_bug_is_not_disguised_as_a_user_error(monkeypatch, tmp_path, bug):
    """Before errors.py, every ValueError / FileNotFoundError (internal bugs included) became 'error: ...', exit 2."""
    import looper_math.compare as compare

    monkeypatch.setattr(compare, "compare", _boom(bug))
    r = CliRunner().invoke(app, ["compare", str(tmp_path / "a"), str(tmp_path / "b")])
    assert r.exit_code != 2 and r.exception is bug


def test_command_line_mistakes_are_usage_errors():
    from looper_math.runio import check_output, parse_shard

    with pytest.raises(errors.UsageError, match="--shard"):
        parse_shard("3/2")
    with pytest.raises(errors.UsageError, match="mutually exclusive"):
        check_output("x", resume=True, overwrite=True)
