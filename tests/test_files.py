"""Files replaced whole (jaxgpt.files): written, synced, moved in; a failed block and a killed writer's leftovers."""

import os
import subprocess
import sys
import time

import pytest

from conftest import linux_only
from jaxgpt import files


def test_files_move_in_whole_with_the_umask(tmp_path):
  old_umask = os.umask(0o027)
  try:
    with files.replacing(tmp_path / 'a.bin', tmp_path / 'new' / 'b.txt') as (a, b):
      a.write_bytes(b'\x00\x01' * 1000)
      with open(b, 'w') as f:  # as torch.save or safetensors write a path they are given
        f.write('hello\n')
  finally:
    os.umask(old_umask)
  assert (tmp_path / 'a.bin').read_bytes() == b'\x00\x01' * 1000
  assert (tmp_path / 'new' / 'b.txt').read_text() == 'hello\n'  # its missing folder made
  assert (tmp_path / 'a.bin').stat().st_mode & 0o777 == 0o640  # 0666 less the umask, not tempfile's 0600
  assert sorted(p.name for p in tmp_path.iterdir()) == ['a.bin', 'new']


@linux_only("/proc/self/fd, where the test reads which file each fsync was of")
def test_the_files_and_their_folder_are_synced_before_and_after_the_moves(tmp_path, monkeypatch):
  events = []
  fsync, replace = os.fsync, os.replace
  monkeypatch.setattr(os, 'fsync', lambda fd: (events.append(('fsync', os.readlink(f'/proc/self/fd/{fd}'))), fsync(fd)))
  monkeypatch.setattr(os, 'replace', lambda src, dst: (events.append(('replace', str(dst))), replace(src, dst)))
  with files.replacing(tmp_path / 'a', tmp_path / 'b') as (a, b):
    a.write_text('a')
    b.write_text('b')
  assert [kind for kind, _ in events] == ['fsync', 'fsync', 'replace', 'replace', 'fsync']
  assert events[0][1] == str(a) and events[1][1] == str(b)  # the data, on disk before a rename makes it the path's
  assert events[2:] == [('replace', str(tmp_path / 'a')), ('replace', str(tmp_path / 'b')), ('fsync', str(tmp_path))]


def test_a_block_that_raises_leaves_the_old_files(tmp_path):
  (tmp_path / 'a.bin').write_bytes(b'old')
  (tmp_path / 'stale').write_bytes(b'kept')
  with pytest.raises(KeyboardInterrupt):
    with files.replacing(tmp_path / 'a.bin', removing=(tmp_path / 'stale',)) as (a,):
      a.write_bytes(b'new, half written')
      raise KeyboardInterrupt
  assert sorted(p.name for p in tmp_path.iterdir()) == ['a.bin', 'stale']
  assert (tmp_path / 'a.bin').read_bytes() == b'old' and (tmp_path / 'stale').read_bytes() == b'kept'


def test_removing_goes_as_the_new_files_move_in(tmp_path):
  (tmp_path / 'meta.pkl').write_bytes(b'of the data set replaced')
  with files.replacing(tmp_path / 'meta.json', removing=(tmp_path / 'meta.pkl',)) as (meta,):
    meta.write_text('{}')
  assert sorted(p.name for p in tmp_path.iterdir()) == ['meta.json']


def test_a_killed_writers_leftovers_go_and_a_live_ones_stay(tmp_path):
  """The next write of a path removes the temporary files of this host's
  processes that are gone; those of running processes (another writer of
  the same path), of this one and of other hosts are left alone."""
  path = tmp_path / 'train.bin'
  gone = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True)
  gone_pid = int(gone.stdout)
  running = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
  try:
    leftovers = {
        'gone': files.temp_path(path, gone_pid),
        'running': files.temp_path(path, running.pid),
        'this process': files.temp_path(path),
        'other host': tmp_path / f'.train.bin.elsewhere-{files.HOST}.{gone_pid}.0000.tmp',
        'other path': files.temp_path(tmp_path / 'val.bin', gone_pid),
    }
    for temp in leftovers.values():
      temp.write_bytes(b'x' * 100)
    with files.replacing(path) as (temp,):
      temp.write_bytes(b'ids')
    left = {name for name, temp in leftovers.items() if temp.exists()}
  finally:
    running.kill()
    running.wait()
  assert left == {'running', 'this process', 'other host', 'other path'}
  assert path.read_bytes() == b'ids'


def test_an_older_jaxgpts_leftovers_go_and_a_running_writers_stay(tmp_path):
  """Temporary files named as jaxgpt named them before jaxgpt.files (no host): .NAME.PID.tmp (prepare, the gpt2
  export), .NAME.PID.partial (the ckpt_pt export), .NAME.RANDOM.tmp (prepare, no pid). The next write of their
  path removes those of a process that is gone, and pid-less ones once none beside them was written for an hour."""
  gone = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True)
  gone_pid = int(gone.stdout)
  running = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
  leftovers = {
      'gone': tmp_path / f'.model.safetensors.{gone_pid}.tmp',
      'gone, partial': tmp_path / f'.ckpt.pt.{gone_pid}.partial',
      'running': tmp_path / f'.ckpt.pt.{running.pid}.partial',
      'pid-less': tmp_path / '.train.bin.0123456789abcdef.tmp',
      'pid-less, written now': tmp_path / '.val.bin.fedcba9876543210.tmp',  # an older prepare running beside
      'a user\'s': tmp_path / '.train.bin.notes.tmp',
  }
  for temp in leftovers.values():
    temp.write_bytes(b'x' * 100)
  quiet = time.time() - files.OLD_WRITER_QUIET_S - 60
  os.utime(leftovers['pid-less'], (quiet, quiet))

  def write_each():
    for path in ('model.safetensors', 'ckpt.pt', 'train.bin'):
      with files.replacing(tmp_path / path) as (temp,):
        temp.write_bytes(b'new')
    return {name for name, temp in leftovers.items() if temp.exists()}

  try:
    assert write_each() == {'running', 'pid-less', 'pid-less, written now', "a user's"}
    os.utime(leftovers['pid-less, written now'], (quiet, quiet))  # that older prepare was killed an hour ago
    assert write_each() == {'running', 'pid-less, written now', "a user's"}  # val.bin's goes as val.bin is written
  finally:
    running.kill()
    running.wait()
  assert (tmp_path / 'train.bin').read_bytes() == b'new'
