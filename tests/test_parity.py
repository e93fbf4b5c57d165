"""jaxgpt against nanoGPT, number by number: the replay of the traces in tests/fixtures.

The tolerances are those of tests/fixtures/README.md's table, read from it
(the reference's reasoned figures, not jaxgpt.parity's constants restated): a
faithful float32 port lands within 2e-6 of nanoGPT's loss and 1e-6 of its
logits, so 1e-5 holds with headroom, and a real difference (a wrong GELU or
schedule) moves the loss by 1e-4 or more within a few steps.
"""

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import FIXTURES, REPO_ROOT, load_trace
from jaxgpt import parity


@pytest.mark.slow
@pytest.mark.parametrize('trace', ['tiny.npz', 'seed_model.npz'])
def test_cli_passes_on_trace(trace):
  path = FIXTURES / trace
  proc = subprocess.run([sys.executable, '-m', 'jaxgpt.parity', str(path)], cwd=REPO_ROOT,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  lines = proc.stdout.splitlines()
  steps = {'tiny.npz': 30, 'seed_model.npz': 40}[trace]
  assert lines[-1] == f'PASS: jaxgpt matches nanoGPT on {path} ({steps} steps)'
  for figure in ('logits0', 'loss', 'lr', 'grad_norm', 'weights'):
    row = [line for line in lines if line.startswith(figure + ' ')]
    assert len(row) == 1 and row[0].endswith('ok'), proc.stdout


def readme_tolerances(trace: dict) -> dict[str, float]:
  """The tolerances of tests/fixtures/README.md's table (the same as
  ../shared/reference/README.md's), for this trace."""
  table = (FIXTURES / 'README.md').read_text().split('## The tolerances')[1]
  rows = dict(re.findall(r'^\| (\w+)[^|]* \| (.* diff <= .+) \|$', table, re.MULTILINE))  # a figure's first word: rule
  floor, drifts = re.fullmatch(r'max abs diff <= max\(([\d.e-]+), (\d+) x final_fp64_max_abs_diff\)',
                               rows.pop('final')).groups()
  rule = r'(?:max abs|rel) diff <= ([\d.e-]+)'
  limits = {figure: float(re.fullmatch(rule, text)[1]) for figure, text in rows.items()}
  return limits | {'weights': max(float(floor), int(drifts) * float(trace['final_fp64_max_abs_diff']))}


@pytest.mark.parametrize('name, fused', [
    # compile=True: one program a step, train.py's default
    ('tiny.npz', True), ('seed_model.npz', True),
    # compile=False: gradients and update as two jitted programs, the same numbers
    ('tiny.npz', False),
])
def test_replay_within_tolerance(name, fused):
  trace = load_trace(name)
  diffs = parity.replay(trace, fused=fused)
  limits = readme_tolerances(trace)
  assert set(diffs) == set(limits) == {'logits0', 'loss', 'lr', 'grad_norm', 'weights'}
  for figure, diff in diffs.items():
    assert diff <= limits[figure], f'{figure}: {diff:.3e} > {limits[figure]:.1e}'


@pytest.mark.parametrize('threads', [2, 4])
def test_step_sharded_over_threads_within_tolerance(tiny_trace, threads):
  # each batch's rows split over threads, their gradients averaged: the same numbers
  diffs = parity.replay(tiny_trace, threads=threads)
  limits = readme_tolerances(tiny_trace)
  for name, diff in diffs.items():
    assert diff <= limits[name], f'{name}: {diff:.3e} > {limits[name]:.1e}'


@pytest.mark.slow
@pytest.mark.parametrize('threads', [2, 3, 12])
def test_seed_trace_passes_sharded_over_threads(threads):
  path = FIXTURES / 'seed_model.npz'
  proc = subprocess.run([sys.executable, '-m', 'jaxgpt.parity', str(path), f'--threads={threads}'], cwd=REPO_ROOT,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert proc.stdout.splitlines()[-1] == f'PASS: jaxgpt matches nanoGPT on {path} (40 steps)'


def test_threads_that_do_not_divide_the_trace_batch_are_refused(capsys):
  assert parity.main([str(FIXTURES / 'tiny.npz'), '--threads=3']) == 1
  assert capsys.readouterr().err == ("error: --threads=3: the trace's batches of 4 rows do not split into that many "
                                     'equal shards\n')


def test_readme_tolerances_are_read_whole(tiny_trace):
  # the final weights': 10 x the trace's own float32 drift from float64 where that exceeds 1e-5
  assert readme_tolerances(tiny_trace) == pytest.approx(
      {'logits0': 1e-5, 'loss': 1e-5, 'lr': 1e-6, 'grad_norm': 1e-4, 'weights': 2.58088e-5}, rel=1e-5)
  assert readme_tolerances(load_trace('seed_model.npz'))['weights'] == 1e-5  # drifts by 9.5e-7: the floor holds


@pytest.mark.parametrize('name', ['tiny.npz', 'seed_model.npz'])
def test_a_difference_just_beyond_a_readme_tolerance_fails(name, monkeypatch, capsys):
  """Every figure just within its tolerance passes; any one just beyond
  fails, alone. The replay's differences are set, so only the verdict runs."""
  path, trace = FIXTURES / name, load_trace(name)
  limits, steps = readme_tolerances(trace), len(trace['loss'])
  for beyond in [None, *limits]:
    diffs = {figure: limit * (1.01 if figure == beyond else 0.99) for figure, limit in limits.items()}
    monkeypatch.setattr(parity, 'replay', lambda *args, diffs=diffs, **kwargs: diffs)
    assert parity.main([str(path)]) == (0 if beyond is None else 1)
    lines = capsys.readouterr().out.splitlines()
    assert {line.split()[0]: line.split()[-1] for line in lines[1:-1]} == {
        figure: 'FAIL' if figure == beyond else 'ok' for figure in limits}
    assert lines[-1] == (f'PASS: jaxgpt matches nanoGPT on {path} ({steps} steps)' if beyond is None else
                         f'FAIL: {beyond} outside tolerance ({path}, {steps} steps)')


@pytest.mark.slow  # trains several steps in process
def test_corrupted_trace_fails(tiny_trace, tmp_path, capsys):
  corrupted = dict(tiny_trace)
  corrupted['logits0'] = tiny_trace['logits0'] + 1e-3  # 100x the tolerance
  corrupted['loss'] = tiny_trace['loss'] + 1e-3
  path = tmp_path / 'corrupted.npz'
  np.savez(path, **corrupted)
  assert parity.main([str(path)]) == 1
  lines = capsys.readouterr().out.splitlines()
  assert lines[-1] == f'FAIL: logits0, loss outside tolerance ({path}, 30 steps)'
  rows = {line.split()[0]: line for line in lines[1:-1]}
  assert rows['logits0'].endswith('FAIL') and rows['loss'].endswith('FAIL')
  assert all(rows[name].endswith('ok') for name in ('lr', 'grad_norm', 'weights'))


def _text_file(path):
  path.write_text('not a trace\n')


def _cut_short(path):
  path.write_bytes((FIXTURES / 'tiny.npz').read_bytes()[:3000])


@pytest.mark.parametrize('write, reason', [
    (_text_file, 'not a .npz file, or one cut short'),  # not numpy's advice to load it with allow_pickle
    (_cut_short, 'not a .npz file, or one cut short'),
    (None, 'No such file or directory'),
])
def test_unreadable_trace_is_one_error_line(tmp_path, capsys, write, reason):
  path = tmp_path / 'trace.npz'
  if write is not None:
    write(path)
  assert parity.main([str(path)]) == 1
  out, err = capsys.readouterr()
  assert out == ''
  assert err == f'error: cannot read {path} as a nanoGPT trace: {reason}\n'


def _without(trace, *keys):
  return {k: v for k, v in trace.items() if k not in keys}


@pytest.mark.parametrize('edit, problems', [
    (lambda t: {'x': np.zeros(3)}, 'missing final_fp64_max_abs_diff, grad_norm, grad_norm_fp64, logits0, loss, '
                                   'loss_fp64, lr, meta, y; no init/ weights'),
    (lambda t: _without(t, 'meta', 'lr'), 'missing lr, meta'),
    (lambda t: t | {'losses': t['loss']}, 'unexpected losses'),
    (lambda t: _without(t, 'y') | {'Y': t['y']}, 'missing y; unexpected Y'),
    (lambda t: _without(t, 'final/lm_head.weight'), 'init/ and final/ weights named otherwise (lm_head.weight)'),
])
def test_trace_with_other_keys_names_them(tiny_trace, tmp_path, capsys, edit, problems):
  path = tmp_path / 'trace.npz'
  np.savez(path, **edit(dict(tiny_trace)))
  assert parity.main([str(path)]) == 1
  assert capsys.readouterr().err == (f'error: {path} is not a nanogpt-trace/1 file ({problems}): record it again as '
                                     'tests/fixtures/README.md says\n')


def test_trace_of_another_format_is_one_error_line(tiny_trace, tmp_path, capsys):
  path = tmp_path / 'trace.npz'
  np.savez(path, **tiny_trace | {'meta': np.array(json.dumps({'format': 'something-else/2'}))})
  assert parity.main([str(path)]) == 1
  assert capsys.readouterr().err == (f"error: {path} is not a nanogpt-trace/1 file (its meta says "
                                     "format='something-else/2')\n")
