"""The CPU runtime set-up that the entry points run before jax starts, and
that importing jaxgpt leaves alone."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT, TINY_RUN, make_workdir
from jaxgpt.checkpoint import holds_checkpoints

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


@pytest.mark.slow
@pytest.mark.parametrize('variable', ['XDG_CACHE_HOME', 'JAX_COMPILATION_CACHE_DIR'])
@pytest.mark.parametrize('cache_home, reason', [('a_file/cache', 'Not a directory'), ('read_only', None)])
def test_an_unwritable_cache_leaves_the_cache_off_in_one_line(tmp_path, cache_home, reason, variable):
  # jax warned in 2 lines at each program it could not cache
  (tmp_path / 'a_file').write_text('not a folder')
  (tmp_path / 'read_only').mkdir()
  if cache_home == 'read_only':
    if os.geteuid() == 0:  # root writes in any mode's folder: a read-only bind mount instead
      if os.system(f'mount --bind {tmp_path / "read_only"} {tmp_path / "read_only"} 2>/dev/null && '
                   f'mount -o remount,bind,ro {tmp_path / "read_only"} 2>/dev/null') != 0:
        pytest.skip('a read-only bind mount needs mount(8)')
      reason = 'Read-only file system'
    else:
      (tmp_path / 'read_only').chmod(0o555)
      reason = 'Permission denied'
  try:
    proc = run({variable: str(tmp_path / cache_home)})
  finally:
    if cache_home == 'read_only' and os.geteuid() == 0:
      os.system(f'umount {tmp_path / "read_only"}')
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.splitlines() == ['None', '']  # no cache, and the program ran
  cache_dir = tmp_path / cache_home / 'jaxgpt' / 'xla' if variable == 'XDG_CACHE_HOME' else tmp_path / cache_home
  assert proc.stderr.splitlines() == [f'compilation cache off: cannot write {cache_dir} ({reason}); '
                                      f'set {variable} to a writable folder']


# trains a tiny model through the library, then prints what a process set-up would have changed
LIBRARY_RUN = """
import json, os, signal, jax
from jaxgpt import runtime, train
from jaxgpt.config import load_config_file
c = load_config_file({config!r})
c.update({settings!r})
with train.Trainer(c) as trainer:
  losses = trainer.train()
print(json.dumps({{'val': losses['val'], 'jax_platforms': jax.config.jax_platforms,
                  'environment': {{k: os.environ.get(k) for k in ('XLA_FLAGS', 'PJRT_NPROC')}},
                  'distributed': jax.distributed.is_initialized(), 'malloc_set_up': runtime._freed_memory_kept,
                  'handlers': [signal.getsignal(s) == signal.default_int_handler if s == signal.SIGINT
                               else signal.getsignal(s) == signal.SIG_DFL
                               for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)]}}))
"""


@pytest.mark.slow
def test_training_through_the_library_leaves_the_process_as_it_was(tmp_path, shakespeare):
  """Trainer sets nothing process-wide: the device pin, jax.distributed, XLA's thread pool and glibc's malloc are
  the entry point's (cli.set_up_process, entry.run); the signal handlers it takes are given back."""
  workdir = make_workdir(tmp_path, shakespeare)
  settings = TINY_RUN | dict(max_iters=3, eval_interval=3, eval_iters=2, device='cpu', out_dir=str(workdir / 'out'))
  program = LIBRARY_RUN.format(config=str(REPO_ROOT / 'configs' / 'shakespeare_char.py'), settings=settings)
  env = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', 'PJRT_NPROC', 'JAX_PLATFORMS')}
  proc = subprocess.run([sys.executable, '-c', program], cwd=workdir, env=env, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr
  result = json.loads(proc.stdout.splitlines()[-1])
  assert 0 < result.pop('val') < 5  # it trained, and saved
  assert holds_checkpoints(workdir / 'out')
  assert result == {'jax_platforms': None, 'environment': {'XLA_FLAGS': None, 'PJRT_NPROC': None},
                    'distributed': False, 'malloc_set_up': False, 'handlers': [True, True, True]}


@pytest.mark.slow
@pytest.mark.parametrize('flags, reason', [
    ('--xla_nonsense', 'Unknown flag in XLA_FLAGS: --xla_nonsense'),
    ('--xla_cpu_enable_fast_math=maybe', "Couldn't interpret value maybe for flag xla_cpu_enable_fast_math"),
    ('garbage', 'Could not open file "garbage" to read flags for environment variable "XLA_FLAGS"'),
])
def test_xla_flags_that_xla_refuses_are_one_error_line(tmp_path, flags, reason):
  # XLA aborted the process from C++ with its own fatal line (and, for a bad value, its whole list of flags)
  proc = subprocess.run([sys.executable, str(REPO_ROOT / 'sample.py'), '--out_dir=nowhere'], cwd=tmp_path,
                        env=os.environ | {'XLA_FLAGS': flags}, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 1
  [line] = proc.stderr.splitlines()
  assert line.startswith(f"error: XLA does not accept XLA_FLAGS='{flags}': {reason}") and \
      line.endswith('; fix or unset XLA_FLAGS'), line
  assert proc.stdout == ''
