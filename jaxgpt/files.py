"""Files replaced whole: the one way jaxgpt writes a file a reader may hold.

  with files.replacing(folder / 'train.bin', folder / 'val.bin') as (train, val):
    train.write_bytes(...)  # or open(train, 'wb'), torch.save(..., train), save_file(..., train)

Each path gets a temporary file beside it (same folder, so the move is a
rename), created empty with the user's umask and named .NAME.HOST.PID.RANDOM.tmp
(RANDOM: two writers in one process, e.g. threads, do not share one).
When the block ends without error each temporary file is synced to disk and
moved onto its path (os.replace, in the order given), then the folder is
synced, so after a crash a path holds the old file or the new one, whole. A
block that raises (Ctrl-C, a full disk) removes its temporary files and
leaves every path as it was.

A process killed with SIGKILL cannot remove its temporary files; the next
write of the same path removes those whose process is gone. A temporary file
of a process still running on this host is left alone: two trainings may
prepare the same data set at once, each writing its own files whole. The
next write also removes what a killed writer of an older jaxgpt left, named
as it named them (.NAME.PID.tmp, .NAME.PID.partial, .NAME.RANDOM.tmp).
"""

import contextlib
import glob
import os
import pathlib
import re
import secrets
import socket
import time
from typing import Iterator

HOST = socket.gethostname()  # on a shared folder, only this host's processes can be told alive or gone
# an older jaxgpt's temporary files, named without the host: .NAME.PID.tmp (prepare, the gpt2 export),
# .NAME.PID.partial (the ckpt_pt export), and .NAME.RANDOM.tmp (prepare: 16 hex digits, no pid)
OLD_TEMP_NAME = r'\.{name}\.(?:(?P<pid>\d{{1,7}})\.(?:tmp|partial)|[0-9a-f]{{16}}\.tmp)'
OLD_PIDLESS_TEMP = re.compile(r'\..+\.[0-9a-f]{16}\.tmp')
OLD_WRITER_QUIET_S = 3600  # pid-less temporary files all untouched this long are no running writer's


def temp_path(path: pathlib.Path, pid: int | None = None) -> pathlib.Path:
  """A new temporary file's name beside path, of the process pid (default: this one)."""
  return path.with_name(f'.{path.name}.{HOST}.{os.getpid() if pid is None else pid}.{secrets.token_hex(4)}.tmp')


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)  # signal 0: only asks whether the process exists
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's process: it exists
    pass
  return True


def remove_leftovers(path: pathlib.Path) -> None:
  """Removes the temporary files of path left by processes of this host that
  are gone (killed while writing)."""
  prefix, suffix = f'.{path.name}.{HOST}.', '.tmp'
  for temp in path.parent.glob(f'{glob.escape(prefix)}*{suffix}'):
    pid = temp.name[len(prefix):-len(suffix)].split('.')[0]
    if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
      temp.unlink(missing_ok=True)


def remove_old_leftovers(path: pathlib.Path) -> None:
  """Removes the temporary files of path that a killed writer of an older jaxgpt left (OLD_TEMP_NAME): those
  named by a process that is gone, and pid-less ones once none beside them was written for OLD_WRITER_QUIET_S
  (a running writer of that kind writes its token files as it goes)."""
  named = re.compile(OLD_TEMP_NAME.format(name=re.escape(path.name)))
  old = [(temp, match['pid']) for temp in path.parent.glob(f'{glob.escape("." + path.name)}.*')
         if (match := named.fullmatch(temp.name))]
  pidless_written = [_modified(temp) for temp in path.parent.iterdir() if OLD_PIDLESS_TEMP.fullmatch(temp.name)]
  pidless_quiet = time.time() - max(pidless_written, default=0) > OLD_WRITER_QUIET_S
  for temp, pid in old:
    if (pidless_quiet if pid is None else not _alive(int(pid))):
      temp.unlink(missing_ok=True)


def _modified(path: pathlib.Path) -> float:
  try:
    return path.stat().st_mtime
  except FileNotFoundError:  # removed since it was listed
    return 0.0


def sync_folder(folder: pathlib.Path) -> None:
  """fsync of a folder: makes the renames in it last through a crash."""
  fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


@contextlib.contextmanager
def replacing(*paths: pathlib.Path, removing: tuple[pathlib.Path, ...] = ()) -> Iterator[list[pathlib.Path]]:
  """Temporary files, one for each path, moved onto their paths when the block
  ends without error (see the module's docstring); missing folders are made.
  removing: paths removed just before the moves (files of what is replaced
  that are not written again). OSError (a full disk, no permission) is the
  caller's to word."""
  temps = [temp_path(path) for path in paths]
  made = []
  try:
    for path, temp in zip(paths, temps):
      path.parent.mkdir(parents=True, exist_ok=True)
      remove_leftovers(path)
      remove_old_leftovers(path)
      temp.open('xb').close()  # 0666 less the umask, as a plain write; tempfile's would be 0600
      made.append(temp)
    yield temps
    for temp in temps:
      with temp.open('rb') as f:
        os.fsync(f.fileno())  # the data on disk before a rename makes it the path's
    for path in removing:
      path.unlink(missing_ok=True)
    for path, temp in zip(paths, temps):
      os.replace(temp, path)
    for folder in dict.fromkeys(path.parent for path in (*paths, *removing)):
      sync_folder(folder)
  finally:
    for temp in made:
      temp.unlink(missing_ok=True)
