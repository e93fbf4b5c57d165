"""Shared fixtures: the repo root, the tiny Shakespeare corpus, nanoGPT traces,
and a tiny model reused across tests (each distinct shape costs a jit compile).
"""

import ast
import contextlib
import functools
import hashlib
import math
import os
import pathlib
import platform
import pty
import re
import resource
import shutil
import subprocess
import sys
import types
import urllib.request

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


# Tests that hold jaxgpt to one platform's internals, and skip elsewhere saying which (CI runs x86-64 Linux)
def linux_only(depends_on: str) -> pytest.MarkDecorator:
  """For a test that depends on Linux's kernel interfaces (/proc, CPU affinity)."""
  return pytest.mark.skipif(sys.platform != 'linux', reason=f'Linux only: depends on {depends_on}')


def x86_64_linux_only(depends_on: str) -> pytest.MarkDecorator:
  """For a test that depends on the internals of the x86-64 Linux jaxlib (its oneDNN and YNNPACK kernels)."""
  return pytest.mark.skipif(not (platform.machine() == 'x86_64' and sys.platform == 'linux'),
                            reason=f'x86-64 Linux only: depends on {depends_on}')


# the model of tests/fixtures/tiny.npz: 2 layers, 2 heads, 32 wide, block 16
TINY = GPTConfig(block_size=16, vocab_size=65, n_layer=2, n_head=2, n_embd=32, dropout=0.0, bias=True)
# the model and batches of the tiny training runs in subprocesses (each test adds its own schedule): the
# same shapes everywhere, so that a shared compilation cache serves them all
TINY_RUN = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, batch_size=8)

# The two inputs the tests take from outside the project: the tiny Shakespeare corpus and nanoGPT's own files.
# Each comes from the path its variable names, else from ../shared beside the checkout, else from a download
# checked against the sha256 recorded here and kept in inputs_cache(); offline, the tests that need it skip.
SHARED = REPO_ROOT.parent / 'shared'
CORPUS_ENV = 'JAXGPT_TINYSHAKESPEARE'
SHARED_CORPUS = SHARED / 'data' / 'tinyshakespeare' / 'input.txt'
CORPUS_URL = 'https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt'  # prepare.py's
CORPUS_SHA256 = '86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed'
NANOGPT_ENV = 'JAXGPT_NANOGPT_DIR'  # as jaxgpt/nanogpt_torch.py reads it
SHARED_NANOGPT = SHARED / 'reference' / 'nanogpt'
NANOGPT_COMMIT = '3adf61e154c3fe3fca428ad6bc3818b27a3b8291'
NANOGPT_URL = f'https://raw.githubusercontent.com/karpathy/nanoGPT/{NANOGPT_COMMIT}/'
# nanoGPT's files at NANOGPT_COMMIT (those of ../shared/reference/nanogpt): path -> sha256
NANOGPT_FILES = {
    'LICENSE': 'a59ec5cdb1c1e447e5266a014b3e7ded511f8d6e5a08931e931c87490ff821fe',
    'bench.py': '984f54a60df9d1aa844e7e0aef10000e7090a00109d13e43587ccb077ef340bb',
    'config/eval_gpt2.py': '054665ef6b977e5a03fa94f4365206d5258305f8660589c5b534949d946418e8',
    'config/eval_gpt2_large.py': '52f07f35a1c7a45c30f0c59a39ab3804fcefd505bcd69973ff06e19a57e079bc',
    'config/eval_gpt2_medium.py': '7ced6fb2cbc2c16fbb9c6c256eac403f3e1a88d1317ef0f85a1688f8b7988a2b',
    'config/eval_gpt2_xl.py': '8bb8d85b53f2daf35d11c403b0a0e0dfbe69cd1d052f38ea09b826fa3ed2ae65',
    'config/finetune_shakespeare.py': 'e78caf73a286e22df3ad069b39ed6162490b8e033ca1e2ceb8477eee159c7948',
    'config/train_gpt2.py': '0add8a916edf704e001e87aaf63647eea9d6df964c10129ff60ad479bdbd55c4',
    'config/train_shakespeare_char.py': '9b41cdfb2c917259d796a8184d835221a349c23cd18a0a63b46da431d95d9c05',
    'configurator.py': '5cc23aca26b4ab3c0d9e5f82740f4781f9444f42718c15abcee70d93c5aabe8f',
    'data/openwebtext/prepare.py': '77f3ef0cc8132d77f90c2bd5f9c3be86d1b3da7428e100559c58aee2bcb6eb12',
    'data/shakespeare/prepare.py': 'f8d47267f00963138314bb969e75071211bf1140c248bf31b9e60e7750027f06',
    'data/shakespeare_char/prepare.py': 'd5fbea0686d146748cf36017d6c34136a2fe9c41f065f1429529ad55a992c692',
    'model.py': '7c01703240dbec5d554527dc666e35b3df8391d0b117fddc07afcf325a21d11c',
    'sample.py': '1c4bb3716ec55395be2e6ad136693614b0b38de9defda889041efe2057a0c1f1',
    'train.py': '413bd97b40bb400a2a0d01230e2946f056c263ebac1b7281c2367d964a123085',
}
# set by CI, which has ../shared: a test input not found fails the tests that need it instead of skipping them
REQUIRE_ENV = 'JAXGPT_REQUIRE_TEST_INPUTS'


class ChecksumError(Exception):
  """A download that is not the file recorded: never used."""


def inputs_cache() -> pathlib.Path:
  """Where the downloaded test inputs are kept: $XDG_CACHE_HOME/jaxgpt/test-inputs, else ~/.cache/..."""
  return pathlib.Path(os.environ.get('XDG_CACHE_HOME') or pathlib.Path.home() / '.cache') / 'jaxgpt' / 'test-inputs'


def file_sha256(path: pathlib.Path) -> str:
  with open(path, 'rb') as f:
    return hashlib.file_digest(f, 'sha256').hexdigest()


def fetch(url: str, path: pathlib.Path, sha256: str) -> pathlib.Path:
  """path, holding url's content of this sha256: downloaded once (a file already there with the sum is reused),
  into a temporary file renamed into place, so that an interrupted download leaves no half file at path.
  OSError when url cannot be read (offline); ChecksumError when what came is another file."""
  if path.is_file() and file_sha256(path) == sha256:
    return path
  partial = path.with_name(f'{path.name}.{os.getpid()}.part')
  try:
    with urllib.request.urlopen(url, timeout=60) as response:
      path.parent.mkdir(parents=True, exist_ok=True)  # once online: offline, the tests leave no trace
      with open(partial, 'wb') as f:
        shutil.copyfileobj(response, f)
    if (got := file_sha256(partial)) != sha256:
      raise ChecksumError(f'{url} has sha256 {got}, not the {sha256} recorded in tests/conftest.py: not used')
    os.replace(partial, path)
  finally:
    partial.unlink(missing_ok=True)
  return path


def fetch_nanogpt(folder: pathlib.Path) -> pathlib.Path:
  """folder, holding NANOGPT_FILES as nanoGPT's repository has them at NANOGPT_COMMIT (fetch, file by file)."""
  for name, sha256 in NANOGPT_FILES.items():
    fetch(NANOGPT_URL + name, folder / name, sha256)
  return folder


def find_input(variable: str, shared: pathlib.Path, download) -> pathlib.Path | None:
  """The path $variable names, else shared where it exists, else download()'s; None when that is offline."""
  if os.environ.get(variable):
    path = pathlib.Path(os.environ[variable])
    if not path.exists():
      pytest.fail(f'{variable}={path}: no such file or folder', pytrace=False)
    return path
  if shared.exists():
    return shared
  try:
    return download()
  except ChecksumError as e:
    pytest.fail(str(e), pytrace=False)
  except OSError:  # offline
    return None


class InputMissing(pytest.skip.Exception):
  """A test input nowhere to be had: the test that needs it skips."""


def required(path: pathlib.Path | None, missing: str) -> pathlib.Path:
  """path, found; else the test that needs it skips with the line missing, or, under $JAXGPT_REQUIRE_TEST_INPUTS=1,
  fails."""
  if path is None:
    if os.environ.get(REQUIRE_ENV) == '1':
      pytest.fail(f'{missing} ({REQUIRE_ENV}=1)', pytrace=False)
    raise InputMissing(missing)
  return path


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
  # pytest reports a skip in a fixture at the test's own line, so that its summary would give one line per test;
  # at required()'s line instead, the skips of one missing input fold into one line
  report = yield
  if call.excinfo is not None and call.excinfo.errisinstance(InputMissing):
    raised = call.excinfo.traceback[-1]
    report.longrepr = (str(raised.path), raised.lineno + 1, call.excinfo.value.msg)
  return report


@functools.cache  # looked for once a session: offline, one try
def find_corpus() -> pathlib.Path | None:
  return find_input(CORPUS_ENV, SHARED_CORPUS,
                    lambda: fetch(CORPUS_URL, inputs_cache() / 'tinyshakespeare' / 'input.txt', CORPUS_SHA256))


@functools.cache
def find_nanogpt() -> pathlib.Path | None:
  return find_input(NANOGPT_ENV, SHARED_NANOGPT, lambda: fetch_nanogpt(inputs_cache() / f'nanogpt-{NANOGPT_COMMIT}'))


def tiny_shakespeare() -> pathlib.Path:
  """The tiny Shakespeare input.txt (1,115,394 characters), else the test skips."""
  return required(find_corpus(), f'tiny Shakespeare not found: put it at {SHARED_CORPUS}, or set '
                                 f'{CORPUS_ENV}=/path/to/input.txt, or go online once (it is then kept in '
                                 f'{inputs_cache()})')


def nanogpt_folder() -> pathlib.Path:
  """A folder holding nanoGPT's own files at commit 3adf61e (NANOGPT_FILES: model.py, train.py, sample.py,
  configurator.py, bench.py, config/*.py, data/*/prepare.py, LICENSE), unchanged: run or import them from here.
  Else the test skips."""
  return required(find_nanogpt(), f"nanoGPT's files not found: put them at {SHARED_NANOGPT}, or set "
                                  f'{NANOGPT_ENV}=/path/to/nanoGPT (a checkout of {NANOGPT_COMMIT[:7]}), or go '
                                  f'online once (they are then kept in {inputs_cache()})')


@pytest.fixture(scope='session')
def shakespeare() -> pathlib.Path:
  """tiny_shakespeare()"""
  return tiny_shakespeare()


@pytest.fixture(scope='session')
def nanogpt_dir() -> pathlib.Path:
  """nanogpt_folder()"""
  return nanogpt_folder()


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
def _nanogpt_get_lr(train_py: pathlib.Path) -> types.CodeType:
  """The definition of get_lr in nanoGPT's own train.py, compiled alone."""
  tree = ast.parse(train_py.read_text())
  [definition] = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == 'get_lr']
  return compile(ast.Module([definition], type_ignores=[]), str(train_py), 'exec')


def nanogpt_get_lr(it, learning_rate, warmup_iters, lr_decay_iters, min_lr):
  """nanoGPT's get_lr(it) (its train.py in nanogpt_folder()), run with these settings as the globals its train.py
  gives it."""
  namespace = dict(math=math, learning_rate=learning_rate, warmup_iters=warmup_iters,
                   lr_decay_iters=lr_decay_iters, min_lr=min_lr)
  exec(_nanogpt_get_lr(nanogpt_folder() / 'train.py'), namespace)
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
