"""The CPU runtime set-up that the entry points run before jax starts, and
that importing jaxgpt leaves alone."""

import os
import subprocess
import sys

import pytest

PROGRAM = 'import jax, os; from jaxgpt import runtime; runtime.setup(); jax.jit(lambda x: x + 1)(1).block_until_ready(); ' \
          'print(jax.config.jax_compilation_cache_dir); print(os.environ.get("XLA_FLAGS", ""))'


def run(env, program=PROGRAM):
  env = {k: v for k, v in os.environ.items() if k not in ('JAX_COMPILATION_CACHE_DIR', 'XLA_FLAGS')} | env
  return subprocess.run([sys.executable, '-c', program], env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_importing_jaxgpt_changes_nothing_in_the_process(tmp_path):
  proc = run({'XDG_CACHE_HOME': str(tmp_path)},
             'import jax, os; import jaxgpt, jaxgpt.model, jaxgpt.train, jaxgpt.sample; '
             'jax.jit(lambda x: x + 1)(1).block_until_ready(); '
             'print(jax.config.jax_compilation_cache_dir); print(os.environ.get("XLA_FLAGS"))')
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.splitlines() == ['None', 'None']
  assert not (tmp_path / 'jaxgpt').exists()


@pytest.mark.slow
def test_compiled_programs_are_kept_in_the_user_cache(tmp_path):
  proc = run({'XDG_CACHE_HOME': str(tmp_path)})
  assert proc.returncode == 0, proc.stderr
  cache_dir, xla_flags = proc.stdout.splitlines()
  assert cache_dir == str(tmp_path / 'jaxgpt' / 'xla')
  assert list((tmp_path / 'jaxgpt' / 'xla').iterdir())  # the jitted program was written there
  assert xla_flags == ''  # XLA's flags are the user's: the step's programs carry their own options


@pytest.mark.slow
def test_a_cache_dir_of_ones_own_is_kept(tmp_path):
  proc = run({'XDG_CACHE_HOME': str(tmp_path / 'xdg'), 'JAX_COMPILATION_CACHE_DIR': str(tmp_path / 'mine'),
              'XLA_FLAGS': '--xla_cpu_enable_fast_math=false'})
  assert proc.returncode == 0, proc.stderr
  cache_dir, xla_flags = proc.stdout.splitlines()
  assert cache_dir == str(tmp_path / 'mine') and list((tmp_path / 'mine').iterdir())
  assert not (tmp_path / 'xdg').exists()
  assert xla_flags == '--xla_cpu_enable_fast_math=false'
