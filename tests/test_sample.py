"""Sampling: the key/value cache against the full forward, the Generator
(seeds, cache or not, greedy, past block_size, token by token), sample_next's
top_k and temperature, and sample.py end to end on a model trained by
train.py, with its clean errors, its memory check, and Ctrl-C or SIGTERM
while sampling (the samples so far printed, exit 130).

The train.py and sample.py runs are subprocesses with cwd=<their folder>, as
in test_train_e2e.py, shared by module-scoped fixtures: started from a thread
with the module's first test (they run while the in-process tests do), side
by side where independent. They share a jax compilation cache in the
session's tmp folder (the tiny model's compiles cost more than its training
or sampling); the training run has test_checkpoint.py's settings, so it finds
its programs there when that module ran first.
"""

import concurrent.futures
import os
import pty
import re
import select
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import REPO_ROOT, TINY, TINY_RUN, config_flags, finish, make_workdir, run_in_terminal, snapshot
from jaxgpt import generate as generate_module
from jaxgpt import memory, sample
from jaxgpt.checkpoint import Checkpoints
from jaxgpt.generate import Generator, sample_next
from jaxgpt.step import init_model

CONFIG = TINY
BLOCK = CONFIG.block_size


@pytest.fixture(scope='module')
def tiny():
  """(model, graphdef, params) of a random tiny model, block 16."""
  return init_model(CONFIG, 0)


@pytest.fixture(scope='module')
def jitted(tiny):
  """The model's three entry points, each jitted once (a compile per shape)."""
  _, graphdef, params = tiny
  full = jax.jit(lambda p, idx: nnx.merge(graphdef, p)(idx)[0])  # logits at every position
  decode = jax.jit(lambda p, idx, cache: nnx.merge(graphdef, p)(idx, cache=cache, index=idx.shape[1] - 1))
  logits_at = jax.jit(lambda p, idx, index: nnx.merge(graphdef, p)(idx, index=index)[0])
  return dict(full=lambda idx: np.asarray(full(params, idx)),
              decode=lambda idx, cache: decode(params, idx, cache),
              logits_at=lambda idx, index: np.asarray(logits_at(params, idx, index)))


def tokens(seed, shape):
  return np.random.default_rng(seed).integers(0, CONFIG.vocab_size, shape).astype(np.int32)


# the key/value cache

def test_decode_with_the_cache_is_the_full_forward(tiny, jitted):
  model = tiny[0]
  idx = tokens(0, (2, BLOCK))
  full = jitted['full'](idx)  # (2, 16, 65)
  assert full.shape == (2, BLOCK, CONFIG.vocab_size)
  prompt = 5
  logits, cache = jitted['decode'](idx[:, :prompt], model.init_cache(2))  # the prompt at once
  got = {prompt - 1: np.asarray(logits)}
  for pos in range(prompt, BLOCK):  # then one token at a time, up to block_size
    logits, cache = jitted['decode'](idx[:, pos:pos + 1], cache)
    got[pos] = np.asarray(logits)
  for pos, logits in got.items():
    np.testing.assert_allclose(logits, full[:, pos], rtol=0, atol=1e-5, err_msg=f'position {pos}')
  # the comparison means something: neighbouring positions differ far more than that
  assert np.abs(full[:, BLOCK - 1] - full[:, BLOCK - 2]).max() > 1e-2


def test_logits_at_ignores_what_follows_index(jitted):
  idx = tokens(1, (2, BLOCK))
  full = jitted['full'](idx)
  garbage = tokens(2, (2, BLOCK))
  for index in (0, 3, 9, BLOCK - 1):
    for pad in (np.zeros_like(idx), garbage):
      padded = np.concatenate([idx[:, :index + 1], pad[:, index + 1:]], axis=1)
      np.testing.assert_allclose(jitted['logits_at'](padded, index), full[:, index], rtol=0, atol=1e-5,
                                 err_msg=f'index {index}')


# the Generator

PROMPT = tokens(3, (2, 3))
NEW = 30  # 3 + 30 > block 16: the window is cropped, as nanoGPT's


@pytest.fixture(scope='module')
def generate(tiny):
  _, graphdef, params = tiny
  return Generator(graphdef, params, CONFIG, temperature=1.0, top_k=None)


@pytest.fixture(scope='module')
def greedy(tiny):
  _, graphdef, params = tiny
  return Generator(graphdef, params, CONFIG, temperature=1.0, top_k=1)


def test_same_seed_same_tokens_with_or_without_the_cache(generate):
  with_cache = generate(PROMPT, NEW, seed=5, use_cache=True)
  assert with_cache.shape == (2, 3 + NEW) and with_cache.dtype == np.int32
  np.testing.assert_array_equal(with_cache[:, :3], PROMPT)  # the prompt, then the new tokens
  assert ((0 <= with_cache) & (with_cache < CONFIG.vocab_size)).all()
  np.testing.assert_array_equal(generate(PROMPT, NEW, seed=5, use_cache=False), with_cache)
  np.testing.assert_array_equal(generate(PROMPT, NEW, seed=5, use_cache=True), with_cache)


def test_other_seed_other_tokens(generate):
  a = generate(PROMPT, NEW, seed=5)
  b = generate(PROMPT, NEW, seed=6)
  np.testing.assert_array_equal(b[:, :3], PROMPT)
  assert (a[:, 3:] != b[:, 3:]).any()
  assert (a[0, 3:] != a[1, 3:]).any()  # rows draw their own tokens


def test_stream_hands_out_each_token_as_it_is_drawn(generate):
  seen = [rows.copy() for rows in generate.stream(PROMPT, 5, seed=5)]
  assert [rows.shape for rows in seen] == [(2, 3 + n) for n in range(1, 6)]
  whole = generate(PROMPT, 5, seed=5)
  for rows in seen:  # each the beginning of the whole generation
    np.testing.assert_array_equal(rows, whole[:, :rows.shape[1]])


def reference_greedy(logits_at, prompt, max_new_tokens):
  """Greedy decoding with the full forward over the (cropped) context, token by token."""
  seq = prompt.copy()
  for _ in range(max_new_tokens):
    context = seq[:, -BLOCK:]
    window = np.zeros((seq.shape[0], BLOCK), np.int32)
    window[:, :context.shape[1]] = context
    next_token = logits_at(window, context.shape[1] - 1).argmax(axis=-1).astype(np.int32)
    seq = np.concatenate([seq, next_token[:, None]], axis=1)
  return seq


@pytest.mark.parametrize('use_cache', [True, False])
def test_top_k_1_is_greedy(greedy, jitted, use_cache):
  expected = reference_greedy(jitted['logits_at'], PROMPT, NEW)
  for seed in (0, 1):  # no randomness left
    np.testing.assert_array_equal(greedy(PROMPT, NEW, seed=seed, use_cache=use_cache), expected)


# sample_next

def test_sample_next_top_k_1_is_the_argmax():
  logits = jax.random.normal(jax.random.key(0), (4, 65))
  keys = jax.random.split(jax.random.key(1), 200)
  drawn = jax.vmap(lambda k: sample_next(logits, k, 1.0, 1))(keys)  # (200, 4)
  np.testing.assert_array_equal(np.asarray(drawn), np.broadcast_to(np.argmax(logits, -1), (200, 4)))
  drawn_cold = jax.vmap(lambda k: sample_next(logits, k, 0.01, 1))(keys)
  np.testing.assert_array_equal(np.asarray(drawn_cold), np.asarray(drawn))


def test_sample_next_top_k_2_draws_only_the_two_largest():
  logits = jnp.array([[0.5, 2.0, -1.0, 1.9, 1.8, 0.0, 1.85, -3.0]])
  keys = jax.random.split(jax.random.key(2), 2000)
  drawn = np.asarray(jax.vmap(lambda k: sample_next(logits, k, 1.0, 2))(keys))[:, 0]
  assert set(drawn.tolist()) == {1, 3}  # both drawn (p = 0.52, 0.48), nothing else ever
  unrestricted = np.asarray(jax.vmap(lambda k: sample_next(logits, k, 1.0, None))(keys))[:, 0]
  assert set(unrestricted.tolist()) > {1, 3}  # without top_k the others are drawn too


def test_sample_next_with_a_tiny_temperature_is_the_argmax():
  # logits / 1e-40 overflow float32: every positive logit would be +inf, and the draw the first of them
  logits = jax.random.normal(jax.random.key(0), (4, 65))
  drawn = sample_next(logits, jax.random.key(1), 1e-40, None)
  np.testing.assert_array_equal(np.asarray(drawn), np.argmax(logits, -1))


# sample.py end to end

TRAIN_CONFIG = REPO_ROOT / 'configs' / 'shakespeare_char.py'
SCHEDULE = dict(dropout=0.1, eval_interval=10, always_save_checkpoint=True, log_interval=2, eval_iters=3,
                warmup_iters=5, lr_decay_iters=40, max_iters=20)
SAMPLE_ARGS = ['--num_samples=2', '--max_new_tokens=30', '--seed=7']
SEPARATOR = '\n---------------\n'


def start(env, workdir, script, *args):
  return subprocess.Popen([sys.executable, str(REPO_ROOT / script), *map(str, args)], cwd=workdir, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# name: (sample.py arguments, after those of a good run; what the one error line says)
ERRORS = {
    'character_outside_vocabulary': (['--start=ROMEO€'], r"characters outside the model's vocabulary: '€'"),
    'temperature_0': (['--temperature=0'], r'temperature=0\.0 must be > 0'),
    'top_k_0': (['--top_k=0'], r'top_k=0 must be >= 1'),
    'missing_out_dir': (['--out_dir=missing'], r'out_dir .*missing does not exist'),
    'unknown_flag': (['--bogus=1'], r'bogus'),
}


def run_all(env, workdir):
  """train.py, 20 iterations; then sample.py on its out_dir: once alone (it
  fills the compilation cache), with the ERRORS runs beside it; then again,
  without the key/value cache, and with the prompt from a file, side by side.
  Returns {name: completed process}, and snapshots of out_dir before and
  after sampling."""
  out_dir = workdir / 'out'
  started = []

  def sample(*args):
    started.append(start(env, workdir, 'sample.py', f'--out_dir={out_dir}', *SAMPLE_ARGS, *args))
    return started[-1]

  found = {'train': finish(start(env, workdir, 'train.py', f'--config={TRAIN_CONFIG}', f'--config.out_dir={out_dir}',
                                 *config_flags(TINY_RUN | SCHEDULE)))}
  if found['train'].returncode != 0:
    return found
  found['before'] = snapshot(out_dir)
  try:
    first = sample('--start=ROMEO:')
    errors = {name: sample(*args) for name, (args, _) in ERRORS.items()}
    found['first'] = finish(first)
    (workdir / 'prompt.txt').write_text('ROMEO:', encoding='utf-8')
    later = {'again': sample('--start=ROMEO:'),
             'no_cache': sample('--start=ROMEO:', '--use_cache=False'),
             'file': sample(f'--start=FILE:{workdir / "prompt.txt"}')}
    found |= {name: finish(popen) for name, popen in (errors | later).items()}
    return found | {'after': snapshot(out_dir)}
  finally:
    for popen in started:  # none left running, whatever failed
      if popen.poll() is None:
        popen.kill()
        popen.communicate()


@pytest.fixture(scope='module', autouse=True)
def background(request, tmp_path_factory):
  """Starts run_all with the module's first test, in a thread, so that the
  subprocesses run while the in-process tests do; only when a selected test
  needs them. Yields (future, workdir), or None."""
  if not any('runs' in item.fixturenames for item in request.session.items if item.module is request.module):
    yield None
    return
  shakespeare = request.getfixturevalue('shakespeare')
  workdir = tmp_path_factory.mktemp('sample')
  make_workdir(workdir, shakespeare)
  cache = tmp_path_factory.getbasetemp() / 'jax-compilation-cache'
  cache.mkdir(exist_ok=True)
  env = os.environ | {'JAX_COMPILATION_CACHE_DIR': str(cache), 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
                      'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES': '0'}
  with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:  # leaving it waits for the runs
    yield pool.submit(run_all, env, workdir), workdir


@pytest.fixture(scope='module')
def runs(background):
  """{name: completed process} of run_all, and 'workdir', 'out_dir'."""
  future, workdir = background
  found = future.result()
  assert found['train'].returncode == 0, found['train'].stdout + found['train'].stderr
  return found | {'workdir': workdir, 'out_dir': workdir / 'out'}


@pytest.mark.slow
def test_samples_are_nanogpts_output(runs):
  proc = runs['first']
  assert proc.returncode == 0, proc.stdout + proc.stderr
  samples = proc.stdout.split(SEPARATOR)
  assert len(samples) == 3 and samples[-1] == ''  # each sample followed by its line of dashes
  for text in samples[:2]:
    assert text.startswith('ROMEO:')
    assert len(text) == len('ROMEO:') + 30  # new lines included: they are characters of the vocabulary
  assert samples[0] != samples[1]
  assert 'Traceback' not in proc.stderr
  assert 'tokens/s' in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize('name', ['again', 'no_cache', 'file'])
def test_same_samples_again_without_the_cache_and_from_a_file(runs, name):
  proc = runs[name]
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert proc.stdout == runs['first'].stdout


@pytest.mark.slow
def test_sampling_leaves_out_dir_as_it_was(runs):
  assert any(p.name.isdigit() for p in runs['out_dir'].iterdir())  # a checkpoint
  assert runs['after'] == runs['before']  # read only
  assert not (runs['workdir'] / 'missing').exists()  # not created


@pytest.mark.slow
@pytest.mark.parametrize('name', list(ERRORS))
def test_bad_sampling_flag_is_one_error_line(runs, name):
  proc = runs[name]
  assert proc.returncode == 1, proc.stdout + proc.stderr
  assert 'Traceback' not in proc.stderr
  assert proc.stdout == ''
  [line] = proc.stderr.splitlines()
  assert line.startswith('error: ')
  assert re.search(ERRORS[name][1], line), line


@pytest.mark.slow
def test_progress_on_a_terminal(runs):
  status, text = run_in_terminal([sys.executable, str(REPO_ROOT / 'sample.py'), f'--out_dir={runs["out_dir"]}',
                                  '--start=ROMEO:', '--num_samples=2', '--max_new_tokens=30'], cwd=runs['workdir'])
  assert status == 0, text
  assert 'sampling' in text and '100%' in text, text  # the bar, cleared when done
  assert text.count('ROMEO:') == 2 and text.count(SEPARATOR.strip()) == 2


@pytest.mark.slow
def test_memory_too_small_for_the_generation_is_one_line_before_the_weights_are_read(runs, monkeypatch, capsys):
  monkeypatch.setattr(memory, 'available_bytes', lambda: (16 * 10**9, 'MemAvailable'))
  monkeypatch.setattr(Checkpoints, 'params', lambda *args: pytest.fail('the weights were read'))
  # 10 samples of 10^9 int32 tokens: 40 GB for the token buffer alone
  assert sample.main(['sample.py', f'--out_dir={runs["out_dir"]}', '--max_new_tokens=1000000000']) == 1
  out, err = capsys.readouterr()
  assert out == ''
  assert err.splitlines() == ['error: not enough memory to sample 10 x 1,000,000,001 tokens: ~40.00 GB needed, '
                              '16.00 GB available (MemAvailable): lower --max_new_tokens or --num_samples']


@pytest.mark.slow
def test_the_memory_estimate_of_a_small_generation_is_small(runs, monkeypatch, capsys):
  monkeypatch.setattr(memory, 'available_bytes', lambda: (10**8, 'MemAvailable'))  # 100 MB
  assert sample.main(['sample.py', f'--out_dir={runs["out_dir"]}', *SAMPLE_ARGS, '--start=ROMEO:']) == 0
  assert capsys.readouterr().out == runs['first'].stdout


@pytest.fixture
def signals_fail_the_test():
  """SIGINT and SIGTERM, when sample.main does not handle them, fail the test
  (rather than end the test session); their handler, to compare with after main."""
  def fail(signum, frame):
    pytest.fail(f'{signal.Signals(signum).name} reached the test, not sample.main\'s handler')

  previous = {s: signal.signal(s, fail) for s in (signal.SIGINT, signal.SIGTERM)}
  yield fail
  for s, handler in previous.items():
    signal.signal(s, handler)


@pytest.mark.slow
def test_a_signal_while_sampling_prints_the_samples_so_far(runs, monkeypatch, capsys, signals_fail_the_test):
  """In process: SIGTERM arrives while the 6th token is drawn; the 6 tokens
  drawn are printed, as a finished sample would be."""
  real_track = generate_module.track

  def track_then_signal(steps, **kwargs):
    for i in real_track(steps, **kwargs):
      if i == 5:
        signal.raise_signal(signal.SIGTERM)
      yield i

  monkeypatch.setattr(generate_module, 'track', track_then_signal)
  assert sample.main(['sample.py', f'--out_dir={runs["out_dir"]}', *SAMPLE_ARGS, '--start=ROMEO:']) == 130
  out, err = capsys.readouterr()
  assert err.splitlines() == ['SIGTERM: stopped after 6 of 30 new tokens']
  finished = runs['first'].stdout.split(SEPARATOR)
  assert out.split(SEPARATOR) == [sample[:len('ROMEO:') + 6] for sample in finished[:2]] + ['']
  assert signal.getsignal(signal.SIGTERM) is signals_fail_the_test  # main's handler is gone with it


@pytest.mark.slow
def test_a_signal_while_the_checkpoint_is_read_waits_for_it_then_stops(runs, monkeypatch, capsys,
                                                                      signals_fail_the_test):
  real_params = Checkpoints.params

  def signal_then_read(self, step, like):
    signal.raise_signal(signal.SIGINT)
    return real_params(self, step, like)  # read whole: a stop never cuts it short

  monkeypatch.setattr(Checkpoints, 'params', signal_then_read)
  assert sample.main(['sample.py', f'--out_dir={runs["out_dir"]}', *SAMPLE_ARGS]) == 130
  assert capsys.readouterr() == ('', 'SIGINT: stopped before sampling\n')


def interrupt_while_sampling(runs, signum) -> tuple[int, str, str]:
  """sample.py with its stdout on a terminal, whose progress bar shows that
  tokens are being drawn: signum is sent once it passes 0%. Returns the exit
  status, stdout (terminal codes and the bar removed) and stderr."""
  main_fd, child_fd = pty.openpty()
  popen = subprocess.Popen([sys.executable, str(REPO_ROOT / 'sample.py'), f'--out_dir={runs["out_dir"]}',
                            '--start=ROMEO:', '--num_samples=2', '--max_new_tokens=1000000'],
                           cwd=runs['workdir'], stdin=subprocess.DEVNULL, stdout=child_fd, stderr=subprocess.PIPE,
                           text=True, env=os.environ | {'COLUMNS': '160', 'TERM': 'xterm'})
  os.close(child_fd)
  output, sent = b'', False
  try:
    while select.select([main_fd], [], [], 300)[0]:  # a guard against a hang, not a time limit on sampling
      try:
        chunk = os.read(main_fd, 65536)
      except OSError:  # the child closed the terminal
        break
      output += chunk
      if not sent and re.search(rb' [1-9]\d*%', output):  # 1% of 10^6 tokens: thousands drawn
        popen.send_signal(signum)
        sent = True
  finally:
    os.close(main_fd)
    if popen.poll() is None and not sent:
      popen.kill()
  _, stderr = popen.communicate(timeout=300)
  text = re.sub(r'\x1b\[[0-9;?]*[A-Za-z]', '', output.decode()).replace('\r\n', '\n')
  return popen.returncode, text[text.find('ROMEO:'):], stderr


@pytest.mark.slow
@pytest.mark.parametrize('name', ['SIGINT', 'SIGTERM'])
def test_a_signal_while_sampling_prints_the_samples_so_far_and_exits_130(runs, name):
  signum = signal.Signals[name]
  status, stdout, stderr = interrupt_while_sampling(runs, signum)
  assert status == 130, stdout + stderr
  assert 'Traceback' not in stderr
  [line] = stderr.splitlines()
  new_tokens = int(re.fullmatch(rf'{signum.name}: stopped after (\d+) of 1000000 new tokens', line)[1])
  assert 0 < new_tokens < 1000000
  samples = stdout.split(SEPARATOR)
  assert len(samples) == 3 and samples[-1] == ''  # each sample followed by its line of dashes
  for text in samples[:2]:
    assert text.startswith('ROMEO:') and len(text) == len('ROMEO:') + new_tokens
  assert samples[0] != samples[1]
