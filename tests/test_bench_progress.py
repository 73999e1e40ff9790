"""bench.progress: a bar on a terminal, plain lines every 10 % or 30 s elsewhere (issue 15.11)."""

import io

from nlss_fenicsx.bench import progress as progress_module
from nlss_fenicsx.bench.progress import Progress


class _Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_off_a_terminal_one_line_every_ten_percent(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(progress_module.time, "monotonic", clock)
    buf = io.StringIO()
    with Progress(100, "bench x", stream=buf) as bar:
        for _ in range(100):
            clock.t += 0.01
            bar.update()
    lines = buf.getvalue().splitlines()
    assert len(lines) == 10, lines
    assert lines[0].startswith("bench x: 10/100 (10%)")
    assert lines[-1].startswith("bench x: 100/100 (100%)")
    assert "\r" not in buf.getvalue()  # no bar drawn into a file


def test_off_a_terminal_a_line_after_30_s_of_silence(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(progress_module.time, "monotonic", clock)
    buf = io.StringIO()
    bar = Progress(1000, "slow", stream=buf)
    bar.update()  # 0.1 %: nothing yet
    assert buf.getvalue() == ""
    clock.t = 31.0
    bar.update(note="svd@48")
    assert buf.getvalue().splitlines() == ["slow: 2/1000 (0%) after 31 s; svd@48"]
    bar.update()
    bar.close()  # the last state is printed once at the end, not twice
    bar.close()
    assert len(buf.getvalue().splitlines()) == 2
    assert buf.getvalue().splitlines()[-1].startswith("slow: 3/1000")


def test_disabled_prints_nothing():
    buf = io.StringIO()
    with Progress(3, "quiet", enabled=False, stream=buf) as bar:
        for _ in range(3):
            bar.update()
        bar.write("hidden")
    assert buf.getvalue() == ""


def test_on_a_terminal_a_bar(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    buf = Tty()
    with Progress(4, "tty", stream=buf) as bar:
        assert bar._bar is not None
        for _ in range(4):
            bar.update()
    assert "4/4" in buf.getvalue() and "\r" in buf.getvalue()
