"""The benchmark runs and prints its figures (it is timed by people, not tests)."""

import math
import os
import re
import subprocess
import sys

import pytest
from conftest import NANOGPT_DIR, REPO_ROOT, TINY_RUN, config_flags, make_workdir

from jaxgpt import cli, nanogpt_torch


def bench(*args, cwd=REPO_ROOT, env=None):
  return subprocess.run([sys.executable, '-m', 'jaxgpt.bench', *args], cwd=cwd, capture_output=True,
                        text=True, timeout=300, env=env)


def without_nanogpt_dir_env() -> dict[str, str]:
  """This process's environment but for JAXGPT_NANOGPT_DIR: a run finds nanoGPT only by --nanogpt_dir."""
  return {k: v for k, v in os.environ.items() if k != 'JAXGPT_NANOGPT_DIR'}


@pytest.mark.slow
def test_bench_times_float32_and_bfloat16_by_turns():
  proc = bench('--steps=25', '--config.n_layer=1', '--config.compile=True')
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.splitlines()
  cores = len(os.sched_getaffinity(0))
  threads = max(k for k in range(1, min(cores, 12) + 1) if 12 % k == 0)  # as train.py: one a core, as 12 rows split
  assert lines[2] == ('config: 1 layers, 4 heads, 128 wide, block 64, batch 12, compile=True, '
                      f'threads={threads}, jax {__import__("jax").__version__}, {cores} cores')
  for dtype in ('float32', 'bfloat16'):
    assert any(re.fullmatch(rf'{dtype}: compile \+ first step \d+\.\d\d s', line) for line in lines), lines
    assert any(re.fullmatch(rf'{dtype}: median \d+\.\d\d ms/iter \(25 steps; 10% \d+\.\d\d, 90% \d+\.\d\d\), '
                            r'[\d,]+ tokens/s', line) for line in lines), lines
  assert re.fullmatch(r'bfloat16 / float32: \d\.\d\d', lines[-2])
  assert re.fullmatch(r'peak RSS: \d+ MB \(this process, float32 and bfloat16 steps compiled\)', lines[-1])


@pytest.mark.slow
def test_bench_one_dtype_and_bad_flags():
  proc = bench('--steps=25', '--config.n_layer=1', '--config.dtype=bfloat16')
  assert proc.returncode == 0, proc.stderr
  assert 'float32' not in proc.stdout and 'bfloat16: median ' in proc.stdout
  proc = bench('--config.n_embd=130')
  assert proc.returncode == 1
  assert proc.stderr.startswith('error: n_embd=130 is not divisible by n_head=4')


@pytest.mark.slow
def test_bench_cores_times_the_steps_once_per_core_count_each_pinned():
  proc = bench('--cores=1', '--steps=25', '--config.n_layer=1', '--config.dtype=float32', '--nanogpt',
               f'--nanogpt_dir={NANOGPT_DIR}')
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.splitlines()
  assert re.fullmatch(r'1 core\(s\): float32 \d+\.\d\d ms/iter, nanoGPT \(PyTorch, eager\) \d+\.\d\d ms/iter', lines[0])
  assert lines[-3] == ('| cores | float32 ms/iter | nanoGPT (PyTorch, eager) ms/iter | '
                       'nanoGPT (PyTorch, eager) / float32 | float32 at 1 core(s) = 1 | '
                       'nanoGPT (PyTorch, eager) at 1 core(s) = 1 |')
  assert re.fullmatch(r'\| 1 \| \d+\.\d\d \| \d+\.\d\d \| \d+\.\d\dx \| 1\.00 \| 1\.00 \|', lines[-1]), lines
  for cores, message in (('0', 'each core count must be 1 to'), ('1,x', "'1,x' is not a list of core counts")):
    proc = bench(f'--cores={cores}')
    assert proc.returncode == 2 and message in proc.stderr


@pytest.mark.slow
def test_bench_times_nanogpt_by_turns():
  proc = bench('--steps=25', '--config.n_layer=1', '--config.dtype=float32', '--nanogpt',
               f'--nanogpt_dir={NANOGPT_DIR}', env=without_nanogpt_dir_env())
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.splitlines()
  assert re.fullmatch(r'nanoGPT \(PyTorch, eager\): median \d+\.\d\d ms/iter \(25 steps; 10% \d+\.\d\d, '
                      r'90% \d+\.\d\d\), [\d,]+ tokens/s', lines[-3]), lines
  assert re.fullmatch(r'float32 / nanoGPT \(PyTorch, eager\): \d+\.\d\d', lines[-2]), lines
  assert lines[-1].endswith("(this process, float32 steps compiled, and PyTorch's)")
  proc = bench('--nanogpt', '--config.gradient_accumulation_steps=2')
  assert proc.returncode == 1
  assert proc.stderr == 'error: --nanogpt times one micro-batch a step: leave gradient_accumulation_steps at 1\n'


@pytest.mark.slow
def test_bench_without_a_nanogpt_checkout(tmp_path):
  # the path it was given, before any run: --memory's jaxgpt run would take minutes
  for mode in ('--nanogpt', '--memory'):
    proc = bench(mode, f'--nanogpt_dir={tmp_path}', env=without_nanogpt_dir_env())
    assert proc.returncode == 1
    assert proc.stderr == (f"error: nanoGPT's model.py not found at {tmp_path / 'model.py'}: clone "
                           f'https://github.com/karpathy/nanoGPT into {tmp_path}, or name a nanoGPT checkout with '
                           '--nanogpt_dir=PATH or JAXGPT_NANOGPT_DIR=PATH\n'), mode


@pytest.mark.slow
def test_bench_nanogpt_without_torch(tmp_path):
  (tmp_path / 'torch.py').write_text('raise ImportError("no torch here")\n')  # shadows the installed torch
  proc = subprocess.run([sys.executable, '-m', 'jaxgpt.bench', '--nanogpt'], cwd=REPO_ROOT, capture_output=True,
                        text=True, timeout=300, env={**os.environ, 'PYTHONPATH': str(tmp_path)})
  assert proc.returncode == 1
  assert proc.stderr == 'error: --nanogpt needs torch: pip install -e ".[torch]"\n'
  proc = subprocess.run([sys.executable, '-m', 'jaxgpt.bench', '--memory'], cwd=REPO_ROOT, capture_output=True,
                        text=True, timeout=300, env={**os.environ, 'PYTHONPATH': str(tmp_path)})
  assert proc.returncode == 1
  assert proc.stderr == 'error: --memory needs torch: pip install -e ".[torch]"\n'


TINY_OVERRIDES = config_flags(TINY_RUN | dict(n_layer=1, batch_size=4))


@pytest.mark.slow
def test_bench_memory_runs_jaxgpt_and_nanogpt(tmp_path, shakespeare):
  workdir = make_workdir(tmp_path, shakespeare)
  recipe = str(REPO_ROOT / 'configs' / 'shakespeare_char.py')
  # no ../nanoGPT beside workdir, no JAXGPT_NANOGPT_DIR: nanoGPT's run needs --nanogpt_dir passed on
  proc = bench('--memory', '--iters=3', recipe, *TINY_OVERRIDES, f'--nanogpt_dir={NANOGPT_DIR}', cwd=workdir,
               env=without_nanogpt_dir_env())
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.splitlines()
  assert len(lines) == 8, lines
  peaks = {}
  for line, name in zip(lines[:2], ('jaxgpt', 'nanoGPT')):  # in the order they ran, each as it ended
    m = re.fullmatch(rf'shakespeare_char\.py, {name}: peak RSS ([\d,]+) MB; RSS ([\d,]+) MB at iter 2, '
                     r'([\d,]+) MB at iter 3; \d+ s', line)
    assert m, line
    peak, at_2, at_3 = (int(g.replace(',', '')) for g in m.groups())
    # the kernel updates the high-water mark lazily: a VmRSS read can pass it by a few MB
    assert 100 < peak < 4000 and 0 < at_2 <= peak + 16 and 0 < at_3 <= peak + 16, line  # python and jax or torch: >100 MB
    peaks[name] = peak
  assert lines[3] == ('| recipe | jaxgpt peak RSS | nanoGPT peak RSS | jaxgpt / nanoGPT | jaxgpt RSS at iter 2, 3 '
                      '| nanoGPT RSS at iter 2, 3 |')
  row = re.fullmatch(r'\| shakespeare_char\.py \| ([\d,]+) MB \| ([\d,]+) MB \| (\d+\.\d\d) \| [\d,]+ MB, [\d,]+ MB '
                     r'\| [\d,]+ MB, [\d,]+ MB \|', lines[5])
  assert row, lines[5]
  assert [int(row[1].replace(',', '')), int(row[2].replace(',', ''))] == [peaks['jaxgpt'], peaks['nanoGPT']]
  assert abs(float(row[3]) - peaks['jaxgpt'] / peaks['nanoGPT']) < 0.01
  assert re.fullmatch(rf'.+, {len(os.sched_getaffinity(0))} cores; 3 iterations, eval_iters=1; jax .+, '
                      r'PyTorch .+ \(eager\)', lines[7]), lines[7]
  assert (workdir / 'data' / 'shakespeare_char' / 'train.bin').is_file()  # both read the data set prepared there
  # a run that fails shows the end of its stderr
  proc = bench('--memory', '--iters=3', recipe, *TINY_OVERRIDES, '--config.block_size=200000',
               f'--nanogpt_dir={NANOGPT_DIR}', cwd=workdir)
  assert proc.returncode == 1
  assert proc.stderr.startswith('error: shakespeare_char.py, jaxgpt failed (exit status 1), its stderr ending:\n')
  assert proc.stderr.endswith('fewer than block_size + 1 = 200001: lower --config.block_size or use more data\n')


@pytest.mark.slow
def test_nanogpts_loop_runs_without_jax():
  # jax's ~130 MB would count in bench --memory's figure for nanoGPT; its
  # process takes configs and data through cli and data, which must not import it
  proc = subprocess.run([sys.executable, '-c', 'import sys, jaxgpt.nanogpt_torch; print(sorted('
                         '{m.split(".")[0] for m in sys.modules} & {"jax", "jaxlib", "flax", "optax"}))'],
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout == '[]\n'


# ml_collections loads config files with the deprecated importlib load_module()
@pytest.mark.filterwarnings('ignore:the load_module\\(\\) method is deprecated:DeprecationWarning')
def test_nanogpt_loop_prints_nanogpts_lines(tmp_path, shakespeare, monkeypatch, capsys):
  monkeypatch.chdir(make_workdir(tmp_path, shakespeare))
  c = cli.parse_config(['nanogpt_torch', f'--config={REPO_ROOT / "configs" / "shakespeare_char.py"}', *TINY_OVERRIDES,
                        '--config.max_iters=2', '--config.eval_interval=2', '--config.log_interval=1',
                        '--config.eval_iters=2', '--config.gradient_accumulation_steps=2', '--config.dropout=0.2'])
  nanogpt_torch.train(c, nanogpt_torch.checkout(NANOGPT_DIR))
  lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith(('step ', 'iter '))]
  assert [line.split(':')[0] for line in lines] == ['step 0', 'iter 0', 'iter 1', 'step 2', 'iter 2']
  step_0 = re.fullmatch(r'step 0: train loss (\d\.\d{4}), val loss (\d\.\d{4})', lines[0])
  assert step_0, lines[0]
  assert all(abs(float(loss) - math.log(65)) < 0.05 for loss in step_0.groups())  # uniform over 65 characters
  for line in lines[1:3] + lines[4:]:
    assert re.fullmatch(r'iter \d: loss \d\.\d{4}, time \d+\.\d\dms', line), line


@pytest.mark.slow
def test_bench_processes_times_one_process_against_launched_ones(tmp_path, shakespeare):
  workdir = make_workdir(tmp_path, shakespeare)
  proc = bench('--processes=2', '--iters=6', '--rounds=1', '--config.n_layer=1', cwd=workdir)
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.splitlines()
  assert re.fullmatch(r'1 process: median \d+\.\d\d ms/iter over 6 iterations', lines[0]), lines
  assert re.fullmatch(r'2 processes: median \d+\.\d\d ms/iter over 6 iterations', lines[1]), lines
  assert re.fullmatch(r'.+, \d+ CPUs usable; 12 rows x 1 micro-batch\(es\) a step in all', lines[3]), lines
  assert re.fullmatch(r'\| 2 \| \d+\.\d\d \| \d+\.\d\d \|', lines[-1]), lines
  assert not list(workdir.glob('out*'))  # each run's out_dir was a temporary folder
  proc = bench('--processes=1', cwd=workdir)
  assert proc.returncode == 2 and '--processes=1 must be 2 to the' in proc.stderr, proc.stderr
  proc = bench('--processes=2', '--config.batch_size=5', cwd=workdir)
  assert proc.returncode == 1
  assert proc.stderr == 'error: --processes=2: batch_size=5 does not split across that many processes\n'
