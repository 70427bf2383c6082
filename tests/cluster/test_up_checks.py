"""`cluster up` refuses before starting anything: without root, and while another one runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from glmserve.cluster import state, up
from glmserve.common.errors import ConfigError


def test_up_without_root_exits_2(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(up.os, "geteuid", lambda: 1000)
    with pytest.raises(SystemExit) as exit_:
        up.run_up([Path("examples")], {}, print)
    assert exit_.value.code == 2
    assert "needs root" in capsys.readouterr().err


def test_the_lock_refuses_a_second_holder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(state, "ROOT", tmp_path)
    monkeypatch.setattr(state, "LOCK", tmp_path / "lock")
    monkeypatch.setattr(state, "STATE", tmp_path / "state.json")
    held = state.take_lock()
    try:
        assert state.lock_held()
        with pytest.raises(ConfigError, match="already up"):
            state.take_lock()
    finally:
        held.close()
    assert not state.lock_held()
