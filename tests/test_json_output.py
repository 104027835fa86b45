"""`--json`: stdout holds exactly one JSON document, for every command that has the option (human
tables, progress and notes go to stderr), and nothing at all when the command fails."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from edgenas.cli import app

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "profiles" / "cpu-amd-epyc.json"
SEARCH = ["--method", "darts", "--data", "synthetic:64", "--epochs", "1", "--channels", "4", "--layers", "2",
          "--nodes", "2", "--batch-size", "16"]
TRAIN = ["DARTS_V2", "--data", "synthetic:64", "--epochs", "1", "--channels", "4", "--layers", "2",
         "--batch-size", "16", "--cutout", "0"]


def run(*args) -> object:
    return CliRunner().invoke(app, [str(a) for a in args])


def json_commands() -> set[str]:
    """Every command (``list ops`` as 'list ops') that takes --json."""
    def walk(cmd, prefix):
        for name, sub in getattr(cmd, "commands", {}).items():
            yield from walk(sub, f"{prefix} {name}".strip())
        if any("--json" in p.opts for p in getattr(cmd, "params", [])):
            yield prefix

    return set(walk(typer.main.get_command(app), ""))


# (command, args builder(tmp) -> argument list); several option combinations per command
CASES = [
    ("list ops", lambda t: ["list", "ops"]),
    ("list genotypes", lambda t: ["list", "genotypes"]),
    ("list methods", lambda t: ["list", "methods"]),
    ("profile", lambda t: ["profile", "--ops", "skip_connect,sep_conv_3x3", "--shapes", "4x8x8:1", "--batch", "2",
                           "--runs", "3", "--max-seconds", "0.05", "--out", t / "p.json", "--plot", t / "p.png"]),
    ("prune", lambda t: ["prune", "--profile", PROFILE, "--out", t / "s.json", "--max-latency-ratio", "3"]),
    ("inspect", lambda t: ["inspect", "DARTS_V2", "--profile", PROFILE]),
    ("inspect", lambda t: ["inspect", "DARTS_V2", "--profile", PROFILE, "--channels", "16", "--layers", "8",
                           "--plot", t]),
    ("inspect", lambda t: ["inspect", "PC_DARTS_cifar", "--fit-macs", "300M"]),
    ("search", lambda t: ["search", *SEARCH, "--out", t / "s"]),
    ("search", lambda t: ["search", *SEARCH, "--mac-budget", "60M", "--out", t / "s"]),
    ("train", lambda t: ["train", *TRAIN, "--out", t / "r"]),
    ("export", lambda t: ["export", "RUN", "--out", t / "e", "--runs", "2", "--warmup", "1", "--test-subset", "20",
                          "--providers", "cpu"]),
    ("run", lambda t: ["run", "--config", _pipe(t), "--out", t / "run"]),
    # with --quiet too, on the commands that print most besides their result
    ("profile", lambda t: ["profile", "--ops", "skip_connect", "--shapes", "4x8x8:1", "--batch", "2", "--runs", "3",
                           "--max-seconds", "0.05", "--out", t / "p.json", "--quiet"]),
    ("inspect", lambda t: ["inspect", "DARTS_V2", "--profile", PROFILE, "--quiet"]),
    ("search", lambda t: ["search", *SEARCH, "--out", t / "s", "--quiet"]),
]


def _pipe(tmp: Path) -> Path:
    from test_bad_inputs import PIPE

    path = tmp / "pipe.toml"
    path.write_text(PIPE + "\n")
    return path


def test_the_table_covers_every_command_with_json():
    assert {c for c, _ in CASES} == json_commands()


@pytest.mark.parametrize("command, build", CASES, ids=[f"{c}-{i}" for i, (c, _) in enumerate(CASES)])
def test_json_is_one_document_on_stdout(command, build, tmp_path, monkeypatch, tiny_train_run):
    monkeypatch.chdir(tmp_path)
    args = [tiny_train_run if a == "RUN" else a for a in build(tmp_path)]
    result = run(*args, "--json")
    assert result.exit_code == 0, result.output[-2000:]
    doc = json.loads(result.stdout)  # fails on anything before or after the one document
    assert isinstance(doc, (dict, list)) and doc


def test_a_failing_command_prints_nothing_on_stdout(tmp_path):
    result = run("inspect", "DARTS_V2", "--fit-macs", "1e400", "--json")
    assert result.exit_code == 2 and result.stdout == ""
