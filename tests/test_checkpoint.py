"""Checkpoints: exact resume (dropout on), what orbax keeps, and clean errors
for every way out_dir can be wrong.

The train.py runs are subprocesses, as in test_train_e2e.py, each with
cwd=<its folder> holding data/shakespeare_char/input.txt. They are shared by
module-scoped fixtures and started side by side (Popen) where independent, and
share a jax compilation cache (in the session's tmp folder, so never stale):
the same programs, compiled once.
"""

import asyncio
import datetime
import gc
import json
import os
import re
import shutil
import subprocess
import sys
import threading

import jax
import numpy as np
import pytest
from orbax.checkpoint._src.checkpointers import async_checkpointer

from conftest import REPO_ROOT, STEP_LINE, TINY_RUN, config_flags, finish, make_workdir, parse_log, snapshot
from jaxgpt import checkpoint, cli
from jaxgpt.checkpoint import CheckpointError, Checkpoints, holds_checkpoints
from jaxgpt.model import GPTConfig
from jaxgpt.step import init_model
from jaxgpt.train import keep_records_before

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

  A: 40 iterations in one run, and B: 20 iterations; B's out_dir is then
     copied to `saved` (the ERRORS cases' checkpoints, run in process);
  B resumed to 40 in another process, same out_dir, with the FROM_SAVED
     runs, each on a copy of `saved`.

  Returns {'a', 'b1', 'b2': the processes, 'out_a', 'out_b': out_dirs,
  'saved': B's first leg's out_dir, copied,
  FROM_SAVED's names: (process, out_dir, snapshot of out_dir before),
  'started': the local time before the first run began}."""
  root = tmp_path_factory.mktemp('runs')
  started, from_saved = [], {}
  started_at = datetime.datetime.now()

  def launch(workdir, out_dir, **settings):
    started.append(start_train(env, workdir, out_dir, **settings))
    return started[-1]

  try:
    work_a = make_workdir(root / 'a', shakespeare)
    work_b = make_workdir(root / 'b', shakespeare)
    a = launch(work_a, work_a / 'out', max_iters=40)
    b1 = finish(launch(work_b, work_b / 'out', max_iters=20))
    assert b1.returncode == 0, b1.stdout + b1.stderr
    shutil.copytree(work_b / 'out', root / 'saved')
    b2 = launch(work_b, work_b / 'out', max_iters=40, init_from='resume')
    for name, settings in FROM_SAVED.items():
      out_dir = shutil.copytree(root / 'saved', root / name)
      from_saved[name] = (launch(work_b, out_dir, **settings), out_dir, snapshot(out_dir))
    return dict(a=finish(a), b1=b1, b2=finish(b2), out_a=work_a / 'out', out_b=work_b / 'out', saved=root / 'saved',
                started=started_at, **{name: (finish(popen), out_dir, before)
                                       for name, (popen, out_dir, before) in from_saved.items()})
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


def test_a_reader_opens_checkpoints_without_orbax_notes(tmp_path, caplog):
  # a reader's output (samples, an export's one line) is all it prints: orbax's absl notes on a
  # read-only manager ('setting save_interval_steps=0') would come first
  with Checkpoints(tmp_path / 'out') as checkpoints:
    checkpoints.save(1, {'w': np.ones(2, np.float32)}, {'mu': np.zeros(2, np.float32)}, {'iter_num': 1, 'val_loss': 1.0})
  with caplog.at_level('INFO', logger='absl'), Checkpoints(tmp_path / 'out', read_only=True) as reader:
    assert reader.latest_step() == 1
  assert not [record.getMessage() for record in caplog.records if record.name == 'absl'], caplog.text


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


def bad_out_dir(setup, out_dir, saved):
  """out_dir set up as an ERRORS case says, from saved (a run's out_dir)."""
  if setup in ('copy', 'corrupt', 'foreign'):
    shutil.copytree(saved, out_dir)
    {'corrupt': corrupt_params, 'foreign': foreign_meta}.get(setup, lambda _: None)(out_dir)
  elif setup == 'empty':
    out_dir.mkdir()
  elif setup == 'ckpt.pt':
    put_nanogpt_checkpoint(out_dir)
  return out_dir


# name: (how out_dir is set up from a copy of a saved run (None: empty, absent: missing),
#        the train.py settings, what the one error line says)
ERRORS = {
    'conflicting_override': ('copy', dict(init_from='resume', n_layer=3, max_iters=40),
                             r'--config\.n_layer=3 conflicts with the checkpoint .* n_layer=2'),
    'resume_empty_out_dir': ('empty', dict(init_from='resume', max_iters=40), r'no checkpoint in'),
    'resume_nanogpt_out_dir': ('ckpt.pt', dict(init_from='resume', max_iters=40), r'no checkpoint in'),
    'resume_missing_out_dir': ('missing', dict(init_from='resume', max_iters=40), r'does not exist'),
    'scratch_over_checkpoints': ('copy', dict(max_iters=40),
                                 r'holds checkpoints of an earlier run: continue it with --config\.init_from=resume, '
                                 r'start afresh here with --config\.overwrite=True \(replacing them\), or pass '
                                 r'another --config\.out_dir$'),
    'corrupt_params': ('corrupt', dict(init_from='resume', max_iters=40), r'cannot be read .*corrupt'),
    'foreign_meta': ('foreign', dict(init_from='resume', max_iters=40), r'not a jaxgpt-checkpoint'),
}


# name: the train.py settings of a run on a copy of `saved`, B's first leg: its checkpoints are its best
# evaluation, step 20, and its final state, step 21
FROM_SAVED = {
    'best': dict(init_from='resume', checkpoint='best', max_iters=40),
    'best_eval_only': dict(init_from='resume', checkpoint='best', eval_only=True, max_iters=40),
    'overwrite': dict(overwrite=True, seed=7, max_iters=25),  # another run: seed 7
}


@pytest.mark.slow
@pytest.mark.parametrize('name', ERRORS)
def test_bad_out_dir_is_one_error_line_and_changes_nothing(runs, name, tmp_path, shakespeare, monkeypatch, capsys):
  """In process, train.py's main (its process's exit status 1 and lone line: test_train_e2e.py's
  test_bad_override_is_one_error_line): a process each would cost its start, and each case fails before training."""
  setup, settings, message = ERRORS[name]
  out_dir = bad_out_dir(setup, tmp_path / 'out', runs['saved'])
  before = snapshot(out_dir) if out_dir.exists() else None
  monkeypatch.chdir(make_workdir(tmp_path / 'work', shakespeare))  # its own: data/ is prepared on first use
  # one thread: the step's threads would size XLA's pool in this process's environment
  flags = config_flags(TINY_RUN | SCHEDULE | settings | {'out_dir': out_dir, 'threads': 1})
  assert cli.main(['train.py', f'--config={CONFIG}', *flags]) == 1
  out, err = capsys.readouterr()
  [line] = err.splitlines()
  assert line.startswith('error: ')
  assert re.search(message, line), line
  if before is None:
    assert not out_dir.exists()  # not created
  else:
    assert snapshot(out_dir) == before
  assert 'saving checkpoint' not in out


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


def test_a_users_files_named_like_steps_are_neither_read_nor_deleted(tmp_path):
  """A folder `2024/` and a file `2025` of the user's in out_dir: orbax alone
  would take 2024 for the latest step (resume and sampling would read it, a
  writer would skip its older steps' saves). Only orbax's step folders count."""
  out_dir = tmp_path / 'out'
  out_dir.mkdir()
  (out_dir / '2024').mkdir()
  (out_dir / '2024' / 'notes.txt').write_text('mine')
  (out_dir / '2025').write_text('mine too')
  assert not holds_checkpoints(out_dir)  # a run from scratch may write here
  with pytest.raises(CheckpointError, match='no checkpoint in'):
    Checkpoints(out_dir, read_only=True).latest_step()

  def save(checkpoints, step, val_loss):
    checkpoints.save(step, {'w': np.full(3, step, np.float32)}, {'mu': np.zeros(3, np.float32)},
                     {'iter_num': step, 'val_loss': val_loss, 'model_args': dict(TINY_MODEL_ARGS)})

  with Checkpoints(out_dir) as writer:
    for step, val_loss in [(1, 2.0), (2, 3.0), (3, 4.0)]:  # 2 rotated away
      save(writer, step, val_loss)
  assert holds_checkpoints(out_dir)
  assert sorted(p.name for p in out_dir.iterdir()) == ['1', '2024', '2025', '3']
  assert (out_dir / '2024' / 'notes.txt').read_text() == 'mine' and (out_dir / '2025').read_text() == 'mine too'
  with Checkpoints(out_dir, read_only=True) as reader:  # what a resume and sample.py read
    assert (reader.steps(), reader.latest_step(), reader.best_step()) == ([1, 3], 3, 1)
    assert reader.read('latest', lambda step: reader.params(step, {'w': np.zeros(3, np.float32)}))['w'].tolist() == \
        [3.0, 3.0, 3.0]
  proc = list_checkpoints(out_dir)
  assert proc.returncode == 0, proc.stderr
  assert [row.split()[:3] for row in proc.stdout.splitlines()[1:]] == [['1', '2.0000', 'best'], ['3', '4.0000', 'latest']]


TINY_MODEL_ARGS = dict(block_size=16, vocab_size=65, n_layer=1, n_head=1, n_embd=8, bias=True, dropout=0.0)


def test_a_reader_lists_again_when_a_writer_deletes_a_checkpoint_as_it_is_listed(tmp_path, monkeypatch):
  """orbax lists the step folders, then reads each one's metadata: a writer rotating one away in between made
  the reader fail on its folder, gone (FileNotFoundError). The rotation is made to happen there, once."""
  out_dir = tmp_path / 'out'
  with Checkpoints(out_dir) as writer:
    for step, val_loss in [(1, 2.0), (2, 3.0)]:
      writer.save(step, {'w': np.full(3, step, np.float32)}, {'mu': np.zeros(3, np.float32)},
                  {'iter_num': step, 'val_loss': val_loss})
  find_all = checkpoint.CheckpointSteps.find_all
  rotated = []

  def rotating_find_all(self, base_path):
    found = sorted(find_all(self, base_path), key=lambda metadata: metadata.step)
    if not rotated:
      rotated.append(found[-1].step)
      shutil.rmtree(found[-1].path)  # step 2, listed, is gone before its metadata is read
    return iter(found)
  monkeypatch.setattr(checkpoint.CheckpointSteps, 'find_all', rotating_find_all)
  with Checkpoints(out_dir, read_only=True) as reader:
    assert rotated == [2] and reader.steps() == [1] and reader.latest_step() == 1


def test_a_second_writer_on_out_dir_is_refused_with_its_holder_named(tmp_path):
  out_dir = tmp_path / 'out'
  with Checkpoints(out_dir):
    with pytest.raises(CheckpointError, match=rf'^another run is writing into {re.escape(str(out_dir))}: wait for '
                                              'it to finish, or write into another out_dir$'):
      Checkpoints(out_dir)
    Checkpoints(out_dir, read_only=True).close()  # readers take no lock
  Checkpoints(out_dir).close()  # the lock went with its writer


def save_step(checkpoints, step, val_loss):
  checkpoints.save(step, {'w': np.full(3, step, np.float32)}, {'mu': np.zeros(3, np.float32)},
                   {'iter_num': step, 'val_loss': val_loss})


def test_a_failed_reads_tracebacks_are_quieted_while_the_checkpoints_are_open(tmp_path, monkeypatch, caplog):
  """A failed read abandons orbax's other reads, whose errors Python would print later as they are collected:
  Python's hooks for them are swapped while the Checkpoints are open, and a library user's own are back after."""
  with Checkpoints(tmp_path / 'out') as writer:
    save_step(writer, 1, 2.0)
  corrupt_params(tmp_path / 'out')
  reported = []
  monkeypatch.setattr(sys, 'unraisablehook', users_unraisablehook := lambda unraisable: reported.append(unraisable))
  monkeypatch.setattr(sys, 'excepthook', users_excepthook := lambda *error: reported.append(error))

  def abandon_a_failed_task():  # as a failed read leaves its other reads: their errors never retrieved
    async def read():
      raise ValueError('DATA_LOSS')
    loop = asyncio.new_event_loop()
    loop.run_until_complete(asyncio.wait([loop.create_task(read())]))
    loop.close()

  with Checkpoints(tmp_path / 'out', read_only=True) as reader:
    with pytest.raises(checkpoint.UnreadableCheckpoint, match='cannot be read .*corrupt'):
      reader.params(1, {'w': np.zeros(3, np.float32)})
    assert (sys.unraisablehook, sys.excepthook) != (users_unraisablehook, users_excepthook)
    abandon_a_failed_task()
    sys.excepthook(RuntimeError, RuntimeError('Event loop is closed'), None)  # a read's callback, late
    sys.excepthook(ValueError, ValueError('not orbax'), None)  # anything else reaches the user's hook
  assert (sys.unraisablehook, sys.excepthook) == (users_unraisablehook, users_excepthook)
  assert reported == [(ValueError, reported[0][1], None)] and str(reported[0][1]) == 'not orbax'
  assert 'never retrieved' not in caplog.text
  abandon_a_failed_task()  # after close(), a failed task is reported again
  gc.collect()
  assert 'Task exception was never retrieved' in caplog.text


@pytest.mark.parametrize('lands, stop, kept', [
    ('before the rename', checkpoint.AbandonedSave, ['1', '2']),  # 3 unfinished: removed, 2 not rotated away
    ('after the rename', KeyboardInterrupt, ['1', '3']),  # 3 whole: kept, and 2 rotated away as it would be
    ('after the save', KeyboardInterrupt, ['1', '3']),
])
def test_a_second_ctrl_c_deletes_only_a_checkpoint_whose_save_did_not_finish(tmp_path, monkeypatch, lands, stop, kept):
  """orbax writes a checkpoint in its threads, renames it into place, then deletes the one it replaces. A second
  Ctrl-C landing before the rename abandons the save; one landing after it stops as a first does, the new
  checkpoint kept (it was deleted, maybe after the one it replaced). Orbax's thread is held where the Ctrl-C
  lands, so there is no race."""
  out_dir = tmp_path / 'out'
  writer = Checkpoints(out_dir)
  save_step(writer, 1, 2.0)  # the best
  save_step(writer, 2, 3.0)  # the latest, replaced by 3
  renamed, released = threading.Event(), threading.Event()
  commit = async_checkpointer._on_commit_callback

  def held_commit(*args):  # orbax's thread: renames the written checkpoint into place
    if lands == 'before the rename':
      released.wait(60)
    commit(*args)
    renamed.set()
    if lands == 'after the rename':
      released.wait(60)  # the rotation comes after

  orbax_save = writer.manager.save

  def save_then_ctrl_c(*args, **kwargs):  # the Ctrl-C lands once orbax began writing
    orbax_save(*args, **kwargs)
    if lands == 'after the rename':
      renamed.wait(60)
    if lands == 'after the save':
      writer.manager.wait_until_finished()
    raise KeyboardInterrupt

  monkeypatch.setattr(async_checkpointer, '_on_commit_callback', held_commit)
  monkeypatch.setattr(writer.manager, 'save', save_then_ctrl_c)
  with pytest.raises(KeyboardInterrupt) as stopped:
    save_step(writer, 3, 4.0)
  assert type(stopped.value) is stop
  assert (out_dir / '3').exists() == (lands != 'before the rename')
  released.set()
  writer.close()
  assert sorted(p.name for p in out_dir.iterdir()) == kept
  with Checkpoints(out_dir, read_only=True) as reader:
    assert reader.steps() == [int(step) for step in kept]
    assert reader.meta(int(kept[-1]))['iter_num'] == int(kept[-1])

# a row of `python -m jaxgpt.checkpoint`: step, val loss, kept as, saved (local time), params
LISTED_ROW = re.compile(r'^ *(\d+) +(\d+\.\d{4}|-) +(best, latest|best|latest|) +(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) +'
                        r'(\d+\.\d\dM)$')


def list_checkpoints(out_dir):
  return subprocess.run([sys.executable, '-m', 'jaxgpt.checkpoint', str(out_dir)], capture_output=True, text=True,
                        timeout=120)


def listed(out_dir) -> dict[int, tuple[str, str, datetime.datetime, str]]:
  """{step: (val loss, kept as, saved, params)}, as `python -m jaxgpt.checkpoint out_dir` lists them."""
  proc = list_checkpoints(out_dir)
  assert proc.returncode == 0 and proc.stderr == '', proc.stdout + proc.stderr
  header, *lines = proc.stdout.splitlines()
  assert header.split() == ['step', 'val', 'loss', 'kept', 'as', 'saved', 'params']
  rows = {}
  for line in lines:
    m = LISTED_ROW.match(line)
    assert m, line
    rows[int(m[1])] = (m[2], m[3], datetime.datetime.strptime(m[4], '%Y-%m-%d %H:%M:%S'), m[5])
  assert list(rows) == sorted(rows)  # oldest first
  return rows


@pytest.mark.slow
def test_the_listing_shows_each_checkpoint_as_its_run_logged_it(runs):
  proc, out_dir = runs['a'], runs['out_a']
  val_losses = {step: val for step, (_, val) in parse_log(proc.stdout)[0].items() if step > 0}  # each one saved
  best = min(val_losses, key=val_losses.get)
  with Checkpoints(out_dir):  # as a training writing there holds out_dir's lock: the listing takes none
    rows = listed(out_dir)
  assert sorted(rows) == [best, 41]  # the best evaluation, and the final state
  assert rows[best][:2] == (f'{val_losses[best]:.4f}', 'best')
  assert rows[41][:2] == ('-', 'latest')  # saved with no evaluation
  assert 'number of parameters: 0.03M' in proc.stdout.splitlines()
  assert rows[best][3] == rows[41][3] == '0.03M'
  assert runs['started'].replace(microsecond=0) <= rows[best][2] <= rows[41][2] <= datetime.datetime.now()


@pytest.mark.slow
def test_the_listing_reads_no_weights(runs, tmp_path):
  # the weights of every checkpoint are garbage here: the rows are those of the intact copy
  out_dir = bad_out_dir('corrupt', tmp_path / 'out', runs['saved'])
  assert {step: row[:2] for step, row in listed(out_dir).items()} == {20: (listed_val(runs, 20), 'best'),
                                                                       21: ('-', 'latest')}


def listed_val(runs, step) -> str:
  """The val loss B's first leg logged at step, as the listing shows it."""
  return f'{parse_log(runs["b1"].stdout)[0][step][1]:.4f}'


@pytest.mark.slow
@pytest.mark.parametrize('setup, message', [
    ('missing', r'out_dir \S+ does not exist: point out_dir at the folder a training run wrote its checkpoints to'),
    ('empty', r'no checkpoint in \S+: train first, or point out_dir at a run that saved one'),
    ('ckpt.pt', r'no checkpoint in \S+: train first, or point out_dir at a run that saved one'),
])
def test_listing_an_out_dir_without_checkpoints_is_one_error_line(tmp_path, setup, message):
  out_dir = tmp_path / 'out'
  {'empty': lambda d: d.mkdir(), 'ckpt.pt': put_nanogpt_checkpoint}.get(setup, lambda _: None)(out_dir)
  proc = list_checkpoints(out_dir)
  assert proc.returncode == 1 and proc.stdout == ''
  [line] = proc.stderr.splitlines()
  assert re.fullmatch('error: ' + message, line), line


@pytest.mark.slow
def test_the_listing_has_help():
  proc = subprocess.run([sys.executable, '-m', 'jaxgpt.checkpoint', '--help'], capture_output=True, text=True,
                        timeout=60)
  assert proc.returncode == 0
  assert proc.stdout.startswith('usage: python -m jaxgpt.checkpoint [-h] OUT_DIR\n')


@pytest.mark.slow
def test_resuming_from_the_best_checkpoint_trains_on_from_its_iteration(runs):
  """B's first leg ended at 20: its best checkpoint, 20, is older than its
  final state, 21. Resumed from the best, the run retrains iteration 20 as
  the uninterrupted run A did, and its first save replaces 21, which it
  does not continue: orbax would keep that highest step as the latest."""
  proc, out_dir, _ = runs['best']
  assert proc.returncode == 0, proc.stdout + proc.stderr
  first_leg = parse_log(runs['b1'].stdout)[0]
  assert first_leg[20][1] < first_leg[10][1]  # 20 is the first leg's best
  lines = proc.stdout.splitlines()
  assert lines[lines.index(f'Resuming training from {out_dir}') + 1] == (
      f"from the best checkpoint, step 20 (val loss {first_leg[20][1]:.4f}), not the latest, step 21; this run's "
      'first save replaces those after step 20')
  assert loss_lines(proc.stdout, since=0) == loss_lines(runs['a'].stdout, since=20)
  deleted = lines.index(f'deleted the checkpoints this run replaces in {out_dir} (step 21)')
  assert lines[deleted - 1] == f'saving checkpoint to {out_dir}' and STEP_LINE.match(lines[deleted - 2])[1] == '30'
  # the checkpoints the uninterrupted run keeps
  assert {step: row[:2] for step, row in listed(out_dir).items()} == \
      {step: row[:2] for step, row in listed(runs['out_a']).items()}
  # and its metrics.jsonl: the first leg's records before step 20, then this run's (none of the first leg's after)
  assert history(out_dir) == history(runs['out_a'])


def history(out_dir) -> list[tuple[str, int, float]]:
  """out_dir/metrics.jsonl's records: ('eval', iteration, val loss) or ('iter', iteration, loss), in order."""
  records = [json.loads(line) for line in (out_dir / 'metrics.jsonl').read_text().splitlines()]
  return [('eval', r['iter'], round(r['val_loss'], 4)) if 'val_loss' in r else ('iter', r['iter'], round(r['loss'], 4))
          for r in records]


@pytest.mark.slow
def test_eval_only_evaluates_the_chosen_checkpoint_and_deletes_none(runs):
  proc, out_dir, before = runs['best_eval_only']
  assert proc.returncode == 0, proc.stdout + proc.stderr
  first_leg = parse_log(runs['b1'].stdout)[0]
  assert parse_log(proc.stdout) == ({20: first_leg[20]}, {})  # the best, not the latest (21)
  assert f'from the best checkpoint, step 20 (val loss {first_leg[20][1]:.4f}), not the latest, step 21' in \
      proc.stdout.splitlines()
  assert 'saving checkpoint' not in proc.stdout and 'deleted' not in proc.stdout
  after = snapshot(out_dir)
  for folder in (before, after):
    del folder['metrics.jsonl']  # the evaluation appended to it
  assert after == before


@pytest.mark.slow
def test_overwrite_starts_afresh_in_an_out_dir_of_checkpoints(runs):
  """Refused without overwrite=True (ERRORS['scratch_over_checkpoints']); with
  it, the earlier run's checkpoints go at the new run's first save, and its
  metrics.jsonl at its start: out_dir then holds the new run's alone."""
  proc, out_dir, _ = runs['overwrite']
  assert proc.returncode == 0, proc.stdout + proc.stderr
  lines = proc.stdout.splitlines()
  assert f"overwrite=True: this run's first save replaces the checkpoints in {out_dir} (steps 20, 21)" in lines
  deleted = lines.index(f'deleted the checkpoints this run replaces in {out_dir} (steps 20, 21)')
  assert STEP_LINE.match(lines[deleted - 2])[1] == '10'  # its first save
  steps = parse_log(proc.stdout)[0]
  assert steps[20] != parse_log(runs['b1'].stdout)[0][20]  # another run (seed 7) than the one replaced
  best = min((step for step in steps if step > 0), key=lambda step: steps[step][1])
  rows = listed(out_dir)
  assert sorted(rows) == [best, 26]
  assert rows[best][:2] == (f'{steps[best][1]:.4f}', 'best') and rows[26][:2] == ('-', 'latest')
  records = [json.loads(line) for line in (out_dir / 'metrics.jsonl').read_text().splitlines()]
  assert [(r['iter'], round(r['val_loss'], 4)) for r in records if 'val_loss' in r] == \
      [(step, steps[step][1]) for step in (0, 10, 20)]


def test_a_resumed_runs_metrics_keep_the_records_before_its_iteration(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  path.write_text('{"iter": 0, "val_loss": 4.0}\n{"iter": 5, "loss": 3.0}\n{"iter": 10, "val_loss": 3.5}\n'
                  '{"iter": 12, "loss": 3.1}\n{"iter": 1')  # killed while writing a line
  keep_records_before(path, 10)
  assert path.read_text() == '{"iter": 0, "val_loss": 4.0}\n{"iter": 5, "loss": 3.0}\n'
  assert [p.name for p in tmp_path.iterdir()] == ['metrics.jsonl']
