"""Checkpoints: exact resume (dropout on), what orbax keeps, and clean errors
for every way out_dir can be wrong.

The train.py runs are subprocesses, as in test_train_e2e.py, each with
cwd=<its folder> holding data/shakespeare_char/input.txt. They are shared by
module-scoped fixtures and started side by side (Popen) where independent, and
share a jax compilation cache (in the session's tmp folder, so never stale):
the same programs, compiled once.
"""

import json
import os
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import REPO_ROOT, TINY_RUN, config_flags, finish, make_workdir, snapshot
from jaxgpt.checkpoint import CheckpointError, Checkpoints
from jaxgpt.model import GPTConfig
from jaxgpt.step import init_model

CONFIG = REPO_ROOT / 'configs' / 'shakespeare_char.py'
# two threads, each shard drawing its own dropout masks: exact resume holds for the sharded step
SCHEDULE = dict(dropout=0.1, eval_interval=10, always_save_checkpoint=True, log_interval=2, eval_iters=3,
                warmup_iters=5, lr_decay_iters=40, threads=2)
# nanoGPT's log lines; the loss text, not the time
LOSS_LINE = re.compile(r'^(iter|step) (\d+): (loss \d+\.\d{4}|train loss \d+\.\d{4}, val loss \d+\.\d{4})')


@pytest.fixture(scope='module')
def env(tmp_path_factory):
  """The subprocesses' environment: a persistent jax compilation cache for
  every program (the tiny model's compiles cost more than its training)."""
  cache = tmp_path_factory.getbasetemp() / 'jax-compilation-cache'
  cache.mkdir(exist_ok=True)
  return os.environ | {'JAX_COMPILATION_CACHE_DIR': str(cache), 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
                       'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES': '0'}


def start_train(env, workdir, out_dir, **settings):
  """Starts train.py on the tiny run, cwd=workdir; finish() waits for it."""
  args = config_flags(TINY_RUN | SCHEDULE | settings | {'out_dir': out_dir})
  return subprocess.Popen([sys.executable, str(REPO_ROOT / 'train.py'), f'--config={CONFIG}', *args],
                          cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def loss_lines(stdout, since):
  """{('iter' | 'step', N): the loss text} for N >= since."""
  found = {}
  for m in map(LOSS_LINE.match, stdout.splitlines()):
    if m and int(m[2]) >= since:
      assert (m[1], int(m[2])) not in found
      found[m[1], int(m[2])] = m[3]
  return found


@pytest.fixture(scope='module')
def runs(tmp_path_factory, shakespeare, env):
  """Every train.py run of this module, started side by side where they can be:

  A: 40 iterations in one run, and B: 20 iterations, with the ERRORS cases
     that need no checkpoint; B's out_dir is then copied to `saved`;
  B resumed to 40 in another process, same out_dir, with the ERRORS cases
     made from copies of `saved`.

  Returns {'a', 'b1', 'b2': the processes, 'out_a', 'out_b': out_dirs,
  'errors': {name: (process, out_dir, snapshot of out_dir before, or None)}}."""
  root = tmp_path_factory.mktemp('runs')
  started, errors = [], {}

  def launch(workdir, out_dir, **settings):
    started.append(start_train(env, workdir, out_dir, **settings))
    return started[-1]

  def start_error(name):
    setup, settings, _ = ERRORS[name]
    out_dir = root / name
    if setup in ('copy', 'corrupt', 'foreign'):
      shutil.copytree(root / 'saved', out_dir)
      {'corrupt': corrupt_params, 'foreign': foreign_meta}.get(setup, lambda _: None)(out_dir)
    elif setup == 'empty':
      out_dir.mkdir()
    elif setup == 'ckpt.pt':
      put_nanogpt_checkpoint(out_dir)
    before = snapshot(out_dir) if out_dir.exists() else None
    workdir = make_workdir(root / f'work-{name}', shakespeare)  # its own: data/ is prepared on first use
    errors[name] = (launch(workdir, out_dir, **settings), out_dir, before)

  try:
    work_a = make_workdir(root / 'a', shakespeare)
    work_b = make_workdir(root / 'b', shakespeare)
    a = launch(work_a, work_a / 'out', max_iters=40)
    b1 = launch(work_b, work_b / 'out', max_iters=20)
    early = [name for name in ERRORS if ERRORS[name][0] in ('empty', 'ckpt.pt', 'missing')]
    for name in early:
      start_error(name)
    b1 = finish(b1)
    assert b1.returncode == 0, b1.stdout + b1.stderr
    shutil.copytree(work_b / 'out', root / 'saved')
    b2 = launch(work_b, work_b / 'out', max_iters=40, init_from='resume')
    for name in ERRORS:
      if name not in early:
        start_error(name)
    return dict(a=finish(a), b1=b1, b2=finish(b2), out_a=work_a / 'out', out_b=work_b / 'out',
                errors={name: (finish(popen, timeout=120), out_dir, before)
                        for name, (popen, out_dir, before) in errors.items()})
  finally:
    for popen in started:  # none left running, whatever failed
      if popen.poll() is None:
        popen.kill()
        popen.communicate()


@pytest.mark.slow
def test_runs_succeed(runs):
  for name in ('a', 'b1', 'b2'):
    assert runs[name].returncode == 0, runs[name].stdout + runs[name].stderr
  assert 'Resuming training from' in runs['b2'].stdout
  assert 'Resuming training from' not in runs['a'].stdout + runs['b1'].stdout


@pytest.mark.slow
def test_resumed_run_logs_what_the_uninterrupted_run_logs(runs):
  # the same batches (drawn from seed and iter_num), the same dropout masks
  # (keys from seed, iter_num and shard), the same optimizer state
  # (B's first leg saved its final state, before iteration 21: B resumes there)
  uninterrupted = loss_lines(runs['a'].stdout, since=21)
  resumed = loss_lines(runs['b2'].stdout, since=0)
  assert sorted(uninterrupted) == sorted([('step', n) for n in (30, 40)] + [('iter', n) for n in range(22, 41, 2)])
  assert resumed == uninterrupted
  # and the first leg agrees with the uninterrupted run up to 20
  assert loss_lines(runs['b1'].stdout, since=0) == {k: v for k, v in loss_lines(runs['a'].stdout, since=0).items()
                                                     if k[1] <= 20}


@pytest.mark.slow
def test_resumed_weights_are_bit_identical(runs):
  weights = []
  for out_dir in (runs['out_a'], runs['out_b']):
    checkpoints = Checkpoints(out_dir, read_only=True)
    assert checkpoints.latest_step() == 41  # the final state
    meta = checkpoints.meta(41)
    assert meta['iter_num'] == 41
    like = init_model(GPTConfig(**meta['model_args']), 0)[2]
    weights.append(checkpoints.params(41, like))
    checkpoints.close()
  leaves_a, tree_a = jax.tree.flatten(weights[0])
  leaves_b, tree_b = jax.tree.flatten(weights[1])
  assert tree_a == tree_b
  assert len(leaves_a) > 0
  for leaf_a, leaf_b in zip(leaves_a, leaves_b):
    assert np.array_equal(np.asarray(leaf_a), np.asarray(leaf_b))
  # and training changed them: not two untouched inits
  init = jax.tree.leaves(init_model(GPTConfig(**meta['model_args']), 0)[2])
  assert not all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(leaves_a, init))


def test_keeps_the_latest_and_the_best(tmp_path):
  out_dir = tmp_path / 'out'
  checkpoints = Checkpoints(out_dir)
  for step, val_loss in [(1, 3.0), (2, 2.0), (3, 2.5)]:
    params = {'w': np.full((2, 3), step, np.float32), 'b': np.arange(3, dtype=np.float32) * step}
    checkpoints.save(step, params, {'mu': {'w': np.zeros((2, 3), np.float32)}},
                     {'iter_num': step, 'val_loss': val_loss, 'vocab': ['a', 'b']})
  checkpoints.close()

  reopened = Checkpoints(out_dir, read_only=True)
  assert reopened.manager.all_steps() == [2, 3]
  assert reopened.best_step() == 2
  assert reopened.latest_step() == 3
  meta = reopened.meta(2)
  assert meta['val_loss'] == 2.0 and meta['iter_num'] == 2 and meta['vocab'] == ['a', 'b']
  like = {'w': np.zeros((2, 3), np.float32), 'b': np.zeros(3, np.float32)}
  params = reopened.params(2, like)
  assert np.array_equal(params['w'], np.full((2, 3), 2, np.float32))
  assert np.array_equal(params['b'], np.arange(3, dtype=np.float32) * 2)
  reopened.close()
  assert sorted(p.name for p in out_dir.iterdir()) == ['2', '3']


def test_no_checkpoint_when_empty(tmp_path):
  (tmp_path / 'out').mkdir()
  with pytest.raises(CheckpointError, match='no checkpoint in'):
    Checkpoints(tmp_path / 'out', read_only=True).latest_step()


def corrupt_params(out_dir):
  """Garbage in every file under <step>/params/, the folders kept."""
  files = [p for p in out_dir.glob('*/params/**/*') if p.is_file()]
  assert files
  for p in files:
    p.write_bytes(b'not a checkpoint')


def foreign_meta(out_dir):
  """The meta JSON of every step replaced by '{}'."""
  files = [p for p in out_dir.glob('*/meta/*') if p.is_file() and p.name != 'commit_success.txt']
  assert files
  for p in files:
    json.loads(p.read_text())  # it is the JSON
    p.write_text('{}')


def put_nanogpt_checkpoint(out_dir):
  out_dir.mkdir()
  (out_dir / 'ckpt.pt').write_bytes(b'\x80\x02 a torch checkpoint')


# name: (how out_dir is set up from a copy of a saved run (None: empty, absent: missing),
#        the train.py settings, what the one error line says)
ERRORS = {
    'conflicting_override': ('copy', dict(init_from='resume', n_layer=3, max_iters=40),
                             r'--config\.n_layer=3 conflicts with the checkpoint .* n_layer=2'),
    'resume_empty_out_dir': ('empty', dict(init_from='resume', max_iters=40), r'no checkpoint in'),
    'resume_nanogpt_out_dir': ('ckpt.pt', dict(init_from='resume', max_iters=40), r'no checkpoint in'),
    'resume_missing_out_dir': ('missing', dict(init_from='resume', max_iters=40), r'does not exist'),
    'scratch_over_checkpoints': ('copy', dict(max_iters=40), r'init_from=resume'),
    'corrupt_params': ('corrupt', dict(init_from='resume', max_iters=40), r'cannot be read .*corrupt'),
    'foreign_meta': ('foreign', dict(init_from='resume', max_iters=40), r'not a jaxgpt-checkpoint'),
}


@pytest.mark.slow
@pytest.mark.parametrize('name', ERRORS)
def test_bad_out_dir_is_one_error_line_and_changes_nothing(runs, name):
  proc, out_dir, before = runs['errors'][name]
  assert proc.returncode == 1, proc.stdout + proc.stderr
  assert 'Traceback' not in proc.stderr
  [line] = proc.stderr.splitlines()
  assert line.startswith('error: ')
  assert re.search(ERRORS[name][2], line), line
  if before is None:
    assert not out_dir.exists()  # not created
  else:
    assert snapshot(out_dir) == before
  assert 'saving checkpoint' not in proc.stdout


def test_a_reader_chooses_again_when_a_writer_rotates_its_checkpoint_away(tmp_path):
  """sample.py run while a training saves: the checkpoint it chose may be
  deleted before it is read. It reads the one kept in its place, and never
  calls that whole checkpoint corrupt."""
  out_dir = tmp_path / 'out'
  like = {'w': np.zeros(3, np.float32)}

  def save(checkpoints, step, val_loss):
    checkpoints.save(step, {'w': np.full(3, step, np.float32)}, {'mu': np.zeros(3, np.float32)},
                     {'iter_num': step, 'val_loss': val_loss})

  with Checkpoints(out_dir) as writer:
    save(writer, 1, 2.0)  # the best
    save(writer, 2, 3.0)  # the latest
  reader = Checkpoints(out_dir, read_only=True)
  assert reader.latest_step() == 2
  with Checkpoints(out_dir) as writer:
    save(writer, 3, 4.0)  # the latest now: 2 is deleted
  assert not (out_dir / '2').exists()
  step, params = reader.read('latest', lambda step: (step, reader.params(step, like)))
  assert step == 3 and np.array_equal(params['w'], np.full(3, 3, np.float32))
  reader.close()


def test_a_second_writer_on_out_dir_is_refused_with_its_holder_named(tmp_path):
  out_dir = tmp_path / 'out'
  with Checkpoints(out_dir):
    with pytest.raises(CheckpointError, match=rf'^another run is writing into {re.escape(str(out_dir))}: wait for '
                                              'it to finish, or write into another out_dir$'):
      Checkpoints(out_dir)
    Checkpoints(out_dir, read_only=True).close()  # readers take no lock
  Checkpoints(out_dir).close()  # the lock went with its writer
