"""Tests of the progress reporter (src/twoway/progress.py): lines, the terminal bar, throttling in logs."""

from __future__ import annotations

import io

import pytest

from twoway.app.progress import Progress, _seconds


def reporter(isatty: bool, enabled: bool = True) -> tuple[Progress, io.StringIO]:
    stream = io.StringIO()
    return Progress(enabled, stream, isatty=isatty), stream


@pytest.mark.parametrize("isatty", [False, True])
def test_phase_and_done_lines(isatty):
    p, s = reporter(isatty)
    p.phase("sampling", "4 chains x 1000 draws")
    p.phase("compiling")
    p.done("compiling", 1.23)
    p.done("compiling", 0.5, "cache hit")
    p.message("hello")
    assert s.getvalue().splitlines() == [
        "twoway: sampling 4 chains x 1000 draws ...",
        "twoway: compiling ...",
        "twoway: compiling done in 1.2 s",
        "twoway: compiling done in 0.5 s (cache hit)",
        "twoway: hello",
    ]


@pytest.mark.parametrize("isatty", [False, True])
def test_disabled_writes_nothing(isatty):
    p, s = reporter(isatty, enabled=False)
    p.phase("compiling")
    p.done("compiling", 1.0)
    for k in range(11):
        p.bar(k, 10, "draws")
    with p.step("sampling") as step:
        step.note = "x"
    p.close()
    assert s.getvalue() == ""


def test_step_times_the_block_and_adds_the_note(monkeypatch):
    clock = iter([10.0, 12.5])
    monkeypatch.setattr("twoway.app.progress.time.perf_counter", lambda: next(clock))
    p, s = reporter(False)
    with p.step("compiling", "the additive model") as step:
        step.note = "cache miss"
    assert step.seconds == 2.5
    assert s.getvalue().splitlines() == ["twoway: compiling the additive model ...",
                                         "twoway: compiling done in 2.5 s (cache miss)"]


def test_step_says_nothing_at_the_end_when_the_block_raises():
    p, s = reporter(False)
    with pytest.raises(KeyError):
        with p.step("compiling"):
            raise KeyError("x")
    assert s.getvalue() == "twoway: compiling ...\n"


def test_log_bar_writes_at_most_one_line_per_tenth():
    p, s = reporter(False)
    for k in range(1001):
        p.bar(k, 1000, "draws")
    lines = s.getvalue().splitlines()
    assert lines == [f"twoway: draws {10 * t}% ({100 * t}/1000)" for t in range(1, 11)]
    assert "\r" not in s.getvalue()


def test_log_bar_with_few_units_and_jumps():
    p, s = reporter(False)
    for k in (0, 1, 2, 3):  # thirds: 33%, 66%, 100%
        p.bar(k, 3)
    assert s.getvalue().splitlines() == ["twoway: 33% (1/3)", "twoway: 66% (2/3)", "twoway: 100% (3/3)"]
    p, s = reporter(False)
    p.bar(0, 100, "x")  # nothing at 0
    p.bar(95, 100, "x")  # one line for a jump over many tenths
    p.bar(96, 100, "x")
    p.bar(100, 100, "x")
    p.bar(100, 100, "x")  # no second 100% line
    assert s.getvalue().splitlines() == ["twoway: x 95% (95/100)", "twoway: x 100% (100/100)"]


def test_log_bar_restarts_for_a_new_label_or_when_counting_again():
    p, s = reporter(False)
    for label in ("warmup", "draws"):
        for k in (5, 10):
            p.bar(k, 10, label)
    for k in (5, 10):
        p.bar(k, 10, "draws")
    assert s.getvalue().splitlines() == ["twoway: warmup 50% (5/10)", "twoway: warmup 100% (10/10)",
                                         "twoway: draws 50% (5/10)", "twoway: draws 100% (10/10)",
                                         "twoway: draws 50% (5/10)", "twoway: draws 100% (10/10)"]


def test_terminal_bar_redraws_one_line_and_ends_it():
    p, s = reporter(True)
    for k in range(0, 201):
        p.bar(k, 200, "draws")
    out = s.getvalue()
    assert out.endswith("twoway: draws [" + "#" * 30 + "] 100% (200/200)\n")
    assert out.count("\n") == 1  # one line, redrawn
    frames = out.rstrip("\n").split("\r")[1:]
    assert len(frames) == 101  # redrawn when the percentage changes, not for every unit
    assert frames[0] == "twoway: draws [" + "." * 30 + "]   0% (0/200)"
    assert frames[50].startswith("twoway: draws [" + "#" * 15 + "." * 15 + "]  50% (100/200)")


def test_terminal_bar_is_ended_before_another_line():
    p, s = reporter(True)
    p.bar(3, 10, "draws")
    p.phase("writing")
    assert s.getvalue() == "\rtwoway: draws [#########.....................]  30% (3/10)\ntwoway: writing ...\n"


def test_terminal_bar_clears_a_longer_previous_frame():
    p, s = reporter(True)
    p.bar(9, 1000, "draws")
    p.bar(10, 1000, "draws")  # same length
    first, second = s.getvalue().split("\r")[1:]
    assert len(second) >= len(first)
    p.close()
    assert s.getvalue().endswith("\n")
    p.close()  # nothing left open: no second newline
    assert not s.getvalue().endswith("\n\n")


def test_bar_ignores_an_empty_total_and_clamps():
    p, s = reporter(False)
    p.bar(0, 0)
    p.bar(5, -1)
    assert s.getvalue() == ""
    p.bar(20, 10, "x")
    assert s.getvalue() == "twoway: x 100% (10/10)\n"


def test_isatty_comes_from_the_stream_by_default():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    assert Progress(True, Terminal()).isatty is True
    assert Progress(True, io.StringIO()).isatty is False
    closed = io.StringIO()
    closed.close()
    assert Progress(True, closed).isatty is False


@pytest.mark.parametrize("seconds, text", [(0.012, "0.01 s"), (1.234, "1.2 s"), (42.4, "42 s"),
                                           (185, "3 min 05 s")])
def test_seconds_format(seconds, text):
    assert _seconds(seconds) == text
