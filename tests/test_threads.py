"""CPU thread policies: a fixed count, or ``auto`` matched to the cores other processes leave free."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cli_assert import assert_clean_failure
from typer.testing import CliRunner

from edgenas.cli import app
from edgenas.errors import EdgenasError
from edgenas.threads import AUTO, ThreadGovernor, machine_busy_seconds, parse_threads, thread_policy

TINY_SEARCH = ["search", "--method", "darts", "--data", "synthetic:64", "--epochs", "1", "--channels", "4",
               "--layers", "2", "--nodes", "2", "--batch-size", "16", "-q"]


class FakeMachine:
    """A clock and CPU accounting a test drives: ``run(seconds, others)`` advances time with
    ``others`` cores busy elsewhere and this process using the threads it was given."""

    def __init__(self) -> None:
        self.t = 0.0
        self.busy_s = 0.0
        self.own_s = 0.0
        self.threads = 0
        self.calls: list[int] = []

    def set_threads(self, n: int) -> None:
        self.threads = n
        self.calls.append(n)

    def run(self, seconds: float, others: float, cpus: int = 2) -> None:
        mine = min(self.threads, cpus - others) if others < cpus else 0.5
        self.t += seconds
        self.own_s += mine * seconds
        self.busy_s += (mine + others) * seconds

    def governor(self, max_threads: int = 2, cpus: int = 2) -> ThreadGovernor:
        return ThreadGovernor(max_threads=max_threads, cpus=cpus, clock=lambda: self.t, busy=lambda: self.busy_s,
                              own=lambda: self.own_s, set_threads=self.set_threads)


def test_a_busy_core_takes_a_thread_away_and_gives_it_back_when_free():
    m = FakeMachine()
    g = m.governor()
    assert m.threads == 2
    for _ in range(2):  # one core busy elsewhere: two windows in a row agree, then it switches
        m.run(0.6, others=1.0)
        g.tick()
    assert g.threads == 1 and m.threads == 1
    for _ in range(2):
        m.run(0.6, others=0.0)
        g.tick()
    assert g.threads == 2 and m.calls == [2, 1, 2]


def test_one_noisy_window_does_not_flap_the_pool():
    m = FakeMachine()
    g = m.governor()
    for others in (1.0, 0.0, 1.0, 0.0):
        m.run(0.6, others=others)
        g.tick()
    assert m.calls == [2]


def test_ticks_within_a_window_decide_nothing():
    m = FakeMachine()
    g = m.governor()
    for _ in range(10):
        m.run(0.01, others=1.0)
        g.tick()
    assert m.calls == [2]


def test_light_background_load_keeps_every_thread_and_the_count_stays_in_range():
    m = FakeMachine()
    g = m.governor(max_threads=4, cpus=8)
    assert g.decide(0.2) == 4  # a few percent elsewhere: still every core free
    assert g.decide(5.0) == 3
    assert g.decide(8.0) == 1  # never fewer than one thread


def test_mean_threads_weights_each_count_by_its_time():
    m = FakeMachine()
    g = m.governor()
    for others in (1.0, 1.0, 1.0, 1.0):
        m.run(0.5, others=others)
        g.tick()
    # 2 threads for the first two windows (switch after the second), 1 for the last two
    assert g.mean_threads() == pytest.approx(1.5)
    assert g.mean_threads() == 1.0  # reset: nothing measured since, the current count


def test_the_machine_accounting_is_read_on_linux():
    if not Path("/proc/stat").exists():
        pytest.skip("no /proc/stat on this OS: --threads auto keeps the count fixed here")
    a = machine_busy_seconds()
    sum(i * i for i in range(200_000))  # some CPU time of our own
    b = machine_busy_seconds()
    assert a is not None and b is not None and b >= a > 0


@pytest.mark.parametrize("value, expected", [(None, 0), (0, 0), ("3", 3), (2, 2), ("auto", AUTO), (" AUTO ", AUTO)])
def test_thread_policies_parse(value, expected):
    assert parse_threads(value) == expected


@pytest.mark.parametrize("value", ["x", "-1", -1, True, 1.5, "2.0"])
def test_bad_thread_policies_are_refused(value):
    with pytest.raises(EdgenasError, match="threads"):
        parse_threads(value)


def test_a_policy_restores_the_count_in_force_before():
    before = torch.get_num_threads()
    with thread_policy(1) as governor:
        assert governor is None and torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with thread_policy(AUTO) as governor:
        assert governor is not None and governor.max_threads == before
    assert torch.get_num_threads() == before


def test_search_with_auto_threads_records_them_per_epoch(tmp_path):
    before = torch.get_num_threads()
    result = CliRunner().invoke(app, [*TINY_SEARCH, "--threads", "auto", "--out", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (tmp_path / "s" / "history.jsonl").read_text().splitlines()]
    assert 1 <= records[-1]["threads"] <= before
    assert json.loads((tmp_path / "s" / "config.json").read_text())["config"]["threads"] == AUTO
    assert torch.get_num_threads() == before


def test_a_fixed_count_is_part_of_what_a_resume_must_share(tmp_path):
    out = str(tmp_path / "s")
    first = CliRunner().invoke(app, [*TINY_SEARCH, "--epochs", "2", "--threads", "1", "--stop-after", "1",
                                     "--out", out])
    assert first.exit_code == 0, first.output
    records = [json.loads(line) for line in (tmp_path / "s" / "history.jsonl").read_text().splitlines()]
    assert "threads" not in records[-1]  # a fixed count is in the config, not measured per epoch
    again = CliRunner().invoke(app, [*TINY_SEARCH, "--epochs", "2", "--threads", "2", "--resume", "--out", out])
    assert_clean_failure(again, "threads")


@pytest.mark.parametrize("args", [["--threads", "many"], ["--threads", "-2"]])
def test_bad_threads_on_the_command_line_fail_cleanly(tmp_path, args):
    for command in (TINY_SEARCH, ["train", "DARTS_V2", "--data", "synthetic:64", "-q"]):
        result = CliRunner().invoke(app, [*command, *args, "--out", str(tmp_path / "r")])
        assert_clean_failure(result, "threads")
        assert not (tmp_path / "r").exists()


def test_a_run_config_takes_a_thread_policy_per_stage(tmp_path):
    from edgenas.pipeline import load_config

    path = tmp_path / "c.toml"
    path.write_text('data = "synthetic:64"\n[search]\nthreads = "auto"\n[train]\nthreads = 1\n')
    cfg = load_config(path, {})
    assert cfg.search.threads == AUTO and cfg.train.threads == 1
    path.write_text('data = "synthetic:64"\n[search]\nthreads = "lots"\n')
    with pytest.raises(EdgenasError, match="threads"):
        load_config(path, {})


def test_only_the_cpus_this_process_may_use_are_counted(tmp_path, monkeypatch):
    import edgenas.threads as threads

    stat = tmp_path / "stat"
    stat.write_text("cpu  900 0 900 5000 0 0 0 0 0 0\n"
                    "cpu0 100 0 100 2500 0 0 0 0 0 0\n"
                    "cpu1 800 0 800 2500 0 0 0 0 0 0\n"
                    "intr 12345\n")
    monkeypatch.setattr(threads, "PROC_STAT", str(stat))
    hz = __import__("os").sysconf("SC_CLK_TCK")
    monkeypatch.setattr(threads, "usable_cpu_ids", lambda: {0})
    assert threads.machine_busy_seconds() == pytest.approx(200 / hz)  # cpu1's load is not ours to avoid
    monkeypatch.setattr(threads, "usable_cpu_ids", lambda: None)
    assert threads.machine_busy_seconds() == pytest.approx(1800 / hz)
    stat.write_text("intr 12345\n")
    assert threads.machine_busy_seconds() is None


def test_train_with_auto_threads_records_them_per_epoch(tmp_path):
    before = torch.get_num_threads()
    result = CliRunner().invoke(app, ["train", "DARTS_V2", "--data", "synthetic:64", "--epochs", "1", "--channels",
                                      "4", "--layers", "2", "--batch-size", "16", "--cutout", "0", "-q",
                                      "--threads", "auto", "--out", str(tmp_path / "t")])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (tmp_path / "t" / "history.jsonl").read_text().splitlines()]
    assert 1 <= records[-1]["threads"] <= before and torch.get_num_threads() == before


def test_others_busy_is_the_machine_less_this_process_per_second():
    from edgenas.threads import others_busy

    assert others_busy((0.0, 10.0, 4.0), (2.0, 14.0, 6.0)) == pytest.approx(1.0)  # 4 busy s, 2 mine, over 2 s
    assert others_busy((0.0, 10.0, 4.0), (2.0, 11.0, 6.0)) == 0.0  # accounting granularity: never negative
    assert others_busy((1.0, 10.0, 4.0), (1.0, 12.0, 4.0)) == 0.0  # no time passed: nothing to say


def test_a_run_from_before_thread_policies_resumes_at_the_default(tmp_path):
    from edgenas.checkpoints import save_checkpoint

    out = tmp_path / "s"
    first = CliRunner().invoke(app, [*TINY_SEARCH, "--epochs", "2", "--stop-after", "1", "--out", str(out)])
    assert first.exit_code == 0, first.output
    doc = torch.load(out / "last.pt", weights_only=True)
    del doc["config"]["threads"]  # as written before --threads existed
    save_checkpoint(out / "last.pt", {k: v for k, v in doc.items() if k not in ("format", "version")})
    refused = CliRunner().invoke(app, [*TINY_SEARCH, "--epochs", "2", "--threads", "1", "--resume", "--out", str(out)])
    assert_clean_failure(refused, "threads")
    again = CliRunner().invoke(app, [*TINY_SEARCH, "--epochs", "2", "--resume", "--out", str(out)])
    assert again.exit_code == 0, again.output
    assert len((out / "history.jsonl").read_text().splitlines()) == 2
