"""The benchmark runs and prints its figures (it is timed by people, not tests)."""

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
