"""Loss curves of a run, from its out_dir/metrics.jsonl, as a PNG:

  python -m jaxgpt.plot out-shakespeare-char [--reference nanogpt_run.json]

Draws the training loss of every logged iteration and the train/val losses
of every evaluation, titled with the run's folder name; with --reference,
the curves of a nanoGPT run beside them, from a JSON file holding
{"eager": {"train_loss_per_iter": [loss of iteration 0, 1, ...],
"eval": [{"step": 0, "train": ..., "val": ...}, ...]}} (as the nanoGPT
seed run drawn in docs/seed_run.png was recorded). Writes OUT_DIR/loss.png,
or --out. A training may still be writing metrics.jsonl: its unfinished last
line is left out. Needs matplotlib: pip install -e '.[plot]'.
"""

import argparse
import json
import pathlib
import sys

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


def plot(out_dir: pathlib.Path, reference: pathlib.Path | None, out: pathlib.Path) -> None:
  matplotlib = optional_import('matplotlib', 'plotting', 'plot')
  matplotlib.use('Agg')  # files only, no screen needed
  from matplotlib import pyplot as plt

  iters, evals = read_metrics(out_dir)
  if not iters and not evals:
    raise JaxGPTError(f'{out_dir / "metrics.jsonl"} holds no iterations yet')
  figure, axes = plt.subplots(figsize=(8, 5))
  if reference:
    ref_train, ref_evals = read_reference(reference)
    axes.plot(range(len(ref_train)), ref_train, color='tab:green', alpha=0.35, linewidth=0.8,
              label='nanoGPT train (per iteration)')
    axes.plot([e['step'] for e in ref_evals], [e['val'] for e in ref_evals], 's--', color='tab:green',
              label='nanoGPT val')
  axes.plot([r['iter'] for r in iters], [r['loss'] for r in iters], color='tab:blue', alpha=0.35, linewidth=0.8,
            label='jaxgpt train (per iteration)')
  axes.plot([e['iter'] for e in evals], [e['train_loss'] for e in evals], 'o-', color='tab:blue',
            label='jaxgpt train (eval)')
  axes.plot([e['iter'] for e in evals], [e['val_loss'] for e in evals], 'o-', color='tab:orange',
            label='jaxgpt val')
  axes.set_xlabel('iteration')
  axes.set_ylabel('loss')
  axes.set_title(out_dir.resolve().name)  # the run, not the folders of the machine it ran on
  axes.grid(alpha=0.3)
  axes.legend()
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


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(prog='python -m jaxgpt.plot', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('out_dir', type=pathlib.Path)
  parser.add_argument('--reference', type=pathlib.Path, help="a nanoGPT run's JSON, drawn beside")
  parser.add_argument('--out', type=pathlib.Path, help='the PNG to write (default: OUT_DIR/loss.png)')
  args = parser.parse_args(argv[1:])
  out = args.out or args.out_dir / 'loss.png'

  def plot_file() -> None:
    plot(args.out_dir, args.reference, out)
    print(f'wrote {out}')

  return entry.run(plot_file, f'interrupted: {out} is as it was')


if __name__ == '__main__':
  sys.exit(main(sys.argv))
