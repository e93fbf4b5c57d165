"""Loss curves of a run, from its out_dir/metrics.jsonl, as a PNG:

  python -m jaxgpt.plot out-shakespeare-char [--reference docs/nanogpt_seed_run.json] [--smooth=N] [--log_scale]

Draws the training loss of the logged iterations (every log_interval-th, as
train.py prints them: the legend says how often) and the train/val losses of
every evaluation (points), titled with the run's folder name. --smooth=N
draws each logged point as the mean of the N logged points up to it (a
moving average: the first N-1 have no point); --log_scale draws the loss on a
log axis. With --reference, the curves of a nanoGPT run beside them (its
training loss smoothed over the same iterations), from a JSON file holding
{"eager": {"train_loss_per_iter": [loss of iteration 0, 1, ...],
"eval": [{"step": 0, "train": ..., "val": ...}, ...]}} (as the nanoGPT
seed run drawn in docs/seed_run.png was recorded). Writes OUT_DIR/loss.png,
or --out. A training may still be writing metrics.jsonl: its unfinished last
line is left out. Needs matplotlib: pip install -e '.[plot]'.
"""

import argparse
import collections
import json
import pathlib
import sys

import numpy as np

from jaxgpt import entry
from jaxgpt.errors import JaxGPTError, optional_import


def read_metrics(out_dir: pathlib.Path) -> tuple[list[dict], list[dict]]:
  """(logged iterations, evaluations) of out_dir/metrics.jsonl."""
  path = out_dir / 'metrics.jsonl'
  try:
    text = path.read_text()
  except OSError as e:
    raise JaxGPTError(f'cannot read {path} ({e.strerror}): point at the out_dir of a training run') from None
  lines = text.splitlines()
  records = []
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      if number == len(lines) and not text.endswith('\n'):
        break  # a training is writing this line now
      raise JaxGPTError(f'{path} is corrupt at line {number}, column {e.colno} ({e.msg}): remove that line') from None
    if not isinstance(record, dict) or not isinstance(record.get('iter'), int):
      raise JaxGPTError(f'{path} is corrupt at line {number} (not a record with an iteration): remove that line')
    records.append(record)
  return [r for r in records if 'loss' in r], [r for r in records if 'val_loss' in r]


def read_reference(path: pathlib.Path) -> tuple[list[float], list[dict]]:
  """(train loss per iteration, evaluations) of a nanoGPT reference run."""
  try:
    run = json.loads(path.read_text())['eager']
    return run['train_loss_per_iter'], run['eval']
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise JaxGPTError(f'{path} is not a nanoGPT reference run ({type(e).__name__}: {e})') from None


def logged_every(iters: list[int]) -> int:
  """How many iterations apart the log's records are (train.py's
  log_interval): the commonest gap, as a resumed run may start off it."""
  gaps = collections.Counter(b - a for a, b in zip(iters, iters[1:]) if b > a)
  return gaps.most_common(1)[0][0] if gaps else 1


def moving_average(iters: list[int], losses: list[float], n: int, source: pathlib.Path) -> tuple[list[int], np.ndarray]:
  """Each loss from the n-th on as the mean of the n up to it, at its
  iteration (n=1: the losses as they are, none at all too)."""
  if n == 1:
    return iters, np.asarray(losses, dtype=float)
  if len(losses) < n:  # (np.convolve would swap its arguments)
    raise JaxGPTError(f'--smooth averages {n} training losses at a time, and {source} holds {len(losses)}: '
                      'pass a smaller --smooth')
  return iters[n - 1:], np.convolve(losses, np.ones(n) / n, mode='valid')


def train_label(who: str, interval: int, n: int) -> str:
  """What a training curve draws: a loss every interval iterations, each the mean of n."""
  logged = 'every iteration' if interval == 1 else f'every {interval} iterations, as logged'
  mean = '' if n == 1 else f'; moving average of {n} points' + (f', {n * interval} iterations' if interval > 1 else '')
  return f'{who} train loss ({logged}{mean})'


def plot(out_dir: pathlib.Path, reference: pathlib.Path | None, out: pathlib.Path, smooth: int = 1,
         log_scale: bool = False) -> None:
  matplotlib = optional_import('matplotlib', 'plotting', 'plot')
  matplotlib.use('Agg')  # files only, no screen needed
  from matplotlib import pyplot as plt

  iters, evals = read_metrics(out_dir)
  if not iters and not evals:
    raise JaxGPTError(f'{out_dir / "metrics.jsonl"} holds no iterations yet')
  interval = logged_every([r['iter'] for r in iters])
  x, y = moving_average([r['iter'] for r in iters], [r['loss'] for r in iters], smooth, out_dir / 'metrics.jsonl')
  alpha = 0.35 if smooth == 1 else 0.8  # a noisy curve in the background, a smoothed one as clear as the others
  figure, axes = plt.subplots(figsize=(8, 5))
  if reference:
    ref_train, ref_evals = read_reference(reference)
    # nanoGPT's file has every iteration's loss: a mean of it spans the iterations of jaxgpt's
    window = smooth * interval if smooth > 1 else 1
    ref_x, ref_y = moving_average(list(range(len(ref_train))), ref_train, window, reference)
    axes.plot(ref_x, ref_y, color='tab:green', alpha=alpha, linewidth=0.8, label=train_label('nanoGPT', 1, window))
    axes.plot([e['step'] for e in ref_evals], [e['val'] for e in ref_evals], 's--', color='tab:green',
              label='nanoGPT val loss (evaluations)')
  axes.plot(x, y, color='tab:blue', alpha=alpha, linewidth=0.8, label=train_label('jaxgpt', interval, smooth))
  axes.plot([e['iter'] for e in evals], [e['train_loss'] for e in evals], 'o-', color='tab:blue',
            label='jaxgpt train loss (evaluations)')
  axes.plot([e['iter'] for e in evals], [e['val_loss'] for e in evals], 'o-', color='tab:orange',
            label='jaxgpt val loss (evaluations)')
  axes.set_xlabel('iteration')
  if log_scale:
    axes.set_yscale('log')
    for axis_ticks in (axes.yaxis.set_major_formatter, axes.yaxis.set_minor_formatter):
      axis_ticks(matplotlib.ticker.FormatStrFormatter('%g'))  # 2, 3, 4, not 2x10^0, 3x10^0, 4x10^0
  axes.set_ylabel('loss (log scale)' if log_scale else 'loss')
  axes.set_title(out_dir.resolve().name)  # the run, not the folders of the machine it ran on
  axes.grid(alpha=0.3)
  axes.legend(loc='upper right')  # the losses fall: the top right is where no curve is, mostly
  figure.tight_layout()
  formats = figure.canvas.get_supported_filetypes()
  if out.suffix.lstrip('.').lower() not in formats:
    raise JaxGPTError(f'--out={out}: matplotlib writes no {out.suffix or "suffix-less"} file: end it in one of '
                      f'{", ".join("." + name for name in sorted(formats))}')
  try:
    figure.savefig(out, dpi=100)
  except OSError as e:
    raise JaxGPTError(f'cannot write {out} ({e.strerror or e}): pick a writable path in an existing folder') from None
  finally:
    plt.close(figure)


def points(text: str) -> int:
  """--smooth's value: a count of logged points, 1 or more."""
  if not text.isdigit() or int(text) < 1:
    raise argparse.ArgumentTypeError(f'{text!r} is not a number of logged points to average: give a whole number '
                                     '>= 1 (1: no smoothing)')
  return int(text)


class OneLineParser(argparse.ArgumentParser):
  """A mistake in the flags as one line, as every other user mistake: `error: ...`, exit 2."""

  def error(self, message: str):
    self.exit(2, f'error: {message}: see python -m jaxgpt.plot --help\n')


def main(argv: list[str]) -> int:
  parser = OneLineParser(prog='python -m jaxgpt.plot', description=__doc__,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('out_dir', type=pathlib.Path)
  parser.add_argument('--reference', type=pathlib.Path, help="a nanoGPT run's JSON, drawn beside")
  parser.add_argument('--out', type=pathlib.Path, help='the PNG to write (default: OUT_DIR/loss.png)')
  parser.add_argument('--smooth', type=points, default=1, metavar='N',
                      help='draw the training loss as a moving average of N logged points (default: 1, none)')
  parser.add_argument('--log_scale', action='store_true', help='the loss on a log axis')
  args = parser.parse_args(argv[1:])
  out = args.out or args.out_dir / 'loss.png'

  def plot_file() -> None:
    plot(args.out_dir, args.reference, out, args.smooth, args.log_scale)
    print(f'wrote {out}')

  return entry.run(plot_file, f'interrupted: {out} is as it was', uses_jax=False)


if __name__ == '__main__':
  sys.exit(main(sys.argv))
