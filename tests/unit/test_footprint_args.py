"""`bench.footprint --quick` shortens the windows it is not given, and keeps those it is (it used to
override `--seconds` and `--idle-seconds` silently)."""

from __future__ import annotations

from bench.footprint import parse_args


def test_quick_keeps_the_windows_given_on_the_command_line() -> None:
    args = parse_args(["--quick", "--seconds", "120", "--idle-seconds", "90"])
    assert (args.seconds, args.idle_seconds, args.warmup) == (120, 90, 10)


def test_the_defaults_with_and_without_quick() -> None:
    assert [(a.seconds, a.idle_seconds, a.warmup) for a in (parse_args([]), parse_args(["--quick"]))] == [
        (300, 60, 15),
        (60, 20, 10),
    ]
