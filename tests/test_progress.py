"""cion_ray.progress without Ray: plain lines on a clock, totals, the terminal bar, listeners."""
import io
import subprocess
import sys

import pytest

from cion_ray import progress as P


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


@pytest.fixture
def lines():
    out: list[str] = []
    yield out


def test_plain_lines_every_n_seconds_and_a_final_line(lines):
    clock = Clock()
    with P.Progress("curate/embed", total=100, unit="crops", log=lines.append, bar=False, every=10,
                    clock=clock) as p:
        for _ in range(9):
            clock.t += 1
            p.update(5)
        assert lines == []  # 9 s: nothing yet
        clock.t += 1
        p.update(5)  # 10 s, 50 crops
        assert lines == ["curate/embed: 50/100 crops (50%), 5.0 crops/s, 0:10 left"]
        clock.t += 3
        p.update(10)
        assert len(lines) == 1
    assert lines[-1] == "curate/embed: 60/100 crops in 0:13 (4.6 crops/s)"


def test_every_zero_prints_each_update_and_unknown_total(lines):
    clock = Clock()
    p = P.Progress("track", unit="chunks", log=lines.append, bar=False, every=0, clock=clock)
    clock.t += 2
    p.update()
    clock.t += 2
    p.update(3)
    p.close()
    p.close()  # idempotent
    assert lines == ["track: 1 chunks, 0.5 chunks/s", "track: 4 chunks, 1.0 chunks/s", "track: 4 chunks in 0:04 (1.0 chunks/s)"]


def test_env_sets_the_interval(monkeypatch):
    monkeypatch.setenv(P.EVERY_ENV, "0")
    assert P.report_every() == 0
    monkeypatch.setenv(P.EVERY_ENV, "2.5")
    assert P.report_every() == 2.5
    for bad in ("x", "-1", "nan"):
        monkeypatch.setenv(P.EVERY_ENV, bad)
        assert P.report_every() == P.DEFAULT_EVERY_S
    monkeypatch.delenv(P.EVERY_ENV)
    assert P.report_every() == P.DEFAULT_EVERY_S


def test_verbose_reads_the_environment(monkeypatch):
    monkeypatch.delenv(P.VERBOSE_ENV, raising=False)
    assert not P.verbose()
    for yes in ("1", "true", "YES", "on"):
        monkeypatch.setenv(P.VERBOSE_ENV, yes)
        assert P.verbose()
    monkeypatch.setenv(P.VERBOSE_ENV, "0")
    assert not P.verbose()


def test_initial_units_are_left_out_of_the_rate(lines):
    clock = Clock()
    p = P.Progress("pretrain", total=200, unit="it", log=lines.append, bar=False, every=0, initial=100, clock=clock)
    clock.t += 10
    p.update(20)
    s = p.state()
    assert s["done"] == 120 and s["rate"] == pytest.approx(2.0) and s["eta_s"] == pytest.approx(40.0)


def test_a_second_rate_and_a_new_label(lines):
    clock = Clock()
    p = P.Progress("pretrain", total=100, unit="it", label="epoch 1/2", log=lines.append, bar=False, every=0,
                   also=(64, "img"), clock=clock)
    clock.t += 10
    p.update(50)
    assert lines[-1] == "epoch 1/2: 50/100 it (50%), 5.0 it/s, 320 img/s, 0:10 left"
    p.set_label("epoch 2/2")
    clock.t += 10
    p.update(50)
    p.close()
    assert len(lines) == 2
    assert lines[-1] == "epoch 2/2: 100/100 it in 0:20 (5.0 it/s, 320 img/s)"
    assert p.state()["stage"] == "pretrain"


def test_no_periodic_line_once_all_is_done_and_no_final_line_when_asked(lines):
    clock = Clock()
    p = P.Progress("curate/denoise", total=2, unit="videos", log=lines.append, bar=False, every=0, clock=clock)
    clock.t += 1
    p.update(2)
    p.close()
    assert lines == ["curate/denoise: 2/2 videos in 0:01 (2.0 videos/s)"]
    seen: list[dict] = []
    P.add_listener(seen.append)
    try:
        q = P.Progress("curate/link", total=3, unit="ranges", log=lines.append, bar=False, final_line=False)
        q.update(3)
        q.close()
    finally:
        P.remove_listener(seen.append)
    assert len(lines) == 1 and seen[-1]["finished"] and seen[-1]["done"] == 3


def test_set_total_later(lines):
    clock = Clock()
    p = P.Progress("x", unit="rows", log=lines.append, bar=False, every=0, clock=clock)
    assert p.state()["total"] is None and p.state()["eta_s"] is None
    p.set_total(10)
    clock.t += 1
    p.update(5)
    assert p.state()["eta_s"] == pytest.approx(1.0)
    assert lines[-1].startswith("x: 5/10 rows (50%)")


def test_listeners_throttled_to_one_a_second_and_called_at_close(lines):
    clock = Clock()
    seen: list[dict] = []
    P.add_listener(seen.append)
    P.add_listener(seen.append)  # once only
    try:
        p = P.Progress("curate/link", total=4, unit="ranges", log=lines.append, bar=False, clock=clock)
        assert len(seen) == 1 and seen[0]["done"] == 0 and not seen[0]["finished"]
        p.update()
        clock.t += 0.5
        p.update()
        assert len(seen) == 1  # within the second
        clock.t += 0.6
        p.update()
        assert len(seen) == 2 and seen[-1]["done"] == 3
        p.close()
        assert seen[-1]["finished"] and seen[-1]["done"] == 3
        assert set(seen[-1]) >= {"stage", "done", "total", "unit", "rate", "eta_s", "finished"}
        assert seen[-1]["stage"] == "curate/link" and seen[-1]["unit"] == "ranges"
    finally:
        P.remove_listener(seen.append)
    n = len(seen)
    P.Progress("other", total=1, log=lines.append, bar=False, clock=clock).close()
    assert len(seen) == n  # removed


def test_a_failing_stage_tells_listeners_and_prints_no_totals(lines):
    seen: list[dict] = []
    P.add_listener(seen.append)
    try:
        with pytest.raises(RuntimeError):
            with P.Progress("evaluate/features", total=10, log=lines.append, bar=False) as p:
                p.update(3)
                raise RuntimeError("boom")
    finally:
        P.remove_listener(seen.append)
    assert seen[-1]["failed"] and not seen[-1]["finished"]
    assert lines == []


def test_a_broken_listener_does_not_stop_the_stage(lines, capsys):
    def broken(state):
        raise ValueError("disk full")

    P.add_listener(broken)
    try:
        with P.Progress("s", total=2, log=lines.append, bar=False) as p:
            p.update(2)
    finally:
        P.remove_listener(broken)
    assert "disk full" in capsys.readouterr().err
    assert lines[-1].startswith("s: 2/2 it in")


def test_the_terminal_bar_is_tqdm(monkeypatch):
    buf = io.StringIO()
    monkeypatch.setattr(sys, "stderr", buf)
    final: list[str] = []
    with P.Progress("track", total=8, unit="frames", label="tracking", bar=True, log=final.append) as p:
        assert "tracking:   0%" in buf.getvalue() and "0/8" in buf.getvalue()
        p._bar.mininterval = 0  # draw every update here
        p.update(8)
        assert "8/8" in buf.getvalue()
    out = buf.getvalue()
    assert "\r" in out and "\n" not in out  # redrawn in place, then cleared
    assert final[-1].startswith("tracking: 8/8 frames in ")  # one line stays


def test_not_a_terminal_means_no_bar():
    # a subprocess with pipes for stdout and stderr: plain lines only, no carriage returns
    code = ("from cion_ray.progress import Progress, interactive\n"
            "assert not interactive()\n"
            "with Progress('s', total=3, unit='x', every=0) as p:\n"
            "    p.update(); p.update(2)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stderr
    assert r.stderr.splitlines()[0] == "s: 1/3 x (33%), " + r.stderr.splitlines()[0].split(", ", 1)[1]
    assert len(r.stderr.splitlines()) == 2 and " 3/3 x in " in r.stderr.splitlines()[-1]


def test_progress_does_not_import_ray():
    r = subprocess.run([sys.executable, "-c", "import sys, cion_ray.progress; sys.exit('ray' in sys.modules)"])
    assert r.returncode == 0
