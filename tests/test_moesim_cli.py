import subprocess
import sys

from sim.app.cli import SUBCOMMANDS, main


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in SUBCOMMANDS:
        assert f"  {name} " in out


def test_unknown_command_is_one_line_error(capsys):
    assert main(["frobnicate"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("moesim: error: unknown command 'frobnicate'") and err.count("\n") == 1


def test_console_script_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "sim", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "usage: moesim" in out.stdout


def test_group_subcommands_help_and_unknown(capsys):
    for group, subs in (("predictor", ("train", "eval")), ("realrun", ("replay", "calibrate", "validate"))):
        assert main([group, "--help"]) == 0
        out = capsys.readouterr().out
        assert all(s in out for s in subs)
        assert main([group, "nope"]) == 2
        err = capsys.readouterr().err
        assert err == (f"moesim {group}: error: unknown subcommand 'nope'; expected "
                       f"{' or '.join(repr(s) for s in subs)}\n")
