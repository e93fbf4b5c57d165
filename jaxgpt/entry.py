"""What every command-line entry point does around its work.

The process is set up first (`jaxgpt.runtime.setup`: importing jaxgpt does
not do it, so that a library user's process is left as it was); SIGTERM then
acts as Ctrl-C. A user's mistake (`JaxGPTError`) ends as one `error: ...`
line and exit status 1, and Ctrl-C as one line saying what was left as it
was, and exit status 130; neither prints a traceback.
"""

import signal
import sys
from collections.abc import Callable

from jaxgpt.errors import JaxGPTError


def run(work: Callable[[], int | None], interrupted: str | Callable[[KeyboardInterrupt], str]) -> int:
  """work()'s exit status (None: 0). `interrupted`: the line printed on
  Ctrl-C or SIGTERM, or a function of the KeyboardInterrupt giving it."""
  # imported here, not with this module: data.py and prepare.py import this
  # module, and a program that imports them as a library need not load jax
  from jaxgpt import runtime
  runtime.setup()
  previous = signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM as Ctrl-C: cleaned up, one line
  try:
    return work() or 0
  except JaxGPTError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  except KeyboardInterrupt as e:
    print(interrupted(e) if callable(interrupted) else interrupted, file=sys.stderr)
    return 130
  finally:
    signal.signal(signal.SIGTERM, previous)  # called in process (tests, notebooks): left as it was
