"""Shared fixtures: the repo root, the tiny Shakespeare corpus, nanoGPT traces,
and a tiny model reused across tests (each distinct shape costs a jit compile).
"""

import os
import pathlib
import pty
import re
import shutil
import subprocess

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


def make_workdir(path: pathlib.Path, shakespeare: pathlib.Path) -> pathlib.Path:
  """path, made to hold data/shakespeare_char/input.txt, from which train.py
  prepares dataset=shakespeare_char on first use (no download)."""
  (path / 'data' / 'shakespeare_char').mkdir(parents=True)
  shutil.copy(shakespeare, path / 'data' / 'shakespeare_char' / 'input.txt')
  return path


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
