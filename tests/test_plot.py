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


def write_logged_run(out_dir, losses, log_interval=10):
  """metrics.jsonl of a run that logged `losses` every log_interval iterations, evaluated at the first and last."""
  out_dir.mkdir()
  iters = [i * log_interval for i in range(len(losses))]
  lines = [{'iter': iters[0], 'train_loss': 4.2, 'val_loss': 4.19}]
  lines += [{'iter': i, 'loss': loss, 'lr': 1e-3, 'ms': 40.0, 'tokens_per_s': 19200.0, 'mfu': None}
            for i, loss in zip(iters, losses)]
  lines += [{'iter': iters[-1], 'train_loss': 2.2, 'val_loss': 2.5}]
  (out_dir / 'metrics.jsonl').write_text(''.join(json.dumps(line) + '\n' for line in lines))


def drawn(monkeypatch, *argv):
  """The axes `python -m jaxgpt.plot ARGV` drew (matplotlib's objects, not pixels)."""
  from matplotlib import pyplot as plt
  made, subplots = [], plt.subplots
  monkeypatch.setattr(plt, 'subplots', lambda *args, **kwargs: made.append(subplots(*args, **kwargs)) or made[-1])
  assert plot.main(['plot', *map(str, argv)]) == 0
  [(figure, axes)] = made  # closed, and still readable
  return axes


def curves(axes) -> dict[str, tuple[list, list]]:
  """{label: (x, y)} of each line drawn, as the legend names it."""
  assert [t.get_text() for t in axes.get_legend().get_texts()] == [line.get_label() for line in axes.get_lines()]
  return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in axes.get_lines()}


def write_reference(path, train_losses):
  path.write_text(json.dumps({'eager': {'train_loss_per_iter': train_losses,
                                        'eval': [{'step': 0, 'train': 4.1, 'val': 4.1},
                                                 {'step': 40, 'train': 2.5, 'val': 2.6}]}}))


def test_plot_labels_what_it_draws(tmp_path, monkeypatch):
  write_logged_run(tmp_path / 'out', [4.0, 2.0, 6.0, 0.5, 8.0])
  write_reference(tmp_path / 'ref.json', [4.1 - i / 25 for i in range(41)])
  axes = drawn(monkeypatch, tmp_path / 'out', '--reference', tmp_path / 'ref.json')
  drew = curves(axes)
  assert list(drew) == ['nanoGPT train loss (every iteration)', 'nanoGPT val loss (evaluations)',
                        'jaxgpt train loss (every 10 iterations, as logged)', 'jaxgpt train loss (evaluations)',
                        'jaxgpt val loss (evaluations)']
  assert drew['jaxgpt train loss (every 10 iterations, as logged)'] == ([0, 10, 20, 30, 40], [4.0, 2.0, 6.0, 0.5, 8.0])
  assert drew['jaxgpt val loss (evaluations)'] == ([0, 40], [4.19, 2.5])
  assert drew['nanoGPT train loss (every iteration)'][0] == list(range(41))
  assert [line.get_marker() for line in axes.get_lines()] == ['None', 's', 'None', 'o', 'o']  # evaluations as points
  assert (axes.get_xlabel(), axes.get_ylabel(), axes.get_yscale()) == ('iteration', 'loss', 'linear')
  write_logged_run(tmp_path / 'every', [4.0, 3.0], log_interval=1)
  assert 'jaxgpt train loss (every iteration)' in curves(drawn(monkeypatch, tmp_path / 'every'))


def test_smooth_draws_a_moving_average_of_the_logged_points(tmp_path, monkeypatch):
  write_logged_run(tmp_path / 'out', [4.0, 2.0, 6.0, 0.5, 8.0])
  write_reference(tmp_path / 'ref.json', [float(i) for i in range(41)])
  drew = curves(drawn(monkeypatch, tmp_path / 'out', '--smooth=2', '--reference', tmp_path / 'ref.json'))
  # each point the mean of the 2 logged up to it: (4+2)/2, (2+6)/2, (6+0.5)/2, (0.5+8)/2
  assert drew['jaxgpt train loss (every 10 iterations, as logged; moving average of 2 points, 20 iterations)'] == \
      ([10, 20, 30, 40], [3.0, 4.0, 3.25, 4.25])
  # nanoGPT's losses of every iteration, averaged over the same 20 iterations: 0..19 at 19, ..., 21..40 at 40
  ref_x, ref_y = drew['nanoGPT train loss (every iteration; moving average of 20 points)']
  assert ref_x == list(range(19, 41)) and ref_y == pytest.approx([i - 9.5 for i in range(19, 41)])
  assert drew['jaxgpt val loss (evaluations)'] == ([0, 40], [4.19, 2.5])  # evaluations as they are
  drew = curves(drawn(monkeypatch, tmp_path / 'out', '--smooth=3'))
  x, y = drew['jaxgpt train loss (every 10 iterations, as logged; moving average of 3 points, 30 iterations)']
  assert x == [20, 30, 40] and y == pytest.approx([12 / 3, 8.5 / 3, 14.5 / 3])


def test_log_scale(tmp_path, monkeypatch):
  write_run(tmp_path / 'out')
  axes = drawn(monkeypatch, tmp_path / 'out', '--log_scale')
  assert (axes.get_yscale(), axes.get_ylabel()) == ('log', 'loss (log scale)')
  assert curves(axes)['jaxgpt val loss (evaluations)'] == ([0, 20, 40], [4.19, 3.3, 2.5])  # the same data


NOT_POINTS = 'is not a number of logged points to average: give a whole number >= 1 (1: no smoothing)'


@pytest.mark.parametrize('flags, message', [
    (['--smooth=0'], f"argument --smooth: '0' {NOT_POINTS}"),
    (['--smooth=-2'], f"argument --smooth: '-2' {NOT_POINTS}"),
    (['--smooth=five'], f"argument --smooth: 'five' {NOT_POINTS}"),
    (['--smooth'], 'argument --smooth: expected one argument'),
    (['--log_scale=yes'], "argument --log_scale: ignored explicit argument 'yes'"),
    (['--smoothing=3'], 'unrecognized arguments: --smoothing=3'),
])
def test_bad_flags_are_one_error_line(tmp_path, capsys, flags, message):
  write_run(tmp_path / 'out')
  with pytest.raises(SystemExit) as e:
    plot.main(['plot', str(tmp_path / 'out'), *flags])
  assert e.value.code == 2
  assert capsys.readouterr().err == f'error: {message}: see python -m jaxgpt.plot --help\n'
  assert not (tmp_path / 'out' / 'loss.png').exists()


def test_smoothing_over_more_points_than_logged_is_one_error_line(tmp_path, capsys):
  write_logged_run(tmp_path / 'out', [4.0, 2.0, 6.0, 0.5, 8.0])
  assert plot.main(['plot', str(tmp_path / 'out'), '--smooth=6']) == 1
  assert capsys.readouterr().err == (f'error: --smooth averages 6 training losses at a time, and '
                                     f'{tmp_path / "out" / "metrics.jsonl"} holds 5: pass a smaller --smooth\n')
  assert not (tmp_path / 'out' / 'loss.png').exists()


def test_a_run_evaluated_before_its_first_logged_iteration_is_drawn(tmp_path, monkeypatch, capsys):
  (tmp_path / 'out').mkdir()
  (tmp_path / 'out' / 'metrics.jsonl').write_text('{"iter": 0, "train_loss": 4.2, "val_loss": 4.19}\n')
  drew = curves(drawn(monkeypatch, tmp_path / 'out'))
  assert drew['jaxgpt val loss (evaluations)'] == ([0], [4.19])
  assert drew['jaxgpt train loss (every iteration)'] == ([], [])
  assert plot.main(['plot', str(tmp_path / 'out'), '--smooth=2']) == 1
  assert 'error: --smooth averages 2 training losses at a time' in capsys.readouterr().err
