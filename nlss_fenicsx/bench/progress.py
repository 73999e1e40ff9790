"""Progress of a long run, on a terminal and off it (issue 15, item 11).

On a terminal a tqdm bar; with the output redirected (a log file, CI) a bar draws nothing
useful, so :class:`Progress` prints one plain line every 10 % of the work or every 30 s,
whichever comes first, plus one at the end. ``enabled=False`` prints nothing.
"""

from __future__ import annotations

import sys
import time

__all__ = ["Progress"]


class Progress:
    """Count finished units of work and report them.

    Parameters
    ----------
    total : int
        Units of work expected (may be changed later through :attr:`total`).
    desc : str
        What is running, printed at the start of every line.
    enabled : bool
        ``False``: silent.
    stream : file-like, optional
        Where to write (default ``sys.stderr``). A bar is drawn only when it is a TTY.
    every_s : float
        Off a terminal: the longest silence between two lines, in seconds.
    every_fraction : float
        Off a terminal: a line each time this fraction of ``total`` is done.

    Examples
    --------
    >>> import io
    >>> buf = io.StringIO()
    >>> with Progress(4, "demo", stream=buf) as bar:
    ...     for _ in range(4):
    ...         bar.update()
    >>> print(buf.getvalue().splitlines()[-1].split(" after")[0])
    demo: 4/4 (100%)
    """

    def __init__(self, total: int, desc: str, *, enabled: bool = True, stream=None,
                 every_s: float = 30.0, every_fraction: float = 0.1):
        self.total = int(total)
        self.desc = desc
        self.done = 0
        self._stream = sys.stderr if stream is None else stream
        self._enabled = enabled
        self._every_s = every_s
        self._every_fraction = every_fraction
        self._t0 = self._last_t = time.monotonic()
        self._last_done = 0
        self._bar = None
        if enabled and getattr(self._stream, "isatty", lambda: False)():
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, desc=desc, file=self._stream, dynamic_ncols=True)

    def __enter__(self) -> Progress:
        """Return ``self``."""
        return self

    def __exit__(self, *exc) -> None:
        """Close the bar (print the final line off a terminal)."""
        self.close()

    def set_total(self, total: int) -> None:
        """Change the expected number of units (work found to be smaller or larger)."""
        self.total = int(total)
        if self._bar is not None:
            self._bar.total = self.total
            self._bar.refresh()

    def update(self, count: int = 1, note: str = "") -> None:
        """Record ``count`` more finished units; ``note`` says what was last done."""
        self.done += count
        if self._bar is not None:
            if note:
                self._bar.set_postfix_str(note, refresh=False)
            self._bar.update(count)
            return
        if not self._enabled:
            return
        now = time.monotonic()
        step = max(1, int(self._every_fraction * self.total))
        if (self.done - self._last_done >= step or now - self._last_t >= self._every_s
                or self.done >= self.total):
            self._line(note)
            self._last_t, self._last_done = now, self.done

    def _line(self, note: str = "") -> None:
        pct = 100.0 * self.done / self.total if self.total else 100.0
        elapsed = time.monotonic() - self._t0
        text = f"{self.desc}: {self.done}/{self.total} ({pct:.0f}%) after {elapsed:.0f} s"
        print(text + (f"; {note}" if note else ""), file=self._stream, flush=True)

    def write(self, text: str) -> None:
        """Print a line without breaking the bar."""
        if self._bar is not None:
            self._bar.write(text, file=self._stream)
        elif self._enabled:
            print(text, file=self._stream, flush=True)

    def close(self) -> None:
        """Finish: close the bar, or print the last line if it was not printed yet."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self._enabled and self._last_done != self.done:
            self._line()
            self._last_done = self.done
