"""Checkpoints in out_dir, through orbax.

Each checkpoint is a step folder holding `params` and `opt_state` (orbax's
standard pytree format) and `meta` (JSON: iter_num, val_loss, best_val_loss,
the model config, the run config and the vocabulary; the batches need no
state, each drawn from (seed, iteration, device)). Orbax writes a step into
a temporary folder and renames it when complete, so a run killed mid-save
leaves the previous checkpoints as they were. A save is waited for: a full
disk stops the run at that save, and a second Ctrl-C before it is complete
abandons it, its folder removed. out_dir keeps two: the latest and the one
with the best val loss. A resumed training starts from the latest, sampling
and the exports read the best; each takes `checkpoint=best|latest` to
choose the other. Only the step folders orbax wrote (with its metadata) are
checkpoints: a user's folder or file named like a step is neither read nor
deleted.

One writer at a time: a writer holds a lock on out_dir while it runs (the
kernel drops it when the process ends, however it ends), and a second writer
stops with one line. Readers take no lock, so they can sample
while a training saves; a checkpoint rotated away while being read (or
listed) is chosen again from what is there.

Run as a command, it lists the checkpoints of an out_dir, from their meta
alone (no lock taken, no weights read: it works while a training saves):

  python -m jaxgpt.checkpoint out-shakespeare-char
"""

import argparse
import contextlib
import datetime
import fcntl
import gc
import logging as std_logging  # asyncio's (orbax's messages go through absl's, `logging` here)
import math
import os
import pathlib
import re
import shutil
import sys
import threading
import time
from typing import Any, Callable, TypeVar

import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint import checkpoint_managers
from orbax.checkpoint import path as ocp_path

from jaxgpt import entry
from jaxgpt.config import CHECKPOINTS as CHOICES  # which checkpoint to read: the lowest val loss, or the newest
from jaxgpt.errors import JaxGPTError


FORMAT = 'jaxgpt-checkpoint/1'
LIST_ATTEMPTS = 10  # listings of out_dir that lost a checkpoint under them, in a row, before giving up
RELIST_WAIT_S = 0.05  # between listings of a reader that found no checkpoint where a writer is saving one
READ_PATIENCE_S = 60.0  # how long a reader chooses again while a writer saving every iteration rotates its choice away
SAVE_POLL_S = 0.01  # between looks at whether orbax finished writing a checkpoint (a Ctrl-C is heard between)
DELETION_WAIT_S = 2.0  # a checkpoint folder that outlives a failed read by this long is not being deleted
T = TypeVar('T')


class CheckpointError(JaxGPTError):
  pass


STEP_METADATA = '_CHECKPOINT_METADATA'  # the file orbax writes into each step folder it saves


def is_checkpoint(folder: pathlib.Path) -> bool:
  """Whether folder is a finished checkpoint: named by its step (orbax's
  unfinished ones carry a suffix) and holding orbax's metadata, not a user's
  folder named like a step (`2024/`)."""
  return folder.name.isdigit() and (folder / STEP_METADATA).is_file()


def holds_checkpoints(out_dir: str) -> bool:
  """Whether out_dir holds a finished checkpoint. Creates nothing."""
  directory = pathlib.Path(out_dir)
  return directory.is_dir() and any(is_checkpoint(p) for p in directory.iterdir())


class CheckpointSteps(ocp_path.step.NameFormat):
  """Orbax's step folders (named by their step), but only those that are
  checkpoints: orbax alone would list, rotate and delete a user's `2024/`."""

  def __init__(self):
    self.standard = ocp_path.step.standard_name_format()

  def build_name(self, step: int) -> str:
    return self.standard.build_name(step)

  def find_all(self, base_path):
    return (m for m in self.standard.find_all(base_path) if is_checkpoint(pathlib.Path(m.path)))

  def find_step(self, base_path, step: int):
    """Raises FileNotFoundError for a step not there: orbax takes it for a checkpoint deleted since it was
    listed (its metrics missing), where its own ValueError would stop a reader listing while a writer rotates."""
    try:
      metadata = self.standard.find_step(base_path, step)
    except ValueError as e:
      raise FileNotFoundError(str(e)) from None
    if not is_checkpoint(pathlib.Path(metadata.path)):
      raise FileNotFoundError(f'{metadata.path} is not a checkpoint')
    return metadata


def lock(directory: pathlib.Path) -> int:
  """Takes out_dir's writer lock: a lock on the folder itself, so that nothing
  in it is written to take it. Held until the returned descriptor is closed."""
  fd = os.open(directory, os.O_RDONLY)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    os.close(fd)
    raise CheckpointError(f'another run is writing into {directory}: wait for it to finish, '
                          'or write into another out_dir') from None
  return fd


@contextlib.contextmanager
def _quiet_absl(level: int = logging.ERROR):
  verbosity = logging.get_verbosity()
  logging.set_verbosity(level)
  try:
    yield
  finally:
    logging.set_verbosity(verbosity)


def listed(list_steps: Callable[[], T]) -> T:
  """list_steps(), a call in which orbax lists out_dir's checkpoints, made again while a writer deletes one
  of them as it is listed (orbax then fails on its folder, gone)."""
  for attempt in range(LIST_ATTEMPTS):
    try:
      return list_steps()
    except FileNotFoundError:
      if attempt == LIST_ATTEMPTS - 1:
        raise


def _not_abandoned_work(record: std_logging.LogRecord) -> bool:
  return 'exception was never retrieved' not in record.getMessage()  # a Task's or a _GatheringFuture's


def _from_abandoned_work(unraisable) -> bool:
  """A failed read's coroutine collected, or a read's callback on orbax's event loop, closed since."""
  code = getattr(unraisable.object, 'cr_code', None)
  return (code is not None and 'orbax' in code.co_filename) or str(unraisable.exc_value) == 'Event loop is closed'


_quieting = threading.Lock()  # guards the two below
_quieted_for = 0  # how many are quieting abandoned work now: Python's hooks come back when none is
_python_hooks: tuple[Callable, Callable] | None = None  # sys.unraisablehook and sys.excepthook, from before


def _quiet_unraisable(unraisable) -> None:
  if not _from_abandoned_work(unraisable):
    _python_hooks[0](unraisable)


def _quiet_excepthook(kind, value, trace) -> None:
  # a write's callback on orbax's closed event loop, called from tensorstore's threads, comes here
  if str(value) != 'Event loop is closed':
    _python_hooks[1](kind, value, trace)


@contextlib.contextmanager
def abandoned_work_quieted():
  """Orbax reads and writes a checkpoint's arrays in asyncio tasks, on an event loop of its own for each
  restore or save. When one fails (a checkpoint deleted as it is read, or corrupt; a full disk), its error is
  raised, and answered here; Python would print the others' as tracebacks of their own, later, as they are
  collected ("Task exception was never retrieved", "Exception ignored in: <coroutine ...>", "Event loop is
  closed"). Within this block they are not; Python's hooks (or a user's) are put back when the last such
  block ends."""
  global _quieted_for, _python_hooks
  asyncio_log = std_logging.getLogger('asyncio')
  with _quieting:
    if _quieted_for == 0:
      _python_hooks = sys.unraisablehook, sys.excepthook
      sys.unraisablehook, sys.excepthook = _quiet_unraisable, _quiet_excepthook
      asyncio_log.addFilter(_not_abandoned_work)
    _quieted_for += 1
  try:
    yield
  finally:
    gc.collect()  # abandoned tasks sit in reference cycles (their errors' tracebacks): collected now, quietly
    with _quieting:
      _quieted_for -= 1
      if _quieted_for == 0:
        asyncio_log.removeFilter(_not_abandoned_work)
        # a hook set since is someone else's: left in place
        if sys.unraisablehook is _quiet_unraisable:
          sys.unraisablehook = _python_hooks[0]
        if sys.excepthook is _quiet_excepthook:
          sys.excepthook = _python_hooks[1]


class UnreadableCheckpoint(CheckpointError):
  """A checkpoint orbax cannot read: corrupt, or deleted while being read."""


class AbandonedSave(KeyboardInterrupt):
  """A second Ctrl-C during a save: the run stops, the checkpoint being written is removed."""


class Checkpoints:
  """A run's checkpoints in out_dir, through orbax: the latest and the best
  (lowest val loss) are kept, each with the weights, AdamW's state and a
  JSON of the run's config, model shape, vocabulary and iteration. A writer
  holds out_dir's lock, so that two runs never write into one folder."""

  def __init__(self, out_dir: str, *, create: bool = True, read_only: bool = False, locked: bool = True):
    """create=False: out_dir must exist (resuming, sampling); read_only: never
    write; locked: a writer takes out_dir's lock (of a multi-process run,
    only process 0 does)."""
    self.directory = pathlib.Path(out_dir).absolute()
    if (read_only or not create) and not self.directory.is_dir():
      raise CheckpointError(f'out_dir {self.directory} {"is a file" if self.directory.exists() else "does not exist"}: '
                            'point out_dir at the folder a training run wrote its checkpoints to')
    try:
      self.directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
      raise CheckpointError(f'cannot create out_dir {self.directory} ({e.strerror}): pass a '
                            'writable --config.out_dir') from None
    self.read_only = read_only
    self.abandoned: int | None = None  # the step of a save a second Ctrl-C interrupted
    self.failed = False  # a save that could not write
    self.resources = contextlib.ExitStack()  # given back by close(): the lock, the quieted tracebacks
    self.quieting = False  # whether orbax's abandoned work is quieted (from the first save or failed read)
    if locked and not read_only:
      self.resources.callback(os.close, lock(self.directory))
    keep_latest_and_best = checkpoint_managers.AnyPreservationPolicy([
        checkpoint_managers.LatestN(n=1),
        # sorted by val loss, descending: BestN keeps the last n, the lowest
        checkpoint_managers.BestN(get_metric_fn=lambda m: m['val_loss'], reverse=True, n=1),
    ])
    with _quiet_absl():  # orbax's notes on a read-only manager (its options too) would precede a reader's output
      options = ocp.CheckpointManagerOptions(
          preservation_policy=keep_latest_and_best,
          best_fn=lambda m: m['val_loss'], best_mode='min',  # also makes orbax read saved metrics back
          step_name_format=CheckpointSteps(), read_only=read_only, create=not read_only)
      self.manager = listed(lambda: ocp.CheckpointManager(self.directory, options=options))

  def save(self, step: int, params, opt_state, meta: dict[str, Any]) -> None:
    """Writes the checkpoint and returns once it is whole, so the caller may donate the arrays to the next step.
    meta needs a val_loss. A write that fails (a full disk) raises a CheckpointError and leaves no unfinished
    folder; a second Ctrl-C raises AbandonedSave, and close() removes what was written (one that lands once the
    checkpoint is whole raises KeyboardInterrupt, the checkpoint kept)."""
    meta = {'format': FORMAT} | meta
    self._quiet_abandoned_work()  # a failed write abandons orbax's other writes, as a failed read does its reads
    try:
      with _quiet_absl(logging.FATAL):  # a failed write's tracebacks, from each of orbax's threads; answered below
        self.manager.save(step, metrics={'val_loss': meta['val_loss']}, args=ocp.args.Composite(
            params=ocp.args.StandardSave(params),
            opt_state=ocp.args.StandardSave(opt_state),
            meta=ocp.args.JsonSave(meta)))
        # orbax writes in the background and would report a full disk only at the next save: waited for here, so
        # that the run stops at the save that failed. Polled: orbax's own wait holds off Ctrl-C until it ends
        while self.manager.is_saving_in_progress():
          time.sleep(SAVE_POLL_S)
        self.manager.wait_until_finished()
    except KeyboardInterrupt:  # a second Ctrl-C
      if self._finished_despite_stop(step):
        raise  # a stop as the first Ctrl-C's: after a whole checkpoint
      self.abandoned = step  # orbax's threads still write; close() waits for them and removes it
      raise AbandonedSave('stopped at once: the checkpoint being saved was abandoned; the earlier ones are whole') \
          from None
    except Exception as e:  # a full disk, a folder gone read-only (this save, or the one before it)
      error = self._write_error(e)
      if error is None:
        raise
      self.failed = True  # its unfinished folder is removed by close(), once orbax's threads stopped writing into it
      raise error from None

  def _finished_despite_stop(self, step: int) -> bool:
    """Whether step's save, stopped by a second Ctrl-C, had finished all the same. Orbax renames a written
    checkpoint into place, then deletes the ones it replaces: those deletions are held back before looking,
    so that a save seen unfinished has deleted none and deletes none (the checkpoint it replaces kept, whole,
    in its place); one seen finished may go on (or have kept one more checkpoint than usual)."""
    deleter = self.manager._checkpoint_deleter
    deleter.delete_steps, delete_steps = (lambda steps: None), deleter.delete_steps
    if not is_checkpoint(self.directory / str(step)):
      return False
    deleter.delete_steps = delete_steps
    return True

  def latest_step(self) -> int:
    step = self.manager.latest_step()
    for _ in range(LIST_ATTEMPTS if self.read_only else 0):
      if step is not None or not self._saving():
        break
      # a listing made as a writer renames its new checkpoint into place may see neither name (readdir's way)
      time.sleep(RELIST_WAIT_S)
      listed(self.manager.reload)
      step = self.manager.latest_step()
    if step is None:
      raise CheckpointError(f'no checkpoint in {self.directory}: train first, or point out_dir '
                            'at a run that saved one')
    return step

  def best_step(self) -> int:
    """The kept step with the lowest val loss."""
    latest = self.latest_step()  # raises when there is none
    best = self.manager.best_step()
    return latest if best is None else best  # None: saved without a val loss

  def chosen_step(self, which: str) -> int:
    """The step of the best or the latest checkpoint (`which`, one of CHOICES)."""
    return self.best_step() if which == 'best' else self.latest_step()

  def steps(self) -> list[int]:
    """The steps of the checkpoints kept, oldest first."""
    return list(self.manager.all_steps())

  def delete(self, steps: list[int]) -> None:
    """Deletes these checkpoints (every process takes part, as in a save)."""
    try:
      for step in steps:
        self.manager.delete(step)
    except OSError as e:
      raise self._write_error(e) from None

  def read(self, which: str, read: Callable[[int], T]) -> T:
    """read(step) of the best or the latest checkpoint (`which`, one of CHOICES). A training saving
    into out_dir deletes the checkpoints it no longer keeps, maybe the one
    chosen here while it is read: then the choice is made again."""
    deadline = time.monotonic() + READ_PATIENCE_S
    while True:
      step = self.chosen_step(which)
      try:
        return read(step)
      except UnreadableCheckpoint:
        if time.monotonic() >= deadline or not self._goes_away(step):
          raise
        listed(self.manager.reload)

  def _saving(self) -> bool:
    """Whether out_dir holds a step folder, or one orbax is writing (its name starts with the step)."""
    return any(p.name[:1].isdigit() for p in self.directory.iterdir())

  def _goes_away(self, step: int) -> bool:
    """Whether step's folder is gone, or goes within DELETION_WAIT_S (a
    writer deletes a checkpoint's files, then its folder)."""
    deadline = time.monotonic() + DELETION_WAIT_S
    while (self.directory / str(step)).exists():
      if time.monotonic() >= deadline:
        return False
      time.sleep(0.05)
    return True

  def meta(self, step: int) -> dict[str, Any]:
    meta = self._restore(step, meta=ocp.args.JsonRestore())['meta']
    if meta.get('format') != FORMAT:
      raise CheckpointError(f'checkpoint {self.directory / str(step)} is not a {FORMAT} checkpoint '
                            '(written by another version of jaxgpt?)')
    return meta

  def saved_at(self, step: int) -> datetime.datetime:
    """When step's checkpoint was saved (orbax's commit time), in local time."""
    try:
      nanoseconds = self.manager.metadata(step).commit_timestamp_nsecs
    except Exception as e:  # as in _restore: gone, or corrupt
      raise UnreadableCheckpoint(f'checkpoint {self.directory / str(step)} has no readable metadata '
                                 f'({type(e).__name__}): it is corrupt') from None
    return datetime.datetime.fromtimestamp(nanoseconds / 1e9)

  def params(self, step: int, like):
    """The params of `step`; `like` (a pytree of arrays) gives structure, shapes and dtypes."""
    return self._restore(step, params=ocp.args.StandardRestore(like))['params']

  def state(self, step: int, params_like, opt_state_like):
    restored = self._restore(step, params=ocp.args.StandardRestore(params_like),
                             opt_state=ocp.args.StandardRestore(opt_state_like))
    return restored['params'], restored['opt_state']

  def _restore(self, step: int, **items):
    try:
      return self.manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # orbax raises many kinds (missing files, bad JSON, shape mismatches)
      self._quiet_abandoned_work()
      raise UnreadableCheckpoint(f'checkpoint {self.directory / str(step)} cannot be read '
                            f'({type(e).__name__}: {str(e).splitlines()[0][:200]}): it is '
                            'corrupt or from another model') from None

  def __enter__(self) -> 'Checkpoints':
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()

  def close(self) -> None:
    try:
      with _quiet_absl(logging.FATAL):  # as in save
        self.manager.wait_until_finished()
    except Exception as e:
      self.failed = True
      if self.abandoned is None:
        error = self._write_error(e)
        if error is None:
          raise
        raise error from None
    finally:
      with self.resources:  # the lock and Python's hooks given back, however this ends
        with _quiet_absl(logging.FATAL), contextlib.suppress(*(Exception,) if self.unfinished() else ()):
          self.manager.close()  # waits again, raising again what a failed save raised
        if self.abandoned is not None:
          shutil.rmtree(self.directory / str(self.abandoned), ignore_errors=True)  # written in full meanwhile
        if self.unfinished():
          self._remove_unfinished()

  def _quiet_abandoned_work(self) -> None:
    """Quiets, until close(), the tracebacks of the work orbax abandons when a read or a write fails."""
    if not self.quieting:
      self.resources.enter_context(abandoned_work_quieted())
      self.quieting = True

  def unfinished(self) -> bool:
    """Whether a save failed or was abandoned: its folder is left unfinished."""
    return self.failed or self.abandoned is not None

  def _remove_unfinished(self) -> None:
    """Removes the folder of a save that failed or was abandoned (orbax's, named `STEP.orbax-checkpoint-tmp...`)."""
    for folder in self.directory.glob('*.orbax-checkpoint-tmp*'):
      if folder.name.split('.')[0].isdigit():
        shutil.rmtree(folder, ignore_errors=True)

  def _write_error(self, e: Exception) -> CheckpointError | None:
    """The line for a save that failed to write (an OSError, or tensorstore's error naming the OS's, as orbax
    raises it); None for another error."""
    if isinstance(e, OSError):
      reason = e.strerror or str(e)
    else:
      code = re.search(r"os_error_code='(\d+)'", str(e))
      if code is None:
        return None
      reason = os.strerror(int(code.group(1)))
    kept = ('the checkpoints written before are whole, resume from them with --config.init_from=resume'
            if holds_checkpoints(str(self.directory)) else 'no checkpoint was saved')
    return CheckpointError(f'could not write a checkpoint to {self.directory} ({reason}): free some '
                           f'space or pick another --config.out_dir; {kept}')


def parameter_count(model_args: dict[str, Any]) -> int:
  """nanoGPT's count ("number of parameters"), from a checkpoint's model
  shape: the model is built abstract, no weight computed or read."""
  from flax import nnx
  from jaxgpt.model import GPT, GPTConfig
  return nnx.eval_shape(lambda: GPT(GPTConfig(**model_args), rngs=nnx.Rngs(0))).num_params()


def checkpoint_rows(out_dir: str) -> list[tuple[str, ...]] | None:
  """table()'s rows; None when a training saving now rotated a checkpoint away as it was listed."""
  with _quiet_absl(), Checkpoints(out_dir, read_only=True) as checkpoints:
    # orbax notes, for every step, the weights it was not asked to read
    best, latest = checkpoints.best_step(), checkpoints.latest_step()  # raises when there is none
    rows = []
    for step in checkpoints.steps():
      try:
        meta, saved = checkpoints.meta(step), checkpoints.saved_at(step)
      except UnreadableCheckpoint:
        if checkpoints._goes_away(step):
          return None
        raise
      val_loss = f'{meta["val_loss"]:.4f}' if math.isfinite(meta['val_loss']) else '-'
      kept_as = ', '.join(name for name, kept in (('best', best), ('latest', latest)) if kept == step)
      rows.append((str(step), val_loss, kept_as, saved.strftime('%Y-%m-%d %H:%M:%S'),
                   f'{parameter_count(meta["model_args"]) / 1e6:.2f}M'))
  return rows


def table(out_dir: str) -> str:
  """A row for each checkpoint of out_dir, oldest first: its step, val loss,
  whether it is the best or the latest, when it was saved and the model's
  size. Read from the checkpoints' meta alone, taking no lock."""
  for _ in range(LIST_ATTEMPTS):
    listing = checkpoint_rows(out_dir)
    if listing is not None:
      break
  else:
    raise CheckpointError(f'a training saving into {out_dir} rotated its checkpoints away {LIST_ATTEMPTS} times '
                          'as they were listed: list them again')
  rows = [('step', 'val loss', 'kept as', 'saved', 'params'), *listing]
  widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
  right_aligned = (True, True, False, False, True)
  return '\n'.join('  '.join(cell.rjust(width) if right else cell.ljust(width)
                              for cell, width, right in zip(row, widths, right_aligned)).rstrip() for row in rows)


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m jaxgpt.checkpoint',
      description='Lists the checkpoints a training run keeps in OUT_DIR: the latest and the best (lowest val loss).',
      epilog="val loss: of the evaluation the checkpoint was saved after; '-' for a state saved with none (the final "
             'state, or one saved on Ctrl-C). saved: local time. params: as train.py counts them. No lock is taken '
             'and no weight read: it can list while a training saves.')
  parser.add_argument('out_dir', metavar='OUT_DIR', help="a training run's out_dir, e.g. out-shakespeare-char")
  args = parser.parse_args(argv[1:])
  return entry.run(lambda: print(table(args.out_dir)), 'interrupted')


if __name__ == '__main__':
  sys.exit(main(sys.argv))
