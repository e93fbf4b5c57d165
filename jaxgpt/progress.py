"""A progress bar under the training log when stdout is a terminal (rich,
which Flax already depends on). Piped or redirected, the output is
nanoGPT's log lines alone, as scripts that parse them expect."""

import sys

from rich import progress


class TrainingProgress:
  """iter/max_iters, the last loss, lr, tokens/s and the time left, kept
  below the log lines (which rich prints above it while it is shown)."""

  def __init__(self, first_iter: int, max_iters: int, enabled: bool | None = None):
    self.enabled = sys.stdout.isatty() if enabled is None else enabled
    self.bar = progress.Progress(
        progress.TextColumn('iter'), progress.MofNCompleteColumn(), progress.BarColumn(),
        progress.TextColumn('loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}  '
                            '{task.fields[tokens_per_s]:,.0f} tokens/s'),
        progress.TimeRemainingColumn(), disable=not self.enabled)
    self.task = self.bar.add_task('train', total=max_iters + 1, completed=first_iter,
                                  loss=float('nan'), lr=0.0, tokens_per_s=0.0)

  def __enter__(self):
    self.bar.__enter__()
    return self

  def __exit__(self, *exc):
    return self.bar.__exit__(*exc)

  def update(self, done_iter: int, loss: float, lr: float, tokens_per_s: float) -> None:
    self.bar.update(self.task, completed=done_iter + 1, loss=loss, lr=lr, tokens_per_s=tokens_per_s)
