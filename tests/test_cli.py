"""The CLI is thin and documented: every command's --help has an example."""

import argparse

import pytest

from specsearch.cli import build_parser, main


def _subcommands(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices.items()


def test_every_command_has_an_example_and_help():
    parser = build_parser()
    commands = dict(_subcommands(parser))
    assert "ingest" in commands and "embed" in commands
    for name, sub in commands.items():
        text = sub.format_help()
        assert "Example:" in text, f"`specsearch {name} --help` has no example"
        assert f"specsearch {name}" in text.split("Example:", 1)[1], name
        for nested_name, nested in _subcommands(sub):
            assert "Example:" in nested.format_help(), f"{name} {nested_name} has no example"


def test_library_errors_become_exit_code_2(tmp_path, capsys):
    rc = main(["embed", "--catalog", str(tmp_path / "missing"), "--out", str(tmp_path / "e"),
               "--model", str(tmp_path / "no-model")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "error:" in err and "missing" in err or "no-model" in err


def test_no_command_prints_help(capsys):
    assert main([]) == 1
    assert "COMMAND" in capsys.readouterr().out


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert "specsearch" in capsys.readouterr().out
