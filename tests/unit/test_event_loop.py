"""Which event loop the serving processes pick, and that a serving coroutine runs on it."""

from __future__ import annotations

import asyncio

import pytest

from conveyor_runtime.errors import UsageError
from conveyor_runtime.serving.event_loop import EVENT_LOOP_ENV, chosen_event_loop, run_serving


@pytest.mark.parametrize(
    ("setting", "installed", "expected"),
    [
        ("auto", True, "uvloop"),
        ("auto", False, "asyncio"),
        ("", True, "uvloop"),
        ("asyncio", True, "asyncio"),
        ("uvloop", True, "uvloop"),
        (" UVLoop ", True, "uvloop"),
    ],
)
def test_the_setting_picks_the_loop(setting: str, installed: bool, expected: str) -> None:
    assert chosen_event_loop(setting, uvloop_installed=installed) == expected


def test_an_unknown_setting_is_refused_with_the_choices() -> None:
    with pytest.raises(UsageError, match=r"CONVEYOR_EVENT_LOOP='trio': expected one of auto, asyncio, uvloop"):
        chosen_event_loop("trio", uvloop_installed=True)


def test_uvloop_asked_for_but_missing_says_what_to_do() -> None:
    with pytest.raises(UsageError, match="pip install uvloop"):
        chosen_event_loop("uvloop", uvloop_installed=False)


def test_the_environment_is_read_when_no_setting_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(EVENT_LOOP_ENV, "asyncio")
    assert chosen_event_loop(uvloop_installed=True) == "asyncio"
    monkeypatch.delenv(EVENT_LOOP_ENV)
    assert chosen_event_loop(uvloop_installed=False) == "asyncio"


@pytest.mark.parametrize("setting", ["asyncio", "uvloop"])
def test_run_serving_runs_the_coroutine_on_the_chosen_loop(setting: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(EVENT_LOOP_ENV, setting)

    async def loop_module() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert run_serving(loop_module()).split(".")[0] == setting


def test_run_serving_refuses_a_bad_setting_before_running(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(EVENT_LOOP_ENV, "nope")
    ran = []

    async def main() -> None:
        ran.append(True)

    with pytest.raises(UsageError):
        run_serving(main())
    assert not ran
