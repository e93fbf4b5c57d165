"""A progress bar under the training log when stdout is a terminal (rich,
which Flax already depends on). Piped or redirected, the output is
nanoGPT's log lines alone, as scripts that parse them expect."""

import contextlib
import sys

from rich import progress


class TrainingProgress:
  """iter/max_iters and what the run is doing, kept below the log lines
  (which rich prints above it while it is shown): compiling, evaluating, or
  training, with the last step's loss, lr and tokens/s once there is one,
  and the time left."""

  def __init__(self, first_iter: int, max_iters: int, enabled: bool | None = None):
    self.enabled = sys.stdout.isatty() if enabled is None else enabled
    self.bar = progress.Progress(
        progress.TextColumn('iter'), progress.MofNCompleteColumn(), progress.BarColumn(),
        progress.TextColumn('{task.fields[status]}'), progress.TimeRemainingColumn(), disable=not self.enabled)
    self.last_step = ''  # the last step's loss, lr and tokens/s; none before the first step
    self.task = self.bar.add_task('train', total=max_iters + 1, completed=first_iter, status='compiling')

  def __enter__(self):
    self.bar.__enter__()
    return self

  def __exit__(self, exc_type, *exc):
    # left on the screen only with a step's figures: after an error or a
    # second Ctrl-C, its line says what happened; after eval_only, the log line does
    self.bar.live.transient = exc_type is not None or not self.last_step
    return self.bar.__exit__(exc_type, *exc)

  def show(self, status: str) -> None:
    """status in place of the figures, drawn at once (rich redraws 10 times a
    second: an evaluation may end before the next redraw)."""
    self.bar.update(self.task, status=status, refresh=True)

  @contextlib.contextmanager
  def evaluating(self):
    self.show('evaluating')
    try:
      yield
    finally:
      self.training()

  def training(self) -> None:
    """The last step's figures again, or 'training' until the first step ends (at the next redraw)."""
    self.bar.update(self.task, status=self.last_step or 'training')

  def update(self, done_iter: int, loss: float, lr: float, tokens_per_s: float) -> None:
    self.last_step = f'loss {loss:.4f}  lr {lr:.2e}  {tokens_per_s:,.0f} tokens/s'
    self.bar.update(self.task, completed=done_iter + 1, status=self.last_step)
