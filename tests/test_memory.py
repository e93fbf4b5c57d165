"""The memory check before training: the parameter count from the config,
what the machine has, and a run too big for it ending in seconds with one
line and nothing written."""

import pathlib
import re
import subprocess
import sys

import pytest
from flax import nnx

from conftest import REPO_ROOT, TINY, linux_only, make_workdir
from jaxgpt import memory
from jaxgpt.model import GPTConfig
from jaxgpt.model import GPT

CONFIG = REPO_ROOT / 'configs' / 'shakespeare_char.py'


@pytest.mark.parametrize('config', [
    TINY,
    GPTConfig(block_size=64, vocab_size=65, n_layer=4, n_head=4, n_embd=128, bias=False),
])
def test_num_params_counts_the_model_without_building_it(config):
  assert memory.num_params(config) == GPT(config, rngs=nnx.Rngs(0)).num_params(non_embedding=False)


MEMINFO = 'MemTotal:        8000000 kB\nMemFree:          500000 kB\nMemAvailable:    4000000 kB\n'
CGROUP_STAT = 'anon 900000000\nfile 300000000\ninactive_file 200000000\n'


@pytest.mark.parametrize('files, available', [
    ({'/proc/meminfo': MEMINFO}, (4_096_000_000, 'MemAvailable')),  # no cgroup v2
    ({'/proc/meminfo': MEMINFO, '/sys/fs/cgroup/memory.max': 'max\n', '/sys/fs/cgroup/memory.current': '1200000000\n',
      '/sys/fs/cgroup/memory.stat': CGROUP_STAT}, (4_096_000_000, 'MemAvailable')),  # a cgroup without a limit
    # a limit of 3 GB, 1.2 GB used of which 0.2 GB is page cache the kernel can drop: 2 GB left, less than MemAvailable
    ({'/proc/meminfo': MEMINFO, '/sys/fs/cgroup/memory.max': '3000000000\n',
      '/sys/fs/cgroup/memory.current': '1200000000\n', '/sys/fs/cgroup/memory.stat': CGROUP_STAT},
     (2_000_000_000, 'the cgroup memory limit')),
    # a limit of 8 GB leaves more than MemAvailable: the machine's figure is the tighter
    ({'/proc/meminfo': MEMINFO, '/sys/fs/cgroup/memory.max': '8000000000\n',
      '/sys/fs/cgroup/memory.current': '1200000000\n', '/sys/fs/cgroup/memory.stat': CGROUP_STAT},
     (4_096_000_000, 'MemAvailable')),
    ({}, None),  # neither readable (not Linux): no check
])
def test_available_memory_is_the_tighter_of_the_kernels_figures(monkeypatch, files, available):
  monkeypatch.setattr(memory, '_read', files.get)
  assert memory.available_bytes() == available


@linux_only('/proc/meminfo')
def test_available_memory_is_read_from_this_machine():
  available, source = memory.available_bytes()
  total_kb = int(pathlib.Path('/proc/meminfo').read_text().split()[1])  # MemTotal, which does not change
  assert 0 < available <= total_kb * 1024
  assert source in ('MemAvailable', 'the cgroup memory limit')


def test_check_names_the_need_what_is_available_and_the_keys_to_lower(monkeypatch):
  monkeypatch.setattr(memory, 'available_bytes', lambda: (2 * 10**9, 'MemAvailable'))
  memory.check(2 * 10**9, 'for this run', memory.smaller_run(remat=True) + memory.TRY_ANYWAY)  # fits exactly: no error
  with pytest.raises(memory.OutOfMemoryError) as e:
    memory.check(3 * 10**9, 'for this run', memory.smaller_run(remat=False) + memory.TRY_ANYWAY)
  assert str(e.value) == (
      'not enough memory for this run: ~3.00 GB needed, 2.00 GB available (MemAvailable): lower '
      '--config.batch_size (a larger --config.gradient_accumulation_steps keeps the tokens per iteration), '
      '--config.block_size, or --config.n_layer / --config.n_embd, --config.remat=True (recompute '
      'activations rather than keep them); or pass --config.check_memory=False to try anyway')


@pytest.mark.slow
@linux_only('/proc/meminfo and the cgroup limit (elsewhere what is available is unknown, and no run is refused)')
@pytest.mark.parametrize('overrides, need', [
    # 50 billion parameters: found from the config alone, before compiling
    (['--config.n_layer=1000', '--config.n_embd=2048', '--config.n_head=16'],
     "not enough memory for the weights, gradients and AdamW state, with one layer's attention scores: ~"),
    # the seed model's shapes fit, but 100,000 rows a step do not: found from the compiled step
    (['--config.batch_size=100000'], 'not enough memory for this run: ~'),
])
def test_a_run_too_big_for_the_machine_stops_at_once_writing_nothing(tmp_path, shakespeare, overrides, need):
  workdir = make_workdir(tmp_path, shakespeare)
  proc = subprocess.run([sys.executable, str(REPO_ROOT / 'train.py'), f'--config={CONFIG}', *overrides,
                         f'--config.out_dir={workdir / "out"}'],
                        cwd=workdir, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 1, proc.stdout + proc.stderr
  [line] = proc.stderr.splitlines()
  assert line.startswith(f'error: {need}')
  assert 'GB available (' in line and '--config.batch_size' in line and '--config.check_memory=False' in line
  assert not (workdir / 'out').exists()


@pytest.mark.slow
def test_the_estimate_is_logged_and_check_memory_false_skips_the_check(tmp_path, shakespeare):
  workdir = make_workdir(tmp_path, shakespeare)
  # a memory limit the run cannot meet: a cgroup would say so the same way
  args = [sys.executable, '-c', 'import sys; from jaxgpt import cli, memory; '
          'memory.available_bytes = lambda: (10**6, "a test limit"); sys.exit(cli.main(sys.argv))',
          f'--config={CONFIG}', '--config.n_layer=1', '--config.n_embd=32', '--config.n_head=2',
          '--config.max_iters=2', f'--config.out_dir={workdir / "out"}']
  refused = subprocess.run(args, cwd=workdir, capture_output=True, text=True, timeout=300)
  assert refused.returncode == 1
  assert refused.stderr.startswith('error: not enough memory for this run: ~0.')
  assert 'GB needed, 0.00 GB available (a test limit): lower --config.batch_size' in refused.stderr
  skipped = subprocess.run(args + ['--config.check_memory=False'], cwd=workdir, capture_output=True, text=True,
                           timeout=300)
  assert skipped.returncode == 0, skipped.stderr
  [estimate] = [line for line in skipped.stdout.splitlines() if line.startswith('memory: ')]
  assert re.fullmatch(r"memory: ~0\.\d\d GB estimated \(this process 0\.\d\d GB, weights and AdamW state "
                      r"0\.00 GB, a step's working memory 0\.\d\d GB\), 0\.00 GB available", estimate)
  assert 'step 0: train loss' in skipped.stdout
