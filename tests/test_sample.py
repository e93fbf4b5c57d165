"""Sampling: the key/value cache against the full forward, the Generator
(seeds, cache or not, greedy, past block_size, token by token, compiled
ahead), sample_next's top_k and temperature (0: greedy), sample.py's config
file (jaxgpt's and nanoGPT's, in both spellings), and sample.py end to end on
a model trained by train.py, with its speed line, its clean errors, its
memory check, and Ctrl-C or SIGTERM while sampling (the samples so far
printed, exit 130).

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
import time

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
from jaxgpt.step import abstract_params, init_model

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


def reference_greedy(logits_at, prompt, max_new_tokens, block=BLOCK):
  """Greedy decoding with the full forward over the (cropped) context, token by token."""
  seq = prompt.copy()
  for _ in range(max_new_tokens):
    context = seq[:, -block:]
    window = np.zeros((seq.shape[0], block), np.int32)
    window[:, :context.shape[1]] = context
    next_token = logits_at(window, context.shape[1] - 1).argmax(axis=-1).astype(np.int32)
    seq = np.concatenate([seq, next_token[:, None]], axis=1)
  return seq


@pytest.mark.parametrize('use_cache', [True, False])
def test_top_k_1_is_greedy(greedy, jitted, use_cache):
  expected = reference_greedy(jitted['logits_at'], PROMPT, NEW)
  for seed in (0, 1):  # no randomness left
    np.testing.assert_array_equal(greedy(PROMPT, NEW, seed=seed, use_cache=use_cache), expected)


@pytest.mark.parametrize('top_k', [None, 200])
def test_temperature_0_is_greedy(tiny, jitted, top_k):
  _, graphdef, params = tiny
  generate = Generator(graphdef, params, CONFIG, temperature=0.0, top_k=top_k)
  expected = reference_greedy(jitted['logits_at'], PROMPT, NEW)
  assert (expected[0, 3:] != expected[0, 3]).any()  # not one token over and over: the argmax means something
  for use_cache in (True, False):
    for seed in (0, 1, 1337):  # no randomness left
      np.testing.assert_array_equal(generate(PROMPT, NEW, seed=seed, use_cache=use_cache), expected)


@pytest.fixture
def compiles():
  """The names of jax's compile events (tracing, lowering, XLA) from here on, as a list that grows."""
  events = []

  def listen(name, seconds, **kwargs):
    if name.startswith('/jax/core/compile/'):
      events.append(name)

  jax.monitoring.register_event_duration_secs_listener(listen)
  yield events
  jax.monitoring.unregister_event_duration_listener(listen)


# (prompt length, new tokens, use_cache), block 16: through the cache, then past it; the cache only; a window
# only; a prompt of block_size (one token through the cache, the rest windows); a prompt past block_size;
# one token
COMPILE_CASES = [(3, 30, True), (3, 30, False), (3, 5, True), (16, 4, True), (20, 3, True), (15, 1, True)]


def placed(params, placement):
  """params as they are (free to move), committed to the device, or on a mesh (as read from a checkpoint)."""
  if placement == 'device':
    return jax.device_put(params, jax.devices()[0])
  if placement == 'mesh':
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ('data',))
    return jax.device_put(params, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  return params


@pytest.mark.parametrize('placement', ['free', 'device', 'mesh'])
@pytest.mark.parametrize('length, new, use_cache', COMPILE_CASES)
def test_compile_leaves_nothing_for_the_generation_to_compile(tiny, compiles, length, new, use_cache, placement):
  _, graphdef, params = tiny
  params = placed(params, placement)  # the outputs of every program are placed as the weights
  prompt = tokens(4, (2, length))
  generate = Generator(graphdef, params, CONFIG, temperature=0.8, top_k=5)  # its own programs, none compiled
  generate.compile(prompt, new, use_cache=use_cache)
  assert compiles  # it compiled
  compiles.clear()
  ahead = generate(prompt, new, seed=3, use_cache=use_cache)
  assert compiles == []
  # the same tokens as a generator that compiles as it goes, which does compile then
  fresh = Generator(graphdef, params, CONFIG, temperature=0.8, top_k=5)
  np.testing.assert_array_equal(fresh(prompt, new, seed=3, use_cache=use_cache), ahead)
  assert compiles


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


def test_sample_next_temperature_0_is_the_argmax_whatever_the_key():
  logits = jax.random.normal(jax.random.key(0), (4, 65))
  keys = jax.random.split(jax.random.key(1), 50)
  for top_k in (None, 1, 200):
    drawn = jax.vmap(lambda k: sample_next(logits, k, 0.0, top_k))(keys)  # (50, 4)
    np.testing.assert_array_equal(np.asarray(drawn), np.broadcast_to(np.argmax(logits, -1), (50, 4)))


def test_sample_next_with_a_tiny_temperature_is_the_argmax():
  # logits / 1e-40 overflow float32: every positive logit would be +inf, and the draw the first of them
  logits = jax.random.normal(jax.random.key(0), (4, 65))
  drawn = sample_next(logits, jax.random.key(1), 1e-40, None)
  np.testing.assert_array_equal(np.asarray(drawn), np.argmax(logits, -1))


# sample.py's config file

JAXGPT_CONFIG = REPO_ROOT / 'configs' / 'shakespeare_char.py'
OUT_DIR = 'out-shakespeare-char'  # the out_dir of jaxgpt's configs/shakespeare_char.py and of nanoGPT's recipe


def spelled(spelling, path, *flags):
  """sample.py's argv naming the config file at path, then flags (--key=value), in nanoGPT's or jaxgpt's spelling."""
  if spelling == 'nanogpt':
    return ['sample.py', str(path), *flags]
  overrides = [flag.replace('--', '--config.', 1) if '=' in flag else flag for flag in flags]  # --help as it is
  return ['sample.py', f'--config={path}', *overrides]


@pytest.mark.parametrize('spelling', ['nanogpt', 'jaxgpt'])
@pytest.mark.parametrize('whose', ['jaxgpt', 'nanogpt'])
def test_a_training_config_gives_sampling_its_out_dir(nanogpt_dir, spelling, whose):
  path = JAXGPT_CONFIG if whose == 'jaxgpt' else nanogpt_dir / 'config' / 'train_shakespeare_char.py'
  c = sample.parse_sample_config(spelled(spelling, path, '--start=ROMEO:'))
  # the training's out_dir, and nothing else of it: init_from ('scratch' in jaxgpt's) stays resume
  assert c.to_dict() == sample.sample_config().to_dict() | dict(out_dir=OUT_DIR, start='ROMEO:')
  assert sample.parse_sample_config(spelled(spelling, path, '--out_dir=elsewhere', '--seed=5')).to_dict() == \
      sample.sample_config().to_dict() | dict(out_dir='elsewhere', seed=5)  # the flags override the file


@pytest.mark.parametrize('whose', ['jaxgpt', 'nanogpt'])
def test_a_finetuning_config_samples_its_out_dir_not_the_gpt2_it_started_from(nanogpt_dir, whose):
  path = (REPO_ROOT / 'configs' if whose == 'jaxgpt' else nanogpt_dir / 'config') / 'finetune_shakespeare.py'
  c = sample.parse_sample_config(['sample.py', str(path)])
  assert (c.init_from, c.out_dir) == ('resume', 'out-shakespeare')  # the file says init_from = 'gpt2-xl'
  c = sample.parse_sample_config(['sample.py', str(path), '--init_from=gpt2'])  # unless the user asks
  assert (c.init_from, c.out_dir) == ('gpt2', 'out-shakespeare')


@pytest.mark.parametrize('name, model', [('eval_gpt2.py', 'gpt2'), ('eval_gpt2_medium.py', 'gpt2-medium'),
                                         ('eval_gpt2_large.py', 'gpt2-large'), ('eval_gpt2_xl.py', 'gpt2-xl')])
@pytest.mark.parametrize('spelling', ['nanogpt', 'jaxgpt'])
def test_an_eval_config_samples_the_gpt2_it_names(nanogpt_dir, spelling, name, model):
  # nanoGPT's eval configs evaluate a GPT-2 (eval_only, init_from) and train nothing, so nothing is in out_dir:
  # nanoGPT's sample.py, run with one, samples that GPT-2
  path = nanogpt_dir / 'config' / name
  c = sample.parse_sample_config(spelled(spelling, path, '--start=ROMEO:'))
  assert c.to_dict() == sample.sample_config().to_dict() | dict(init_from=model, start='ROMEO:')
  c = sample.parse_sample_config(spelled(spelling, path, '--init_from=resume', '--out_dir=mine'))  # unless asked
  assert c.to_dict() == sample.sample_config().to_dict() | dict(init_from='resume', out_dir='mine')


EVAL_CONFIG = """from jaxgpt.config import base_config

def get_config():
  c = base_config()
  c.eval_only = {eval_only}
  c.init_from = {init_from!r}
  c.out_dir = 'out-eval'
  return c
"""


@pytest.mark.parametrize('eval_only, init_from, sampled', [
    (True, 'gpt2-large', 'gpt2-large'),
    (True, 'scratch', 'resume'),  # evaluates a random model, never sampled: out_dir's checkpoint, as ever
    (True, 'resume', 'resume'),  # evaluates out_dir's checkpoint: sample it
    (False, 'gpt2-large', 'resume'),  # finetunes gpt2-large into out_dir: sample what it wrote
])
def test_a_jaxgpt_config_gives_its_gpt2_only_when_it_trains_nothing(tmp_path, eval_only, init_from, sampled):
  path = tmp_path / 'eval.py'
  path.write_text(EVAL_CONFIG.format(eval_only=eval_only, init_from=init_from))
  c = sample.parse_sample_config(['sample.py', str(path)])
  assert (c.init_from, c.out_dir) == (sampled, 'out-eval')


NANOGPT_STYLE = """import math
out_dir = 'out-mine'
device = 'cuda'
dtype = 'bfloat16'
compile = False
seed = 5
gpt2_dir = 'gpt2-folder'
init_from = 'gpt2-xl'
batch_size = 4  # train.py's alone
learning_rate = 1e-3 / math.sqrt(2)
start = 'ROMEO:'  # sampling's alone
temperature = 0
"""

GET_CONFIG_STYLE = """from jaxgpt.config import base_config

def get_config():
  c = base_config()
  c.out_dir = 'out-mine'
  c.device = 'cuda'
  c.dtype = 'bfloat16'
  c.compile = False
  c.seed = 5
  c.gpt2_dir = 'gpt2-folder'
  c.init_from = 'gpt2-xl'
  c.batch_size = 4
  c.checkpoint = 'latest'  # train.py's default, not sampling's: not set
  return c
"""


@pytest.mark.parametrize('style', ['nanogpt', 'get_config'])
def test_config_file_sets_every_key_sampling_shares_with_training(tmp_path, style):
  path = tmp_path / 'mine.py'
  path.write_text(NANOGPT_STYLE if style == 'nanogpt' else GET_CONFIG_STYLE)
  c = sample.parse_sample_config(['sample.py', str(path)])
  shared = dict(out_dir='out-mine', device='cuda', dtype='bfloat16', compile=False, seed=5, gpt2_dir='gpt2-folder')
  own = dict(start='ROMEO:', temperature=0.0) if style == 'nanogpt' else {}
  assert c.to_dict() == sample.sample_config().to_dict() | shared | own
  assert type(c.temperature) is float


# name: (the config file, or None for none; the arguments after it; the one error line)
SAMPLE_KEYS = ', '.join(sorted(sample.sample_config()))
NOT_FOUND = 'error: config file nope.py not found: pass an existing one, e.g. --config=configs/shakespeare_char.py'
CONFIG_ERRORS = {
    'missing file': (None, ['nope.py'], NOT_FOUND),
    'missing file, jaxgpt spelling': (None, ['--config=nope.py'], NOT_FOUND),
    'two files': (None, ['a.py', '--config=b.py'], 'error: several config files (a.py, b.py): pass one, and other '
                                                     'keys as --config.key=value'),
    'a typo in the file': ("out_dri = 'out'\n", [], 'error: {path} sets out_dri, which is neither a sampling nor a '
                                                      'training key (did you mean out_dir?)'),
    'a type in the file': ("seed = '5'\n", [], "error: {path}: seed = '5' is a string: sampling takes an int, "
                                               'e.g. seed = 1337'),
    'an unknown flag': (JAXGPT_CONFIG, ['--bogus=1'], f"error: unknown config key 'bogus': valid keys are "
                                                      f'{SAMPLE_KEYS}'),
    'a training-only flag': (JAXGPT_CONFIG, ['--batch_size=12'], "error: unknown config key 'batch_size': valid keys "
                                                                 f'are {SAMPLE_KEYS}'),
}


@pytest.mark.parametrize('name', list(CONFIG_ERRORS))
def test_a_bad_config_file_or_flag_is_one_error_line(tmp_path, monkeypatch, capsys, name):
  source, args, line = CONFIG_ERRORS[name]
  monkeypatch.chdir(tmp_path)
  if isinstance(source, str):
    (tmp_path / 'mine.py').write_text(source)
    args = ['mine.py', *args]
  elif source is not None:
    args = [str(source), *args]
  assert sample.main(['sample.py', *args]) == 1
  assert capsys.readouterr() == ('', line.format(path='mine.py') + '\n')


@pytest.mark.parametrize('spelling', ['nanogpt', 'jaxgpt'])
def test_help_shows_the_values_the_config_file_sets(spelling, capsys):
  assert sample.main(spelled(spelling, JAXGPT_CONFIG, '--help')) == 0
  out = capsys.readouterr().out
  assert f'The flags, as {JAXGPT_CONFIG} sets them:' in out
  assert f"  --config.out_dir, --out_dir = '{OUT_DIR}'" in out.splitlines()
  assert "  --config.init_from, --init_from = 'resume'" in out.splitlines()


# sample.py end to end

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
    'temperature_negative': (['--temperature=-0.5'], r'temperature=-0\.5 must be > 0 .* or --temperature=0 to '
                                                      r'take the likeliest token each time \(greedy\)$'),
    'missing_config_file': (['nope.py'], r'^error: config file nope\.py not found'),
    'top_k_0': (['--top_k=0'], r'top_k=0 must be >= 1'),
    'missing_out_dir': (['--out_dir=missing'], r'out_dir .*missing does not exist'),
    'unknown_flag': (['--bogus=1'], r'bogus'),
}


def run_all(env, workdir, nanogpt_dir):
  """train.py, 20 iterations, into configs/shakespeare_char.py's out_dir; then
  sample.py on it: once alone (it fills the compilation cache), with the
  ERRORS runs beside it; then again, without the key/value cache, with the
  prompt from a file, through the training's config file (jaxgpt's, and
  nanoGPT's own, each in its spelling), and greedily with two seeds, side by
  side. Returns {name: completed process}, and snapshots of out_dir before
  and after sampling."""
  out_dir = workdir / OUT_DIR
  started = []

  def sample(*args, out_dir_flag=True):
    started.append(start(env, workdir, 'sample.py', *[f'--out_dir={out_dir}'] * out_dir_flag, *args))
    return started[-1]

  found = {'train': finish(start(env, workdir, 'train.py', f'--config={JAXGPT_CONFIG}', f'--config.out_dir={out_dir}',
                                 *config_flags(TINY_RUN | SCHEDULE)))}
  if found['train'].returncode != 0:
    return found
  found['before'] = snapshot(out_dir)
  try:
    first = sample(*SAMPLE_ARGS, '--start=ROMEO:')
    errors = {name: sample(*SAMPLE_ARGS, *args) for name, (args, _) in ERRORS.items()}
    found['first'] = finish(first)
    (workdir / 'prompt.txt').write_text('ROMEO:', encoding='utf-8')
    later = {'again': sample(*SAMPLE_ARGS, '--start=ROMEO:'),
             'no_cache': sample(*SAMPLE_ARGS, '--start=ROMEO:', '--use_cache=False'),
             'file': sample(*SAMPLE_ARGS, f'--start=FILE:{workdir / "prompt.txt"}'),
             'nanogpt_config': sample(*spelled('nanogpt', nanogpt_dir / 'config' / 'train_shakespeare_char.py',
                                               *SAMPLE_ARGS, '--start=ROMEO:')[1:], out_dir_flag=False),
             'jaxgpt_config': sample(*spelled('jaxgpt', JAXGPT_CONFIG, *SAMPLE_ARGS, '--start=ROMEO:')[1:],
                                     out_dir_flag=False),
             'greedy': sample('--num_samples=2', '--max_new_tokens=30', '--start=ROMEO:', '--temperature=0',
                              '--seed=7'),
             'greedy_other_seed': sample('--num_samples=2', '--max_new_tokens=30', '--start=ROMEO:',
                                         '--temperature=0', '--seed=8')}
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
  nanogpt_dir = request.getfixturevalue('nanogpt_dir')
  workdir = tmp_path_factory.mktemp('sample')
  make_workdir(workdir, shakespeare)
  cache = tmp_path_factory.getbasetemp() / 'jax-compilation-cache'
  cache.mkdir(exist_ok=True)
  env = os.environ | {'JAX_COMPILATION_CACHE_DIR': str(cache), 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
                      'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES': '0'}
  with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:  # leaving it waits for the runs
    yield pool.submit(run_all, env, workdir, nanogpt_dir), workdir


@pytest.fixture(scope='module')
def runs(background):
  """{name: completed process} of run_all, and 'workdir', 'out_dir'."""
  future, workdir = background
  found = future.result()
  assert found['train'].returncode == 0, found['train'].stdout + found['train'].stderr
  return found | {'workdir': workdir, 'out_dir': workdir / OUT_DIR}


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


SPEED_LINE = re.compile(r'([\d,]+) tokens/s generating 2 x 30 tokens in (\d+\.\d\d) s \(compiling took \d+\.\d s '
                        rf'before\), from step (10|20) of .*/{OUT_DIR}, (with|without) the key/value cache')


@pytest.mark.slow
@pytest.mark.parametrize('name', ['first', 'no_cache'])
def test_the_speed_line_is_the_generations_compile_apart(runs, name):
  [line] = runs[name].stderr.splitlines()
  speed = SPEED_LINE.fullmatch(line)
  assert speed, line
  assert speed[4] == ('with' if name == 'first' else 'without')
  rate, seconds = int(speed[1].replace(',', '')), float(speed[2])
  assert abs(rate * seconds - 60) <= rate * 0.005 + seconds * 0.5 + 1e-9, line  # 60 tokens over the seconds shown


@pytest.mark.slow
@pytest.mark.parametrize('name', ['again', 'no_cache', 'file', 'nanogpt_config', 'jaxgpt_config'])
def test_same_samples_again_without_the_cache_from_a_file_and_through_the_config_file(runs, name):
  proc = runs[name]
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert proc.stdout == runs['first'].stdout


@pytest.mark.slow
def test_temperature_0_samples_the_trained_models_argmax_whatever_the_seed(runs):
  greedy = runs['greedy']
  assert greedy.returncode == 0, greedy.stdout + greedy.stderr
  c = sample.parse_sample_config(['sample.py', f'--out_dir={runs["out_dir"]}'])
  config, tokenizer, params, prompt, _ = sample.load_model(c, 'ROMEO:')
  graphdef = abstract_params(config)[0]
  logits_at = jax.jit(lambda p, idx, index: nnx.merge(graphdef, p)(idx, index=index)[0])
  # 6 + 30 tokens: past block_size 32, where the context is cropped
  expected = reference_greedy(lambda idx, index: np.asarray(logits_at(params, idx, index)),
                              np.array([prompt], np.int32), 30, config.block_size)
  text = tokenizer.decode(expected[0].tolist())
  assert greedy.stdout == f'{text}{SEPARATOR}{text}{SEPARATOR}'  # every sample the same
  assert runs['greedy_other_seed'].stdout == greedy.stdout
  assert runs['first'].stdout != greedy.stdout  # at temperature 0.8, samples of their own


@pytest.mark.slow
def test_the_generation_timed_compiles_nothing(runs, monkeypatch, compiles, capsys):
  """In process: sample.py compiles its programs before the timed
  generation (Generator.stream), which then compiles nothing."""
  real_stream = Generator.stream
  before, during = [], []

  def stream(self, *args, **kwargs):
    before.extend(compiles)
    compiles.clear()
    yield from real_stream(self, *args, **kwargs)
    during.extend(compiles)

  monkeypatch.setattr(Generator, 'stream', stream)
  assert sample.main(['sample.py', f'--out_dir={runs["out_dir"]}', *SAMPLE_ARGS, '--start=ROMEO:']) == 0
  out, err = capsys.readouterr()
  assert out == runs['first'].stdout and SPEED_LINE.fullmatch(err.strip()), err
  assert before and during == []


@pytest.mark.slow
def test_help_names_both_config_file_spellings_and_temperature_0(nanogpt_dir):
  proc = subprocess.run([sys.executable, str(REPO_ROOT / 'sample.py'),
                         str(nanogpt_dir / 'config' / 'train_shakespeare_char.py'), '--help'],
                        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
  assert (proc.returncode, proc.stderr) == (0, ''), proc.stdout + proc.stderr
  lines = proc.stdout.splitlines()
  assert lines[:3] == [
      'usage: python sample.py [--KEY=VALUE ...]     (or --config.KEY=VALUE, the same)',
      "       python sample.py FILE [--KEY=VALUE ...]     (nanoGPT's spelling: a config file, then the flags)",
      "       python sample.py --config=FILE [--config.KEY=VALUE ...]     (train.py's spelling of the same)"]
  assert '--temperature=0 takes the likeliest token each time' in ' '.join(lines)
  assert f"  --config.out_dir, --out_dir = '{OUT_DIR}'" in lines  # as nanoGPT's file sets it
  temperature = lines.index('  --config.temperature, --temperature = 0.8')
  assert '0 = greedy' in lines[temperature + 1]


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
  assert 'compiling' in text and 'sampling' in text and '100%' in text, text  # the spinner, then the bar
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


SAVING_EVERY_ITERATION = dict(eval_interval=1, eval_iters=1, always_save_checkpoint=True, log_interval=1,
                              max_iters=100000, dropout=0.0)


@pytest.mark.slow
def test_samples_read_while_a_training_saves_every_iteration(tmp_path, shakespeare):
  """Each save deletes the checkpoint it no longer keeps, maybe the one a
  sample.py chose or reads: it chooses again, and says nothing of it. Four
  at a time, and the listing, while the training saves (each reads for a
  while: saves come every few tens of ms; checked to fail, at least one of
  them, when a read does not choose again)."""
  workdir = make_workdir(tmp_path, shakespeare)
  out_dir = workdir / 'out'
  training = start(os.environ, workdir, 'train.py', f'--config={JAXGPT_CONFIG}', f'--config.out_dir={out_dir}',
                   *config_flags(TINY_RUN | SAVING_EVERY_ITERATION))
  try:
    deadline = time.monotonic() + 300
    while len([p for p in out_dir.glob('*') if p.name.isdigit()]) < 2:  # saving: the best and the latest
      assert training.poll() is None and time.monotonic() < deadline, finish(training).stderr
      time.sleep(0.2)
    readers = [start(os.environ, workdir, 'sample.py', f'--out_dir={out_dir}', f'--checkpoint={which}',
                     '--num_samples=1', '--max_new_tokens=10', '--start=ROMEO:')
               for which in ('latest', 'best', 'latest', 'best')]
    listing = subprocess.Popen([sys.executable, '-m', 'jaxgpt.checkpoint', str(out_dir)], cwd=workdir,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for proc in map(finish, readers):
      assert proc.returncode == 0, proc.stderr
      assert 'ROMEO:' in proc.stdout, proc.stdout
      assert 'Traceback' not in proc.stderr and 'Event loop is closed' not in proc.stderr, proc.stderr
    listed = finish(listing)
    assert listed.returncode == 0 and listed.stderr == '', listed.stderr
    assert 'best' in listed.stdout and 'latest' in listed.stdout, listed.stdout
    assert training.poll() is None  # it saved all along
  finally:
    training.send_signal(signal.SIGINT)
    stopped = finish(training)
  assert stopped.returncode == 0, stopped.stderr
