"""Start several training processes on this host, as `torchrun --standalone`:

  python -m jaxgpt.launch --nproc=2 train.py --config=configs/shakespeare_char.py

Each process runs the script with the given flags plus
--config.coordinator_address=127.0.0.1:PORT (a free port),
--config.num_processes and --config.process_id; they join into one set of
devices (jax.distributed) and train one model, data parallel, each on its
own share of the host's cores. Only process 0 prints, as nanoGPT's
master_process: the output of each other process (stdout and stderr, the
C++ lines of gloo and XLA too) goes to rank<N>.log in --log_dir (default: a
new folder in the system's temporary folder), named on the first line, and
when one of them fails, the end of its log is shown (a mistake in the
flags is said once, before any process starts). Ctrl-C (SIGTERM, or
SIGHUP: the terminal closed, unless under nohup) reaches every process
once: they finish the same iteration and save one checkpoint; before
training begins there is nothing to save, and they are stopped at once.
When one process fails, the others are stopped; the exit status is the
first failure's.
"""

import argparse
import contextlib
import ctypes
import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import ml_collections

from jaxgpt import cli, entry
from jaxgpt.errors import JaxGPTError

LAUNCH_KEYS = ('coordinator_address', 'num_processes', 'process_id')  # what launch passes each process
TAIL_LINES = 20  # of a failed process's log, shown on the terminal
PR_SET_PDEATHSIG = 1  # prctl's option: a signal to receive when the parent dies (linux/prctl.h)
FAILURE_GRACE_S = 2.0  # the others' time to end on their own once one failed
INTERRUPTED = 130  # the exit status of a process stopped by Ctrl-C: process 0 says so, the others need not


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def share_cores(nproc: int) -> list[list[int]]:
  """The CPUs this process may use, dealt into nproc shares as even as can
  be, each a run of neighbouring CPUs."""
  cpus = sorted(os.sched_getaffinity(0))
  bounds = [len(cpus) * i // nproc for i in range(nproc + 1)]
  return [cpus[start:end] for start, end in zip(bounds, bounds[1:])]


def start_process(cores: list[int]) -> None:
  """Run in each process before the script: pinned to its cores, and sent
  SIGTERM (a clean stop, as Ctrl-C) if the launcher dies: in a session of
  its own, it would not hear the terminal close."""
  os.sched_setaffinity(0, cores)
  ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def log_paths(nproc: int, log_dir: pathlib.Path | None) -> list[pathlib.Path | None]:
  """Where each process's output goes: process 0's to this terminal (None),
  each other's to log_dir/rank<N>.log."""
  return [None] + [log_dir / f'rank{rank}.log' for rank in range(1, nproc)]


def make_log_dir(log_dir: pathlib.Path | None) -> pathlib.Path:
  """log_dir, made if missing; None: a new folder in the system's temporary
  folder (not out_dir: train.py has yet to check it, and it may not exist)."""
  if log_dir is None:
    return pathlib.Path(tempfile.mkdtemp(prefix='jaxgpt-launch-'))
  log_dir.mkdir(parents=True, exist_ok=True)
  return log_dir


def describe(code: int) -> str:
  return f'killed by {signal.Signals(-code).name}' if code < 0 else f'exit status {code}'


def show_failure(rank: int, code: int, log: pathlib.Path) -> None:
  """The end of a failed process's log, each line marked with its rank (as
  torchrun marks them): its output reaches no terminal otherwise."""
  lines = log.read_text(errors='replace').splitlines()[-TAIL_LINES:]
  print(f'process {rank} failed ({describe(code)}); the end of its output (all of it in {log}):', file=sys.stderr)
  for line in lines:
    print(f'[rank{rank}]: {line}', file=sys.stderr)


def said_by_process_0(code: int, code_0: int, log: pathlib.Path) -> bool:
  """Whether a process stopped on a user mistake that process 0 stopped on too, and so printed: one found only
  once the processes joined (the devices they train on together), each process finding it alike."""
  lines = log.read_text(errors='replace').splitlines()
  return code == code_0 == 1 and bool(lines) and lines[-1].startswith('error: ')


def wait(processes: list[subprocess.Popen], watch: Callable[[], None]) -> dict[int, int]:
  """Waits until every process has ended well, or one has failed, calling
  watch() meanwhile; then the failed ones, {rank: exit status}."""
  while True:
    watch()
    codes = [p.poll() for p in processes]
    failed = {rank: code for rank, code in enumerate(codes) if code not in (None, 0)}
    if failed or all(code == 0 for code in codes):
      return failed
    time.sleep(0.1)


def check_config(script: str, args: list[str]) -> ml_collections.ConfigDict | None:
  """The run config, parsed as train.py will; None for --help (process 0 shows it)."""
  return None if cli.wants_help([script, *args]) else cli.parse_config([script, *args])


def training_began(process: subprocess.Popen, metrics: pathlib.Path | None) -> bool:
  """Whether process 0 has begun training: train.py opens out_dir/metrics.jsonl
  just before its first step, and keeps it open. Read from the process's open
  files (/proc), as it says nothing else the launcher can see."""
  if metrics is None:  # no run (--help)
    return False
  links = []
  with contextlib.suppress(OSError):  # the process ended
    for fd in pathlib.Path(f'/proc/{process.pid}/fd').iterdir():
      with contextlib.suppress(OSError):  # a file closed while the others were listed
        links.append(os.readlink(fd))
  return str(metrics) in links


def launch(nproc: int, script: str, process_args: Callable[[int], list[str]], log_dir: pathlib.Path | None,
           metrics: pathlib.Path | None) -> int:
  """Each process runs on its share of the cores (its CPU affinity), with
  XLA's thread pool sized to match (PJRT_NPROC): unpinned, each process's
  pool would take every core of the host, and the processes' threads
  would fight over them (docs/performance.md). Each runs in a session of
  its own: a Ctrl-C at the terminal reaches it through this process only,
  once (a second one would stop it at once, unsaved). metrics: process 0's
  metrics.jsonl, open once training began."""
  processes: list[subprocess.Popen] = []
  began = []  # True, once process 0 was seen training (until its end: its final save comes after metrics.jsonl)
  stopped_before_training = []  # the signal, when one came before training began

  def watch_training():
    if not began and processes and training_began(processes[0], metrics):
      began.append(True)

  def stop(signum, frame):
    """Once training began, the processes finish the same iteration and save a checkpoint. Before, there is
    nothing to save, and a process stopped while the others join, compile or wait for it in a collective would
    wait for them until jax.distributed's timeout (minutes) and end in XLA's fatal errors: all are stopped now."""
    watch_training()
    if stopped_before_training or not began:
      stopped_before_training.append(signum)
      for p in processes:
        if p.poll() is None:
          p.kill()
      return
    for p in processes:
      if p.poll() is None:
        p.send_signal(signum)

  # the terminal closed (SIGHUP, an ssh session dropped) stops the run as Ctrl-C: the processes, in sessions of
  # their own, would not hear it. Under nohup it stays ignored (as in the processes, which inherit that)
  previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
              if not (s == signal.SIGHUP and entry.ignored(s))}
  failed = {}
  try:
    for rank, (cores, log_path) in enumerate(zip(share_cores(nproc), log_paths(nproc, log_dir))):
      if stopped_before_training:
        break
      with open(log_path, 'wb') if log_path else contextlib.nullcontext() as log:  # each process holds its own
        processes.append(subprocess.Popen(
            [sys.executable, script, *process_args(rank)],
            stdout=log, stderr=subprocess.STDOUT if log else None, start_new_session=True,
            # unbuffered: a log holds every line up to a failure, in the order written
            env=os.environ | {'PJRT_NPROC': str(len(cores))} | ({'PYTHONUNBUFFERED': '1'} if log else {}),
            preexec_fn=lambda cores=cores: start_process(cores)))
    if not stopped_before_training:
      failed = wait(processes, watch_training)
  finally:
    # the others would wait for a failed one forever in their next collective; a moment first, for a mistake
    # each process finds alike to end each of them on its own (process 0 says it)
    deadline = time.monotonic() + (0 if stopped_before_training else FAILURE_GRACE_S)
    for p in processes:
      with contextlib.suppress(subprocess.TimeoutExpired):
        p.wait(timeout=max(0.0, deadline - time.monotonic()))
      if p.poll() is None:
        p.kill()
      p.wait()
    for s, handler in previous.items():
      signal.signal(s, handler)
  if stopped_before_training:
    if sys.stdout.isatty():  # process 0's progress bar, cut off: its line ended, the cursor it hid shown
      print('\x1b[?25h', flush=True)
    print('interrupted, before any checkpoint was saved', file=sys.stderr)
    return INTERRUPTED
  for rank, code in failed.items():
    log = log_paths(nproc, log_dir)[rank]
    if rank and code != INTERRUPTED and not said_by_process_0(code, processes[0].returncode, log):
      show_failure(rank, code, log)
  if not failed:
    return 0
  code = next(iter(failed.values()))
  return 128 - code if code < 0 else code  # killed by a signal: as a shell reports it


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(prog='python -m jaxgpt.launch', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--nproc', type=int, required=True, help='processes to start on this host')
  parser.add_argument('--log_dir', type=pathlib.Path,
                      help='the folder of the other processes\' rank<N>.log (default: a new temporary folder)')
  parser.add_argument('script', help='train.py')
  parser.add_argument('args', nargs=argparse.REMAINDER, help="the script's flags")
  args = parser.parse_args(argv[1:])
  if args.nproc < 1:
    parser.error(f'--nproc={args.nproc} must be >= 1')
  cores = len(os.sched_getaffinity(0))
  if args.nproc > cores:  # each process gets a core of its own at least
    parser.error(f'--nproc={args.nproc} is more than the {cores} CPUs this process may use')
  if not os.path.isfile(args.script):  # else each process would say so
    parser.error(f'{args.script} is not a file: give the path of train.py')
  if os.path.basename(args.script) != 'train.py':
    parser.error(f'{args.script} is not train.py: launch starts training processes only')
  given = sorted({arg.split('=')[0] for arg in args.args} & {f'{prefix}{key}' for prefix in ('--config.', '--')
                                                           for key in LAUNCH_KEYS})
  if given:
    parser.error(f'{", ".join(given)}: launch sets these itself; drop them')
  return entry.run(lambda: start(args), 'interrupted, before any checkpoint was saved', uses_jax=False)


def start(args: argparse.Namespace) -> int:
  """Checks the run config once, then starts the processes and waits for them."""
  address = f'127.0.0.1:{free_port()}'

  def process_args(rank: int) -> list[str]:
    return [*args.args, f'--config.coordinator_address={address}', f'--config.num_processes={args.nproc}',
            f'--config.process_id={rank}']

  config = check_config(args.script, process_args(0))  # a mistake in the flags said once, not by each process
  log_dir = None
  if args.nproc > 1:  # process 0 alone prints to the terminal
    try:
      log_dir = make_log_dir(args.log_dir)
    except OSError as e:
      raise JaxGPTError(f'cannot create --log_dir={args.log_dir} ({e.strerror}): pass a folder you can write '
                        'to') from None
    others = 'process 1' if args.nproc == 2 else f'processes 1-{args.nproc - 1}'
    print(f'the output of {others} goes to {log_dir / "rank1.log"}' +
          (f' ... rank{args.nproc - 1}.log' if args.nproc > 2 else ''), flush=True)
  metrics = pathlib.Path(config.out_dir, 'metrics.jsonl').resolve() if config else None
  return launch(args.nproc, args.script, process_args, log_dir, metrics)


if __name__ == '__main__':
  sys.exit(main(sys.argv))
