"""What every command-line entry point does around its work.

A command that runs jax sets its process up first (`jaxgpt.runtime.setup`:
importing jaxgpt does not do it, so that a library user's process is left as
it was); one that does not (plotting, preparing data) leaves jax unloaded.
SIGTERM, and SIGHUP (the terminal closed; not under `nohup`), then act as
Ctrl-C; a command that must stop at a point of its choosing notes them
(`StopSignals`). A user's mistake (`JaxGPTError`) ends as one `error: ...`
line and exit status 1, and Ctrl-C as one line saying what was left as it
was, and exit status 130; neither prints a traceback. Standard output
closed by its reader (`| head`) ends the command quietly, with exit status
0: the reader had what it wanted.
"""

import contextlib
import os
import signal
import stat
import sys
import types
from collections.abc import Callable

from jaxgpt.errors import JaxGPTError

# the signals that stop a command as Ctrl-C does: Ctrl-C itself, a kill, and the terminal closed (an ssh session
# dropped)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def leave_closed_terminal() -> None:
  """After SIGHUP: standard output and error, where they went to the
  terminal, go to /dev/null instead, since a write to a terminal that has
  closed fails (EIO) and would end the work before it saved or stopped
  cleanly. A file or a pipe (a log) is kept."""
  devnull = os.open(os.devnull, os.O_WRONLY)
  for stream in (sys.stdout, sys.stderr):
    with contextlib.suppress(OSError, ValueError):  # a closed or detached stream: nothing to keep from it
      if stat.S_ISCHR(os.fstat(stream.fileno()).st_mode):  # the terminal (a character device), not a file or pipe
        os.dup2(devnull, stream.fileno())
  os.close(devnull)


def leave_closed_pipe() -> None:
  """After a write to standard output failed as its reader closed it
  (BrokenPipeError, `| head`): what is still written to it, and the
  interpreter's flush at exit, go to /dev/null instead of failing again."""
  devnull = os.open(os.devnull, os.O_WRONLY)
  with contextlib.suppress(OSError, ValueError):  # a detached stream: nothing more is written to it
    os.dup2(devnull, sys.stdout.fileno())
  os.close(devnull)


def ignored(signum: int) -> bool:
  """Whether this process was told to ignore the signal (`nohup` ignores SIGHUP, a background job SIGINT)."""
  return signal.getsignal(signum) is signal.SIG_IGN


class StopSignals:
  """Within: Ctrl-C, SIGTERM and SIGHUP (the terminal closed) each stop the
  work as Ctrl-C does, with a KeyboardInterrupt named after the signal; the
  handlers there before are put back on leaving. After SIGHUP, what would go
  to the closed terminal goes nowhere (leave_closed_terminal).

  signals: those handled. noted: the first is noted in `received` (its
  number) and passed to `on_noted`, not raised, so that the work stops where
  it chooses (between two steps, never midway through reading or writing a
  checkpoint); a second is raised at once. A SIGHUP that this process was
  told to ignore (`nohup`) stays ignored: its user asked for the work to
  outlive the terminal. keep_ignored: so does any other ignored signal (a
  background job's SIGINT)."""

  def __init__(self, signals: tuple[int, ...] = STOP_SIGNALS, *, noted: bool = False, keep_ignored: bool = False):
    self.signals, self.noted, self.keep_ignored = signals, noted, keep_ignored
    self.received: list[int] = []

  def __enter__(self) -> 'StopSignals':
    handled = [s for s in self.signals if not (ignored(s) and (self.keep_ignored or s == signal.SIGHUP))]
    self.replaced = {s: signal.signal(s, self._stop) for s in handled}
    return self

  def __exit__(self, *exc_info) -> None:
    for signum, handler in self.replaced.items():
      signal.signal(signum, handler)

  def _stop(self, signum: int, frame: types.FrameType | None) -> None:
    if signum == signal.SIGHUP:
      leave_closed_terminal()
    if not self.noted or self.received:
      raise KeyboardInterrupt(signal.Signals(signum).name)
    self.received.append(signum)
    self.on_noted(signum)

  def first_signal(self) -> str:
    """The name of the signal noted first (SIGINT for Ctrl-C)."""
    return signal.Signals(self.received[0]).name

  def on_noted(self, signum: int) -> None:
    """What the work says on the first signal, noted: nothing, unless a subclass says it."""


def run(work: Callable[[], int | None], interrupted: str | Callable[[KeyboardInterrupt], str], *,
        uses_jax: bool = True) -> int:
  """work()'s exit status (None: 0). `interrupted`: the line printed on
  Ctrl-C, SIGTERM or SIGHUP, or a function of the KeyboardInterrupt giving
  it. uses_jax: whether work runs jax, whose process is then set up first."""
  # Ctrl-C is Python's own KeyboardInterrupt already (and none in a background job, which ignores it)
  with StopSignals((signal.SIGTERM, signal.SIGHUP)):  # called in process (tests, notebooks): left as they were
    try:
      if uses_jax:
        # imported here, not with this module: a command that does not run jax need not load it
        from jaxgpt import runtime
        runtime.setup()  # within: an XLA_FLAGS that XLA refuses is a JaxGPTError
      status = work() or 0
      sys.stdout.flush()  # here, not at exit: a reader that closed the pipe is then one more case below
      return status
    except BrokenPipeError:  # stdout's reader closed it: the reader had what it wanted (`| head`); no traceback
      leave_closed_pipe()
      return 0
    except JaxGPTError as e:
      print(f'error: {e}', file=sys.stderr)
      return 1
    except KeyboardInterrupt as e:
      print(interrupted(e) if callable(interrupted) else interrupted, file=sys.stderr)
      return 130
