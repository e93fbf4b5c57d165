"""Data parallel over 4 host devices (XLA_FLAGS=--xla_force_host_platform_device_count=4,
in subprocesses: the test process has one): the train step against the
single-device step on the same global batches, replicated and fsdp; the
parity traces replayed data parallel; train.py end to end on 4 devices.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO_ROOT
from test_train_e2e import CONFIG, TINY_RUN, overrides, parse_log

FOUR_DEVICES = os.environ | {'XLA_FLAGS': '--xla_force_host_platform_device_count=4'}


def run(*args, env=FOUR_DEVICES, cwd=REPO_ROOT):
  return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                        timeout=300)


@pytest.mark.parametrize('dropout', ['0.0', '0.1'])
def test_data_parallel_step_is_the_single_device_step(dropout):
  proc = run(REPO_ROOT / 'tests' / 'dp_check.py', dropout)
  assert proc.returncode == 0, proc.stderr
  result = json.loads(proc.stdout)
  for mode in ('replicated', 'fsdp'):
    assert result[mode]['devices'] == 4
    assert result[mode]['loss'] <= 1e-6, (mode, result)
    # AdamW divides by sqrt(v): a gradient summed in another order moves the
    # few weights whose gradient is near 0 by up to ~2e-6 per step at lr 5e-4;
    # the parity traces allow the final weights 1e-5 for the same reason
    assert result[mode]['weights_first_step'] <= 1e-5, (mode, result)
    assert result[mode]['weights'] <= 1e-5, (mode, result)
  assert result['replicated']['split_params'] == result['replicated']['split_opt_state'] == 0
  assert result['fsdp']['split_params'] == 28  # every weight: each has a dimension 4 divides
  assert result['fsdp']['split_opt_state'] == 56  # AdamW's two moments of each
  assert len(set(result['losses'])) == 3  # the steps did train


@pytest.mark.parametrize('mode', [['--data_parallel'], ['--data_parallel', '--fsdp']])
def test_parity_trace_replayed_data_parallel(mode):
  proc = run('-m', 'jaxgpt.parity', 'tests/fixtures/seed_model.npz', *mode)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert proc.stdout.splitlines()[-1] == 'PASS: jaxgpt matches nanoGPT on tests/fixtures/seed_model.npz (40 steps)'


@pytest.fixture(scope='module')
def workdir(tmp_path_factory, shakespeare):
  folder = tmp_path_factory.mktemp('dp')
  (folder / 'data' / 'shakespeare_char').mkdir(parents=True)
  shutil.copy(shakespeare, folder / 'data' / 'shakespeare_char' / 'input.txt')
  return folder


def test_train_on_four_devices_logs_the_one_device_losses(workdir):
  """gradient_accumulation_steps=4 of batch_size 2: one device runs 4
  micro-batches of 2 rows, four devices one micro-batch of 8 rows split 2 per
  device; the same 8 windows, so the same losses."""
  settings = dict(batch_size=2, gradient_accumulation_steps=4, max_iters=20, eval_interval=10, log_interval=1)
  one = run(REPO_ROOT / 'train.py', f'--config={CONFIG}', *overrides('--config.', out_dir='out-1', **settings),
            env=os.environ, cwd=workdir)
  four = run(REPO_ROOT / 'train.py', f'--config={CONFIG}', *overrides('--config.', out_dir='out-4', **settings),
             cwd=workdir)
  assert one.returncode == 0, one.stderr
  assert four.returncode == 0, four.stderr
  assert 'data parallel over 4 devices, params replicated' in four.stdout.splitlines()
  assert 'data parallel' not in one.stdout
  assert 'tokens per iteration will be: 256' in four.stdout.splitlines()  # 4 x 2 x 32, as on one device
  (steps1, iters1), (steps4, iters4) = parse_log(one.stdout), parse_log(four.stdout)
  assert sorted(iters4) == sorted(iters1) == list(range(21))
  for i in iters1:
    assert iters4[i] == pytest.approx(iters1[i], abs=1.5e-4), i  # printed to 4 decimals
  # evaluation draws eval_iters micro-batches of every device's batch_size
  # rows (4x one device's): other windows, so only close
  assert sorted(steps4) == sorted(steps1) == [0, 10, 20]
  for s in steps1:
    assert steps4[s] == pytest.approx(steps1[s], abs=0.05), s

  # the 4-device checkpoint resumes on one device
  resumed = run(REPO_ROOT / 'train.py', f'--config={CONFIG}', '--config.init_from=resume',
                *overrides('--config.', out_dir='out-4', **(settings | {'max_iters': 22})), env=os.environ, cwd=workdir)
  assert resumed.returncode == 0, resumed.stderr
  assert parse_log(resumed.stdout)[1].keys() == {20, 21, 22}


def test_accumulation_must_divide_by_the_devices(workdir):
  proc = run(REPO_ROOT / 'train.py', f'--config={CONFIG}', *overrides('--config.', out_dir='out-bad'), cwd=workdir)
  assert proc.returncode == 1
  assert proc.stderr.splitlines()[-1] == (
      'error: gradient_accumulation_steps=1 is not divisible by the 4 devices training together: make it a '
      'multiple of 4, as nanoGPT requires of its world size')
  assert not (workdir / 'out-bad').exists()
