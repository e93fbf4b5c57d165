"""Start several training processes on this host, as `torchrun --standalone`:

  python -m jaxgpt.launch --nproc=2 train.py --config=configs/shakespeare_char.py

Each process runs the script with the given flags plus
--config.coordinator_address=127.0.0.1:PORT (a free port),
--config.num_processes and --config.process_id; they join into one set of
devices (jax.distributed) and train one model, data parallel, each on its
own share of the host's cores. Only process 0 prints. Ctrl-C (or SIGTERM)
reaches every process: they finish the same iteration and save one
checkpoint. When one process fails, the others are stopped; the exit status
is the first failure's.
"""

import argparse
import os
import signal
import socket
import subprocess
import sys
import time


LAUNCH_KEYS = ('coordinator_address', 'num_processes', 'process_id')  # what launch passes each process


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


def launch(nproc: int, script: str, args: list[str]) -> int:
  """Each process runs on its share of the cores (its CPU affinity), with
  XLA's thread pool sized to match (PJRT_NPROC): unpinned, each process's
  pool would take every core of the host, and the processes' threads
  would fight over them (docs/performance.md)."""
  address = f'127.0.0.1:{free_port()}'
  processes = [subprocess.Popen([sys.executable, script, *args, f'--config.coordinator_address={address}',
                                 f'--config.num_processes={nproc}', f'--config.process_id={i}'],
                                env=os.environ | {'PJRT_NPROC': str(len(cores))},
                                preexec_fn=lambda cores=cores: os.sched_setaffinity(0, cores))
               for i, cores in enumerate(share_cores(nproc))]

  def forward(signum, frame):
    for p in processes:
      if p.poll() is None:
        p.send_signal(signum)

  previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
  try:
    while True:
      codes = [p.poll() for p in processes]
      failed = [code for code in codes if code not in (None, 0)]
      if failed:  # the others would wait for it forever in their next collective
        for p in processes:
          if p.poll() is None:
            p.kill()
        return failed[0]
      if all(code == 0 for code in codes):
        return 0
      time.sleep(0.1)
  finally:
    for p in processes:
      if p.poll() is None:
        p.kill()
      p.wait()
    for s, handler in previous.items():
      signal.signal(s, handler)


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(prog='python -m jaxgpt.launch', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--nproc', type=int, required=True, help='processes to start on this host')
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
  return launch(args.nproc, args.script, args.args)


if __name__ == '__main__':
  sys.exit(main(sys.argv))
