"""python -m jaxgpt.bench --speedrun and --budget: whole commands, each model's full-split val loss, their table
(the figures are checked against the files the runs left, not timed)."""

import json
import os
import re
import statistics
import subprocess
import sys

import pytest
from conftest import REPO_ROOT, config_flags, linux_only, make_workdir
from test_bench import bench_here, is_printed_ratio

from jaxgpt import bench as bench_module
from jaxgpt import evaluate

RECIPE = str(REPO_ROOT / 'configs' / 'shakespeare_char_speedrun.py')
# the speedrun recipe made tiny: one narrow layer, 10 iterations, evaluated on the whole val split at a context of
# 64 (block_size 64, the speedrun's evaluation context) at 0 and 10, whatever the recipe's tuning
TINY_SPEEDRUN = config_flags(dict(n_layer=1, n_head=2, n_embd=32, batch_size=8, block_size=64, max_iters=10,
                                  lr_decay_iters=10, warmup_iters=2, eval_interval=10, eval_start=0,
                                  full_val_context=64, log_interval=5))
ROW = re.compile(r'\| (\S+) \| (\d+\.\d) \| (\d\.\d{4}) \| (\d+) \| (end|target|time) \| ([\d,]+) MB \|')


def table_rows(lines: list[str]) -> dict[str, tuple[float, str, int, str]]:
  """{run: (wall s, val loss as printed, iterations, stopped by)} of the table's rows."""
  return {m[1]: (float(m[2]), m[3], int(m[4]), m[5]) for m in map(ROW.fullmatch, lines) if m}


def best_val_loss(out_dir) -> float:
  """The lowest val loss a jaxgpt run wrote to its metrics.jsonl."""
  records = [json.loads(line) for line in (out_dir / 'metrics.jsonl').read_text().splitlines()]
  return min(record['val_loss'] for record in records if 'val_loss' in record)


@pytest.mark.slow
@linux_only('the CPU affinity (os.sched_getaffinity), whose cores bench reports')
def test_speedrun_runs_nanogpt_then_the_seeds_and_evaluates_each_model(tmp_path, shakespeare, nanogpt_dir,
                                                                        monkeypatch, capsys):
  workdir = make_workdir(tmp_path / 'jaxgpt', shakespeare)
  runs = tmp_path / 'runs'
  proc = bench_here(monkeypatch, capsys, workdir, '--speedrun', '--iters=10', '--seeds=2',
                    f'--nanogpt_dir={nanogpt_dir}', f'--runs_dir={runs}', *TINY_SPEEDRUN)
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.splitlines()
  # the commands, as they ran: nanoGPT's seed command cut to 10 iterations and evaluated at them, then each seed
  at = lines.index(f'nanoGPT: python train.py config/train_shakespeare_char.py --device=cpu --compile=False '
                   '--eval_iters=20 --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 '
                   f'--n_embd=128 --max_iters=10 --lr_decay_iters=2000 --dropout=0.0 --eval_interval=10 '
                   f'--out_dir={runs / "nanoGPT"}')
  assert lines[at + 2] == f'  python -m jaxgpt.evaluate {runs / "nanoGPT" / "ckpt.pt"} --context=64'
  for seed in (1337, 1338):
    assert (f'seed-{seed}: python {REPO_ROOT / "train.py"} --config={RECIPE} {" ".join(TINY_SPEEDRUN)} '
            f'--config.seed={seed} --config.out_dir={runs / f"seed-{seed}"}, then') in lines
    assert f'  python -m jaxgpt.evaluate {runs / f"seed-{seed}"} --context=64' in lines

  rows = table_rows(lines)
  assert list(rows) == ['nanoGPT', 'seed-1337', 'seed-1338'], lines
  # each loss is the evaluator's on what the run left: nanoGPT's ckpt.pt, each out_dir's best checkpoint
  # the evaluator reads data/shakespeare_char of the current folder: workdir, bench_here's
  models = {'nanoGPT': runs / 'nanoGPT' / 'ckpt.pt', 'seed-1337': runs / 'seed-1337', 'seed-1338': runs / 'seed-1338'}
  losses = {}
  for name, model in models.items():
    evaluation = evaluate.evaluate(str(model), context=64)
    assert rows[name][1] == f'{evaluation.loss:.4f}', name
    assert evaluation.what == f'step 10 of {model}'
    assert rows[name][2:] == (10, 'end'), name
    losses[name] = evaluation.loss
  for name in ('seed-1337', 'seed-1338'):  # the run's own val loss at its evaluations is the same evaluation
    assert best_val_loss(runs / name) == pytest.approx(losses[name], abs=1e-4)

  seconds = [rows[name][0] for name in ('seed-1337', 'seed-1338')]
  seed_losses = [losses['seed-1337'], losses['seed-1338']]
  at = lines.index('| --- | ---: | ---: | ---: | --- | ---: |') + 5
  m = re.fullmatch(r'jaxgpt: median (\d+\.\d) s \((\d+\.\d)-(\d+\.\d)\), val loss median (\d\.\d{4}) '
                   r'\((\d\.\d{4})-(\d\.\d{4})\) over 2 seed\(s\)', lines[at])
  assert m, lines[at]
  assert float(m[1]) == pytest.approx(statistics.median(seconds), abs=0.051)
  assert [float(m[2]), float(m[3])] == [min(seconds), max(seconds)]
  assert m.group(4, 5, 6) == (f'{statistics.median(seed_losses):.4f}', f'{min(seed_losses):.4f}',
                              f'{max(seed_losses):.4f}')
  assert lines[at + 1] == f'nanoGPT: {rows["nanoGPT"][0]:.1f} s, val loss {losses["nanoGPT"]:.4f}'
  ratio = re.fullmatch(r"nanoGPT / jaxgpt speedrun: (\d+\.\d\d)x \(nanoGPT's wall time over jaxgpt's median: above "
                       r'1, jaxgpt is the faster\)', lines[at + 2])
  assert ratio, lines[at + 2]
  assert is_printed_ratio(ratio[1], f'{rows["nanoGPT"][0]:.1f}', m[1]), lines
  above = [f'{name} {losses[name]:.4f}' for name in ('seed-1337', 'seed-1338') if losses[name] > losses['nanoGPT']]
  assert lines[at + 3] == (f"every seed's val loss at or below nanoGPT's {losses['nanoGPT']:.4f}: " +
                           (f'no ({", ".join(above)})' if above else 'yes'))
  assert re.fullmatch(rf'.+, {len(os.sched_getaffinity(0))} cores; jax .+, PyTorch .+ \(eager\), Python 3\.\d+\.\d+',
                      lines[at + 4])
  assert len(lines) == at + 5
  assert not list(workdir.glob('out*'))  # every out_dir was in --runs_dir


@pytest.mark.slow
def test_budget_runs_the_recipe_with_a_time_limit_and_no_target(tmp_path, shakespeare, monkeypatch, capsys):
  workdir = make_workdir(tmp_path / 'jaxgpt', shakespeare)
  runs = tmp_path / 'runs'
  # a budget shorter than an iteration: each run stops after its first, at iteration 1
  proc = bench_here(monkeypatch, capsys, workdir, '--budget=0.001', '--seeds=1', f'--runs_dir={runs}', RECIPE,
                    *TINY_SPEEDRUN)
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.splitlines()
  assert not any(line.startswith('nanoGPT') for line in lines), lines
  assert (f'seed-1337: python {REPO_ROOT / "train.py"} --config={RECIPE} {" ".join(TINY_SPEEDRUN)} '
          f'--config.time_limit=0.001 --config.target_val_loss=0 --config.seed=1337 '
          f'--config.out_dir={runs / "seed-1337"}, then') in lines
  rows = table_rows(lines)
  assert list(rows) == ['seed-1337'] and rows['seed-1337'][2:] == (1, 'time'), lines
  assert rows['seed-1337'][1] == f'{evaluate.evaluate(str(runs / "seed-1337"), context=64).loss:.4f}'
  assert re.fullmatch(r'jaxgpt: median (\d+\.\d) s \(\1-\1\), val loss median (\d\.\d{4}) \(\2-\2\) over 1 seed\(s\)',
                      lines[-2]), lines[-2]
  assert 'PyTorch' not in lines[-1]  # no nanoGPT run: torch is not needed
  # the runs' folders are fresh ones: a second bench into the same --runs_dir stops before it runs anything
  proc = bench_here(monkeypatch, capsys, workdir, '--budget=60', '--seeds=1', f'--runs_dir={runs}', RECIPE)
  assert proc.returncode == 1
  assert proc.stderr == (f'error: {runs / "seed-1337"} exists: each run needs a fresh out_dir, pass another '
                         '--runs_dir\n')


@pytest.mark.slow
def test_a_run_stopped_at_its_target_is_told_from_one_that_ran_to_its_end(tmp_path, shakespeare):
  workdir = make_workdir(tmp_path, shakespeare)
  # target_val_loss=10: the evaluation at iteration 0 reaches it
  proc = subprocess.run([sys.executable, str(REPO_ROOT / 'train.py'), f'--config={RECIPE}', *TINY_SPEEDRUN,
                         '--config.target_val_loss=10', '--config.out_dir=out'], cwd=workdir, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr
  assert bench_module.how_it_ended(proc.stdout.splitlines(), 10) == (0, 'target')
  assert bench_module.how_it_ended(['iter 10: loss 3.4586, time 5.00ms, mfu 1.00%'], 10) == (10, 'end')


def test_speedrun_and_budget_errors(tmp_path, monkeypatch, capsys):
  for flags, message in ((['--speedrun', '--budget=60'], '--budget runs RECIPE alone, --speedrun nanoGPT against it'),
                         (['--budget=0'], '--budget=0 must be > 0 seconds'),
                         (['--speedrun', '--nanogpt'], '--speedrun and --budget run whole commands: leave out '
                                                       '--nanogpt'),
                         (['--speedrun', '--seeds=0'], '--seeds=0 must be >= 1')):
    with pytest.raises(SystemExit) as e:
      bench_module.main(['bench', *flags])
    assert e.value.code == 2 and message in capsys.readouterr().err, flags
  monkeypatch.delenv('JAXGPT_NANOGPT_DIR', raising=False)
  monkeypatch.chdir(tmp_path)  # nothing runs: no data set is prepared there
  for flags, message in ((['--speedrun', '--config.seed=5'], 'error: --config.seed: the bench gives each run its seed '
                                                             '(1337 on, --seeds of them): leave it out\n'),
                         (['--budget=60', RECIPE, 'configs/shakespeare_char.py'],
                          f'error: --speedrun and --budget run one RECIPE, not 2: pass one of {RECIPE}, '
                          'configs/shakespeare_char.py\n'),
                         (['--speedrun', '--config.n_embd=130'], 'error: n_embd=130 is not divisible by n_head=4')):
    assert bench_module.main(['bench', *flags, f'--nanogpt_dir={tmp_path}']) == 1, flags
    assert capsys.readouterr().err.startswith(message), flags
  assert not list(tmp_path.iterdir())
