"""Run ``moesim`` in-process for the tests/traces tests: exit code, stdout and stderr."""

from __future__ import annotations

from sim.app.cli import main as moesim


def run(argv, capsys):
    rc = moesim(argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err
