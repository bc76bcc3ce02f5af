"""The README cannot drift from the code: every command is documented, and CI runs
exactly the test command the README gives."""

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from bridge.cli import cli

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


@pytest.mark.parametrize("name", sorted(cli.commands))
def test_every_command_has_help_and_a_readme_section(name):
    result = CliRunner().invoke(cli, [name, "--help"], catch_exceptions=False)
    assert result.exit_code == 0
    assert cli.commands[name].help
    assert f"### `bridge {name}`" in README


def test_every_setting_is_documented():
    for variable in re.findall(r"BRIDGE_[A-Z_]+", (ROOT / "bridge" / "settings.py").read_text()):
        assert f"`{variable}`" in README, variable


def test_ci_runs_the_readme_test_command():
    blocks = re.findall(r"```sh\n(.*?)\n```", README, flags=re.S)
    test_command = next(b for b in blocks if "pytest" in b)
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in ci


def test_readme_first_command_runs_an_example_that_exists():
    blocks = re.findall(r"```sh\n(.*?)\n```", README, flags=re.S)
    match = re.search(r"bridge run (\S+)", blocks[0])
    assert match and (ROOT / match.group(1)).is_file()
