"""The benchmark runs and prints its figures (it is timed by people, not tests)."""

import os
import re
import subprocess
import sys

from conftest import REPO_ROOT


def bench(*args):
  return subprocess.run([sys.executable, '-m', 'jaxgpt.bench', *args], cwd=REPO_ROOT, capture_output=True,
                        text=True, timeout=300)


def test_bench_times_float32_and_bfloat16_by_turns():
  proc = bench('--steps=25', '--config.n_layer=1', '--config.compile=True')
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.splitlines()
  assert lines[2] == ('config: 1 layers, 4 heads, 128 wide, block 64, batch 12, compile=True, '
                      f'jax {__import__("jax").__version__}')
  for dtype in ('float32', 'bfloat16'):
    assert any(re.fullmatch(rf'{dtype}: compile \+ first step \d+\.\d\d s', line) for line in lines), lines
    assert any(re.fullmatch(rf'{dtype}: median \d+\.\d\d ms/iter \(25 steps; 10% \d+\.\d\d, 90% \d+\.\d\d\), '
                            r'[\d,]+ tokens/s', line) for line in lines), lines
  assert re.fullmatch(r'bfloat16 / float32: \d\.\d\d', lines[-2])
  assert re.fullmatch(r'peak RSS: \d+ MB \(this process, float32 and bfloat16 steps compiled\)', lines[-1])


def test_bench_one_dtype_and_bad_flags():
  proc = bench('--steps=25', '--config.n_layer=1', '--config.dtype=bfloat16')
  assert proc.returncode == 0, proc.stderr
  assert 'float32' not in proc.stdout and 'bfloat16: median ' in proc.stdout
  proc = bench('--config.n_embd=130')
  assert proc.returncode == 1
  assert proc.stderr.startswith('error: n_embd=130 is not divisible by n_head=4')


def test_bench_times_nanogpt_by_turns():
  proc = bench('--steps=25', '--config.n_layer=1', '--config.dtype=float32', '--nanogpt')
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.splitlines()
  assert re.fullmatch(r'nanoGPT \(PyTorch, eager\): median \d+\.\d\d ms/iter \(25 steps; 10% \d+\.\d\d, '
                      r'90% \d+\.\d\d\), [\d,]+ tokens/s', lines[-3]), lines
  assert re.fullmatch(r'float32 / nanoGPT \(PyTorch, eager\): \d+\.\d\d', lines[-2]), lines
  assert lines[-1].endswith("(this process, float32 steps compiled, and PyTorch's)")
  proc = bench('--nanogpt', '--config.gradient_accumulation_steps=2')
  assert proc.returncode == 1
  assert proc.stderr == 'error: --nanogpt times one micro-batch a step: leave gradient_accumulation_steps at 1\n'


def test_bench_nanogpt_without_torch(tmp_path):
  (tmp_path / 'torch.py').write_text('raise ImportError("no torch here")\n')  # shadows the installed torch
  proc = subprocess.run([sys.executable, '-m', 'jaxgpt.bench', '--nanogpt'], cwd=REPO_ROOT, capture_output=True,
                        text=True, timeout=300, env={**os.environ, 'PYTHONPATH': str(tmp_path)})
  assert proc.returncode == 1
  assert proc.stderr == 'error: --nanogpt times PyTorch: pip install -e ".[torch]"\n'
