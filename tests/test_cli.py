"""The ``chunkyard`` program behaves like the standard tools: ``--version``, options
before or after the command, flags over environment over a config file of profiles,
one line per error (a traceback only with ``--debug``), ``--json`` and ``--quiet``
everywhere, and a completion script."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from chunkyard import cli as program
from chunkyard.client import profiles
from chunkyard.errors import InvalidRequest
from conftest import cli


def test_version() -> None:
    out = cli(dict(os.environ), "--version")
    assert out.returncode == 0 and out.stdout.startswith("chunkyard ")


def test_the_program_starts_without_numpy_or_the_client() -> None:
    """What every command pays before it runs: no numpy (whose OpenBLAS ``main`` keeps to
    one thread, set before anything loads it), no client, rich or asyncio."""
    import subprocess
    import sys

    heavy = "{'numpy', 'chunkyard.client.api', 'rich', 'asyncio'}"
    code = f"import sys, chunkyard.cli; print(sorted({heavy} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_commands_load_only_what_they_run() -> None:
    """The client API loads no numpy or packs until a method moves bytes (``show`` and
    ``tag`` ran 0.39 s here, most of it imports), and a pull loads no chunking (FastCDC)
    or push pipeline."""
    import ast
    import subprocess
    import sys

    def loaded(module: str, names: set[str]) -> list[str]:
        code = f"import sys, {module}; print(sorted({names!r} & set(sys.modules)))"
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        return ast.literal_eval(run.stdout)

    assert loaded("chunkyard.client.api", {"numpy", "chunkyard.packs", "pyfastcdc"}) == []
    pull = {"chunkyard.client.packer", "chunkyard.chunking", "pyfastcdc"}
    assert loaded("chunkyard.client.download", pull) == []


def test_every_command_takes_the_global_options() -> None:
    for command in program._commands(program.parser()):
        options = {o for a in command._actions for o in a.option_strings}
        assert {"--json", "--quiet", "--debug", "--url", "--token"} <= options, command.prog


def test_options_before_or_after_the_command(gateway, tmp_path: Path) -> None:
    env = {**os.environ, "CHUNKYARD_URL": "http://127.0.0.1:9"}  # wrong: the flag wins
    (tmp_path / "f").write_bytes(b"x" * 1000)
    before = cli(env, "--url", gateway.url, "--json", "push", str(tmp_path / "f"), "cli/a")
    assert before.returncode == 0, before.stderr
    assert json.loads(before.stdout)["name"] == "cli/a"
    after = cli(env, "show", "cli/a", "--url", gateway.url, "--json")
    assert after.returncode == 0 and json.loads(after.stdout)["version"] == 1
    quiet = cli(env, "push", str(tmp_path / "f"), "cli/a", "--url", gateway.url, "-q")
    assert quiet.returncode == 0 and quiet.stdout == "" and quiet.stderr == ""


def _config(tmp_path: Path, text: str) -> dict[str, str]:
    path = tmp_path / "config.toml"
    path.write_text(text)
    path.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHUNKYARD_")}
    return {**env, "CHUNKYARD_CONFIG": str(path)}


def test_a_profile_names_the_gateway_and_the_environment_overrides_it(
    gateway, tmp_path: Path
) -> None:
    env = _config(
        tmp_path,
        f'default_profile = "team"\n[profiles.team]\nurl = "{gateway.url}"\n'
        '[profiles.other]\nurl = "http://127.0.0.1:9"\n',
    )
    (tmp_path / "f").write_bytes(b"y" * 1000)
    assert cli(env, "push", str(tmp_path / "f"), "cli/p").returncode == 0
    env = {**env, "CHUNKYARD_RETRY_ATTEMPTS": "1"}  # port 9 answers nothing: fail at once
    wrong = cli(env, "--profile", "other", "show", "cli/p")
    assert wrong.returncode == 1 and "127.0.0.1:9" in wrong.stderr
    env_wins = cli({**env, "CHUNKYARD_URL": "http://127.0.0.1:9"}, "show", "cli/p")
    assert env_wins.returncode == 1
    missing = cli(env, "--profile", "nope", "show", "cli/p")
    assert missing.returncode == 2 and "no profile 'nope'" in missing.stderr


def test_a_profiles_token_goes_only_to_its_own_gateway(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[profiles.default]\nurl = "https://a.example"\ntoken = "cy_secret"\n')
    path.chmod(0o600)
    monkeypatch.setenv("CHUNKYARD_CONFIG", str(path))
    for name in ("CHUNKYARD_URL", "CHUNKYARD_TOKEN", "CHUNKYARD_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    assert profiles.resolve() == ("https://a.example", "cy_secret")
    assert profiles.resolve("https://b.example") == ("https://b.example", None)
    monkeypatch.setenv("CHUNKYARD_TOKEN", "cy_env")
    assert profiles.resolve() == ("https://a.example", "cy_env")
    path.write_text("[profiles.default]\nurl = 3\n")
    with pytest.raises(InvalidRequest, match="only url and token strings"):
        profiles.load_profile()
    path.write_text("not toml = = =")
    with pytest.raises(InvalidRequest, match="not valid TOML"):
        profiles.load_profile()


def test_errors_are_one_line_and_the_traceback_needs_debug(monkeypatch, capsys) -> None:
    def boom(args: object) -> int:
        raise RuntimeError("kaput")

    monkeypatch.setattr(program.client_cli, "cmd_stats", boom)
    assert program.main(["stats"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "RuntimeError: kaput" in err and "--debug" in err
    assert program.main(["stats", "--debug"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_a_local_failure_is_one_line(tmp_path: Path) -> None:
    out = cli(dict(os.environ), "serve", "--data", "/proc/nope/data")
    assert out.returncode == 1
    assert out.stderr.strip().count("\n") == 0 and "Traceback" not in out.stderr
    assert "/proc/nope" in out.stderr


def test_completion_script_is_generated_from_the_parser() -> None:
    out = cli(dict(os.environ), "completion", "bash")
    assert out.returncode == 0 and "push" in out.stdout and "alias" in out.stdout


def test_output_into_a_pipe_nobody_reads_ends_quietly(gateway, tmp_path: Path) -> None:
    """``chunkyard show NAME --json | head -1``: the reader leaves before the output is
    written; the command ends with 141, as a shell reports SIGPIPE, without a traceback
    (it printed two). Its error output, still read, stays empty."""
    import subprocess
    import sys

    (tmp_path / "f").write_bytes(b"x" * 1000)
    env = {**os.environ, "CHUNKYARD_URL": gateway.url}
    assert cli(env, "push", str(tmp_path / "f"), "cli/pipe").returncode == 0
    read, write = os.pipe()
    os.close(read)  # nobody reads
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "chunkyard.cli", "show", "cli/pipe", "--json"],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            timeout=60,
        )
    finally:
        os.close(write)
    assert (proc.returncode, proc.stderr) == (141, "")


def test_a_broken_pipe_that_is_not_the_output_is_an_error(monkeypatch, capsys) -> None:
    """A connection the other side closed also raises BrokenPipeError: that one is
    reported, not taken for a reader that left."""

    def broken(args: object) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(program, "parser", _parser_running(broken))
    assert program.main(["show", "x"]) == 1
    assert "Broken pipe" in capsys.readouterr().err


def _parser_running(fn):  # type: ignore[no-untyped-def]
    real = program.parser

    def make():  # type: ignore[no-untyped-def]
        p = real()
        p.set_defaults(fn=fn)
        for action in p._subparsers._group_actions if p._subparsers else []:
            for sub in action.choices.values():
                sub.set_defaults(fn=fn)
        return p

    return make
