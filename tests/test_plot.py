"""python -m jaxgpt.plot: a run's metrics.jsonl (and nanoGPT's curves) drawn to a PNG."""

import json

import numpy as np
import pytest
from matplotlib import image

from jaxgpt import plot

ORANGE, GREEN = np.array([1.0, 0.498, 0.055]), np.array([0.173, 0.627, 0.173])  # tab:orange, tab:green


def write_run(out_dir):
  out_dir.mkdir()
  lines = [{'iter': 0, 'train_loss': 4.2, 'val_loss': 4.19}]
  lines += [{'iter': i, 'loss': 4.2 - i / 20, 'lr': 1e-3, 'ms': 40.0, 'tokens_per_s': 19200.0, 'mfu': None}
            for i in range(0, 41)]
  lines += [{'iter': 20, 'train_loss': 3.2, 'val_loss': 3.3}, {'iter': 40, 'train_loss': 2.2, 'val_loss': 2.5}]
  (out_dir / 'metrics.jsonl').write_text(''.join(json.dumps(line) + '\n' for line in lines))


def has_colour(pixels, colour) -> bool:
  return bool((np.abs(pixels[..., :3] - colour).max(axis=-1) < 0.05).sum() > 50)


def test_plot_draws_the_run_and_the_reference(tmp_path, capsys):
  write_run(tmp_path / 'out')
  reference = tmp_path / 'ref.json'
  reference.write_text(json.dumps({'eager': {'train_loss_per_iter': [4.1 - i / 25 for i in range(41)],
                                             'eval': [{'step': 0, 'train': 4.1, 'val': 4.1},
                                                      {'step': 40, 'train': 2.5, 'val': 2.6}]}}))
  assert plot.main(['plot', str(tmp_path / 'out')]) == 0
  assert capsys.readouterr().out == f'wrote {tmp_path / "out" / "loss.png"}\n'
  alone = image.imread(tmp_path / 'out' / 'loss.png')
  assert alone.shape[:2] == (500, 800)
  assert has_colour(alone, ORANGE) and not has_colour(alone, GREEN)  # val curve, no reference
  assert plot.main(['plot', str(tmp_path / 'out'), '--reference', str(reference), '--out', str(tmp_path / 'both.png')]) == 0
  both = image.imread(tmp_path / 'both.png')
  assert has_colour(both, ORANGE) and has_colour(both, GREEN)


@pytest.mark.parametrize('setup, message', [
    (lambda d: None, 'cannot read {d}/metrics.jsonl (No such file or directory): point at the out_dir of a training run'),
    (lambda d: (d.mkdir(), (d / 'metrics.jsonl').write_text('{"iter": 0,\n')),
     'metrics.jsonl is corrupt at line 1, column 12 (Expecting property name enclosed in double quotes): remove that line'),
    (lambda d: (d.mkdir(), (d / 'metrics.jsonl').write_text('{"iter": 0, "loss": 4.2}\n\n{"iter": 1, "lo\n'
                                                            '{"iter": 2, "loss": 4.1}\n')),
     'metrics.jsonl is corrupt at line 3, column 13 (Unterminated string starting at): remove that line'),
    (lambda d: (d.mkdir(), (d / 'metrics.jsonl').write_text('')), 'holds no iterations yet'),
    (lambda d: (d.mkdir(), (d / 'metrics.jsonl').write_text('3\n')), 'is corrupt at line 1 (not a record with an iteration)'),
    (lambda d: (d.mkdir(), (d / 'metrics.jsonl').write_text('{"loss": 3.0}\n')), 'is corrupt at line 1 (not a record'),
])
def test_plot_errors(tmp_path, capsys, setup, message):
  out_dir = tmp_path / 'out'
  setup(out_dir)
  assert plot.main(['plot', str(out_dir)]) == 1
  err = capsys.readouterr().err
  assert err.startswith('error: ') and message.format(d=out_dir) in err and len(err.splitlines()) == 1
  assert not (out_dir / 'loss.png').exists()


def test_bad_reference(tmp_path, capsys):
  write_run(tmp_path / 'out')
  (tmp_path / 'ref.json').write_text('{"lazy": 1}')
  assert plot.main(['plot', str(tmp_path / 'out'), '--reference', str(tmp_path / 'ref.json')]) == 1
  assert "ref.json is not a nanoGPT reference run (KeyError: 'eager')" in capsys.readouterr().err


@pytest.mark.parametrize('out, message', [
    ('nope/loss.png', 'cannot write {t}/nope/loss.png (No such file or directory): pick a writable path'),
    ('loss.txt', '--out={t}/loss.txt: matplotlib writes no .txt file: end it in one of '),
])
def test_bad_out_path(tmp_path, capsys, out, message):
  write_run(tmp_path / 'out')
  assert plot.main(['plot', str(tmp_path / 'out'), '--out', str(tmp_path / out)]) == 1
  [line] = capsys.readouterr().err.splitlines()
  assert line.startswith('error: ' + message.format(t=tmp_path)), line
  assert not (tmp_path / out).exists()


def test_plot_leaves_out_the_line_a_training_is_writing(tmp_path, capsys):
  write_run(tmp_path / 'out')
  with (tmp_path / 'out' / 'metrics.jsonl').open('a') as f:
    f.write('{"iter": 41, "loss": 2.1, "lr": 0.00')  # no newline yet
  assert plot.main(['plot', str(tmp_path / 'out')]) == 0
  assert has_colour(image.imread(tmp_path / 'out' / 'loss.png'), ORANGE)


def test_plot_titles_the_figure_with_the_runs_folder_name_not_its_path(tmp_path, monkeypatch):
  from matplotlib import pyplot as plt
  (tmp_path / 'runs').mkdir()
  write_run(tmp_path / 'runs' / 'out-shakespeare-char')
  monkeypatch.setattr(plt, 'close', lambda figure: None)  # keep the figure, to read its title back
  assert plot.main(['plot', str(tmp_path / 'runs' / 'out-shakespeare-char')]) == 0
  assert plt.gcf().axes[0].get_title() == 'out-shakespeare-char'
  monkeypatch.undo()
  plt.close('all')
