"""Shared fixtures: the repo root, the tiny Shakespeare corpus, nanoGPT traces,
and a tiny model reused across tests (each distinct shape costs a jit compile).
"""

import ast
import contextlib
import functools
import math
import os
import pathlib
import pty
import re
import resource
import shutil
import subprocess
import types

import jax
import numpy as np
import pytest
from flax import nnx

from jaxgpt import runtime
from jaxgpt.model import GPTConfig
from jaxgpt.model import GPT

runtime.setup()  # as the entry points do: the speed settings the tests' runs assume, before jax starts

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = REPO_ROOT / 'tests' / 'fixtures'
CORPUS_ENV = 'JAXGPT_TINYSHAKESPEARE'
# the nanoGPT checkout whose own model.py the tests hold jaxgpt against (jaxgpt/nanogpt_torch.py
# imports it): $JAXGPT_NANOGPT_DIR, else nanoGPT's model.py and licence in ../shared/reference/nanogpt
NANOGPT_DIR = pathlib.Path(os.environ.get('JAXGPT_NANOGPT_DIR')
                           or REPO_ROOT.parent / 'shared' / 'reference' / 'nanogpt')

# the model of tests/fixtures/tiny.npz: 2 layers, 2 heads, 32 wide, block 16
TINY = GPTConfig(block_size=16, vocab_size=65, n_layer=2, n_head=2, n_embd=32, dropout=0.0, bias=True)
# the model and batches of the tiny training runs in subprocesses (each test adds its own schedule): the
# same shapes everywhere, so that a shared compilation cache serves them all
TINY_RUN = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, batch_size=8)


def corpus_path() -> pathlib.Path:
  """tiny Shakespeare: $JAXGPT_TINYSHAKESPEARE, else <repo>/../shared/data/tinyshakespeare/input.txt."""
  if os.environ.get(CORPUS_ENV):
    return pathlib.Path(os.environ[CORPUS_ENV])
  return REPO_ROOT.parent / 'shared' / 'data' / 'tinyshakespeare' / 'input.txt'


@pytest.fixture(scope='session')
def shakespeare() -> pathlib.Path:
  """The tiny Shakespeare input.txt; the tests never download it."""
  path = corpus_path()
  if not path.is_file():
    pytest.fail(f'tiny Shakespeare not found at {path}: put input.txt (1,115,394 characters, '
                f'https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt) '
                f'there, or set {CORPUS_ENV}=/path/to/input.txt', pytrace=False)
  return path


@pytest.fixture(scope='session')
def nanogpt_dir() -> pathlib.Path:
  """A folder holding nanoGPT's own files at commit 3adf61e (model.py, train.py, sample.py,
  configurator.py, config/*.py, data/*/prepare.py, LICENSE), unchanged: run or import them from here."""
  return NANOGPT_DIR


def make_workdir(path: pathlib.Path, shakespeare: pathlib.Path, dataset: str = 'shakespeare_char') -> pathlib.Path:
  """path, made to hold data/<dataset>/input.txt, from which train.py
  prepares the data set on first use (no download)."""
  (path / 'data' / dataset).mkdir(parents=True, exist_ok=True)
  shutil.copy(shakespeare, path / 'data' / dataset / 'input.txt')
  return path


# the end-to-end runs' schedule: 40 iterations, evaluated at 0, 20 and 40
E2E_RUN = TINY_RUN | dict(max_iters=40, eval_interval=20, eval_iters=5, log_interval=5, dropout=0.0, warmup_iters=5,
                          lr_decay_iters=40)


def config_flags(settings: dict, prefix: str = '--config.') -> list[str]:
  """{'n_layer': 2, ...} as train.py's --config.n_layer=2 ... (prefix '--': nanoGPT's spelling)"""
  return [f'{prefix}{key}={value}' for key, value in settings.items()]


# nanoGPT's log lines
STEP_LINE = re.compile(r'^step (\d+): train loss (\d+\.\d{4}), val loss (\d+\.\d{4})$')
ITER_LINE = re.compile(r'^iter (\d+): loss (\d+\.\d{4}), time \d+\.\d{2}ms, mfu -?\d+\.\d{2}%$')


def parse_log(stdout: str) -> tuple[dict[int, tuple[float, float]], dict[int, float]]:
  """({iteration: (train loss, val loss)} of the evaluations, {iteration: loss} of the iterations) a run printed."""
  steps = {int(m[1]): (float(m[2]), float(m[3])) for m in map(STEP_LINE.match, stdout.splitlines()) if m}
  iters = {int(m[1]): float(m[2]) for m in map(ITER_LINE.match, stdout.splitlines()) if m}
  return steps, iters


def snapshot(folder: pathlib.Path) -> dict[str, tuple[bool, int, int]]:
  """Every path under folder (folder too) with its size and mtime: what a
  command must leave as it was. A folder's mtime changes when an entry is
  added or removed in it, a temporary one included."""
  return {str(p.relative_to(folder)): (p.is_dir(), p.lstat().st_size, p.lstat().st_mtime_ns)
          for p in [folder, *sorted(folder.rglob('*'))]}


def max_diff(a, b) -> float:
  """The largest absolute difference between two pytrees of arrays."""
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def load_trace(name: str) -> dict[str, np.ndarray]:
  with np.load(FIXTURES / name) as npz:
    return {k: npz[k] for k in npz.files}


@pytest.fixture(scope='session')
def tiny_trace() -> dict[str, np.ndarray]:
  return load_trace('tiny.npz')


@pytest.fixture(scope='module')
def tiny_model() -> GPT:
  return GPT(TINY, rngs=nnx.Rngs(0))


def flat_params(params) -> dict[str, np.ndarray]:
  """'h/0/attn/c_attn/kernel' -> array, for params as an nnx.State or a plain nested dict."""
  flat = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    keys = [str(p.key) for p in path if isinstance(p, jax.tree_util.DictKey)]
    flat['/'.join(keys)] = np.asarray(leaf)
  return flat


def finish(popen, timeout=300):
  """Waits for a started run; the completed process."""
  try:
    stdout, stderr = popen.communicate(timeout=timeout)
  finally:
    if popen.poll() is None:  # timed out, or interrupted
      popen.kill()
      popen.communicate()
  return subprocess.CompletedProcess(popen.args, popen.returncode, stdout, stderr)


def run_in_terminal(args, cwd, timeout=300) -> tuple[int, str]:
  """Runs args with stdout and stderr on a pseudo-terminal (as a user at a
  terminal sees it); returns the exit status and the text, terminal codes removed."""
  main_fd, child_fd = pty.openpty()
  popen = subprocess.Popen(args, cwd=cwd, stdin=subprocess.DEVNULL, stdout=child_fd, stderr=child_fd,
                           env=os.environ | {'COLUMNS': '160', 'TERM': 'xterm'})
  os.close(child_fd)
  output = b''
  while True:
    try:
      chunk = os.read(main_fd, 65536)
    except OSError:  # the child closed the terminal
      break
    if not chunk:
      break
    output += chunk
  os.close(main_fd)
  return popen.wait(timeout=timeout), re.sub(r'\x1b\[[0-9;?]*[A-Za-z]', '', output.decode(errors='replace'))


@functools.cache
def _nanogpt_get_lr() -> types.CodeType:
  """The definition of get_lr in nanoGPT's own train.py (tests/fixtures/nanogpt), compiled alone."""
  tree = ast.parse((FIXTURES / 'nanogpt' / 'train.py').read_text())
  [definition] = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == 'get_lr']
  return compile(ast.Module([definition], type_ignores=[]), str(FIXTURES / 'nanogpt' / 'train.py'), 'exec')


def nanogpt_get_lr(it, learning_rate, warmup_iters, lr_decay_iters, min_lr):
  """nanoGPT's get_lr(it), run with these settings as the globals its train.py gives it."""
  namespace = dict(math=math, learning_rate=learning_rate, warmup_iters=warmup_iters,
                   lr_decay_iters=lr_decay_iters, min_lr=min_lr)
  exec(_nanogpt_get_lr(), namespace)
  return namespace['get_lr'](it)


@contextlib.contextmanager
def file_size_limit(size):
  """Writes past size bytes fail with EFBIG (Python ignores SIGXFSZ)."""
  soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
  resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
  try:
    yield
  finally:
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
