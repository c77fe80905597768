"""Shared pytest configuration."""

from __future__ import annotations

import os

import pytest


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # "No tests collected" must fail CI, not pass it.
    if exitstatus == 5:
        session.exitstatus = 1


@pytest.fixture
def irkit_home(tmp_path, monkeypatch):
    """A private $IRKIT_HOME for one test."""
    home = tmp_path / "irkit-home"
    home.mkdir()
    monkeypatch.setenv("IRKIT_HOME", str(home))
    return home


def is_root() -> bool:
    return os.geteuid() == 0
