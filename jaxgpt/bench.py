"""Benchmark jaxgpt's training, alone and against nanoGPT's, from the repository root:

  python -m jaxgpt.bench [--steps=300] [--config.compile=True] [--config.dtype=bfloat16]   # the train step
  python -m jaxgpt.bench --nanogpt [--iters=200] [--rounds=3] [--nanogpt_dir=PATH]   # nanoGPT's train.py too
  python -m jaxgpt.bench --nanogpt --cores=1,2,4   # the same once per core count: the ratio as cores grow
  python -m jaxgpt.bench --generate   # sampling speed, with and without the key/value cache
  python -m jaxgpt.bench --processes=2 [--iters=300]   # data parallel: 1 train.py against 2 launched, same tokens
  python -m jaxgpt.bench --memory [--iters=20] [--nanogpt_dir=PATH] [RECIPE ...]   # training runs' peak RSS
  python -m jaxgpt.bench --speedrun [--seeds=3] [--nanogpt_dir=PATH] [--runs_dir=PATH] [RECIPE] [--config.key=value]
  python -m jaxgpt.bench --budget=SECONDS [--seeds=3] [--runs_dir=PATH] [RECIPE] [--config.key=value]

Every ratio it prints reads the same way: `A / B` is A's time (or peak RSS)
over B's, the reference (nanoGPT; float32 against bfloat16; the fewest
cores; 1 process) above the line. "nanoGPT / float32: 2.00x" says that
nanoGPT's train.py takes twice as long an iteration as jaxgpt's in float32:
above 1, the one below the line is the faster (or smaller).

The config is the seed command's (SEED_COMMAND: configs/shakespeare_char.py
with 4 layers, 4 heads, 128 wide, block 64, batch 12, dropout 0), and any
further `--config.key=value` overrides it.

Without --nanogpt it times jaxgpt's train step in this process: the model,
optimizer and train step built as train.py builds them, fed random token
batches, in float32 and bfloat16 (or the --config.dtype given) by turns, 25
steps at a time, so that the comparison holds however fast the machine is
that minute. Prints the compile times, the median ms/iter over --steps
steps (each waited for), tokens/s and the peak RSS.

With --nanogpt it times whole training runs, each a child process: nanoGPT's
own train.py on the seed command in its spelling (NANOGPT_SEED_COMMAND)
against jaxgpt's train.py on SEED_COMMAND in each dtype, --iters iterations
each, by turns over --rounds rounds (the machine's speed drifts). The
nanoGPT checkout is --nanogpt_dir, else $JAXGPT_NANOGPT_DIR, else ../nanoGPT,
and is only read: its train.py, model.py, configurator.py, config/ and
data/shakespeare_char/prepare.py are copied into a temporary folder, with
data/shakespeare_char/input.txt of the current folder (jaxgpt prepares that
data set on first use, downloading input.txt), which nanoGPT's prepare.py
turns there into the same train.bin and val.bin as jaxgpt's (checked) and
its meta.pkl. Overrides of keys that nanoGPT's train.py has go to it too
(--key=value), but device, dtype and compile, which mean other things
there. A run's figure is the median of the `time` of its log lines
`iter N: loss X, time Yms` over iterations 5 to --iters, evaluated ones
left out: in both projects that time is the wall time from the end of one
iteration to the end of the next, the next batch's loading included; the
first five hold compiling and warm-up (nanoGPT's MFU leaves them out too);
nanoGPT's time of an evaluated iteration includes the evaluation, jaxgpt's
does not. Each kind's figure is the median of its runs'. Prints them,
nanoGPT / <dtype>, the CPU, its cores and the versions.

With --cores, one child process per core count runs the same (with
--nanogpt or without), pinned to that many cores (its CPU affinity, which
its own children inherit; XLA:CPU sizes its threads from it, as jaxgpt does
its step's threads, and OMP_NUM_THREADS sets PyTorch's to match), and a
table of the medians, nanoGPT / <dtype>, and each one's time on the fewest
cores over its time on these follows.

With --generate it times sampling instead: one prompt character,
block_size new tokens, 10 samples at once, after a warm-up run (so
compiling is left out). With --processes, the seed command in one train.py
against N processes of jaxgpt.launch, the same tokens a step.

With --memory it measures whole training runs instead, in the current
folder, for each RECIPE (default: configs/shakespeare_char.py and
configs/shakespeare_char_gpu.py): jaxgpt's train.py, then nanoGPT's own
train.py in a scratch checkout as --nanogpt lays it out (the recipe's
settings that differ from nanoGPT's defaults passed as --key=value, but
device, dtype and compile; it runs float32 and glibc's malloc defaults on
the CPU), one after the other in child processes, --iters iterations each
with eval_iters=1 and any `--config.key=value` passed to both. Prints each
run's peak RSS (ru_maxrss) and its RSS when it logged iterations 2 and
--iters, then a table of them with nanoGPT / jaxgpt, and the CPU. The GPU
recipe takes seconds an iteration and gigabytes on a laptop's CPU: try it
with --iters=2 first.

With --speedrun it runs the speedrun's pair: nanoGPT's own train.py on the
seed command (NANOGPT_SEED_COMMAND, its 2000 iterations), in a scratch
checkout as --nanogpt lays it out, then jaxgpt's train.py on RECIPE
(default: configs/shakespeare_char_speedrun.py, any `--config.key=value`
applied to it) once a seed, seeds 1337, 1338, ... (--seeds: 3, the median
of 3 being the record's). Each is a whole command in a child process, one
at a time, nanoGPT's first: one nanoGPT run gives the target, and the seeds
follow it at once, on the same cores in the same minutes. Each is timed
from its start to its exit, as /usr/bin/time counts it (start-up,
compiling, evaluations; the data set is prepared before, so no download),
and its peak RSS read. Then this process evaluates each run's model as
`python -m jaxgpt.evaluate MODEL --context=64` does, over the whole val
split: nanoGPT's ckpt.pt (its best by its own estimate), each jaxgpt
out_dir's best checkpoint. The runs use the compilation cache as a user's
do: a run of the same shapes finds the programs that an earlier one
compiled (the first seed's compiling may be the others' loading);
JAX_COMPILATION_CACHE_DIR='' times every run compiling. --iters=N cuts
nanoGPT's run to N iterations, evaluated and saved at N: a quick try,
whose loss is no target. Prints each run's command and, as it ends, its
figures; then a table of the runs (wall time, full-split val loss, the
iterations run, what stopped it: its target_val_loss, its time_limit or
the end of its schedule, peak RSS), the seeds' median wall time and loss
with their spread (min-max), nanoGPT's, `nanoGPT / jaxgpt speedrun: N.NNx`
(nanoGPT's wall time over the seeds' median), whether every seed's loss is
at or below nanoGPT's, the CPU, its cores and the versions. The runs'
out_dirs are made in --runs_dir and kept (nanoGPT, seed-1337, ...), else
in a temporary folder.

With --budget=SECONDS it runs RECIPE once a seed as --speedrun does,
without nanoGPT, with --config.time_limit=SECONDS and no target
(target_val_loss=0): the loss a budget of that many seconds reaches. A run
stops after the first iteration past the limit, evaluated and saved there,
or at its max_iters (RECIPE's schedule should fill the budget).

The figures measured so far, with their machines: docs/performance.md and
the README.
"""

import argparse
import contextlib
import dataclasses
import filecmp
import math
import os
import pathlib
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator

import jax
import ml_collections
import numpy as np

from jaxgpt import cli, entry, evaluate, nanogpt_torch, parallel, prepare, runtime
from jaxgpt.config import base_config
from jaxgpt.errors import JaxGPTError, optional_import
from jaxgpt.generate import Generator
from jaxgpt.optim import make_optimizer
from jaxgpt.model import GPTConfig
from jaxgpt.step import init_model, make_train_step
from jaxgpt.runtime import pin_device

REPOSITORY = pathlib.Path(__file__).parents[1]
SEED_COMMAND = [f'--config={REPOSITORY / "configs" / "shakespeare_char.py"}', '--config.device=cpu', '--config.compile=False',
                '--config.eval_iters=20', '--config.log_interval=1', '--config.block_size=64',
                '--config.batch_size=12', '--config.n_layer=4', '--config.n_head=4',
                '--config.n_embd=128', '--config.max_iters=2000', '--config.lr_decay_iters=2000',
                '--config.dropout=0.0']
# the same in nanoGPT's spelling, as its README runs train.py on a CPU
NANOGPT_SEED_COMMAND = ['config/train_shakespeare_char.py', '--device=cpu', '--compile=False', '--eval_iters=20',
                        '--log_interval=1', '--block_size=64', '--batch_size=12', '--n_layer=4', '--n_head=4',
                        '--n_embd=128', '--max_iters=2000', '--lr_decay_iters=2000', '--dropout=0.0']
# keys nanoGPT's train.py has but takes for other things, never passed on to it: compile is torch.compile,
# device is 'cuda' or 'cpu' (the bench passes --device=cpu), and on the CPU it runs float32 whatever its dtype
NOT_PASSED_ON = frozenset({'device', 'dtype', 'compile'})
SHAKESPEARE_VOCAB_SIZE = 65
NANOGPT = 'nanoGPT'
TRAIN_PY = REPOSITORY / 'train.py'
NANOGPT_ITERS, RUN_ITERS = 200, 20  # --iters' defaults: --nanogpt's, --memory's and --processes'
MEMORY_RECIPES = [str(REPOSITORY / 'configs' / name) for name in ('shakespeare_char.py', 'shakespeare_char_gpu.py')]
SPEEDRUN_RECIPE = str(REPOSITORY / 'configs' / 'shakespeare_char_speedrun.py')
SEED_ITERS = 2000  # the seed command's max_iters: --speedrun's nanoGPT run
FIRST_SEED = 1337  # base_config's and nanoGPT's: --speedrun's runs take seeds 1337, 1338, ...
SPEEDRUN_CONTEXT = 64  # the windows of the speedrun's full-split val loss: the seed model's block_size
# Starts argv[2:] and writes to file descriptor argv[1] its pid, then its exit
# status and peak RSS (wait4's ru_maxrss, KB on Linux). A child's ru_maxrss
# starts at its parent's high-water RSS (Linux carries it through fork and
# exec), and this process holds jax and torch: a small python starts the runs.
START = ('import os, sys; fd, args = int(sys.argv[1]), sys.argv[2:]; pid = os.fork()\n'
         'if pid == 0: os.execv(args[0], args)\n'
         'os.write(fd, b"%d\\n" % pid); _, status, usage = os.wait4(pid, 0)\n'
         'os.write(fd, b"%d %d\\n" % (os.waitstatus_to_exitcode(status), usage.ru_maxrss))')


def bench_generate(graphdef, params, config) -> None:
  """Tokens/s of sampling the seed model, with and without the cache."""
  generate = Generator(graphdef, params, config, temperature=0.8, top_k=200)
  prompt = np.zeros((10, 1), np.int32)
  new_tokens = config.block_size - 1  # the whole context, where the cache applies
  for use_cache in (True, False):
    generate(prompt, new_tokens, seed=0, use_cache=use_cache)  # compiles
    t0 = time.perf_counter()
    generate(prompt, new_tokens, seed=0, use_cache=use_cache)
    seconds = time.perf_counter() - t0
    print(f'{"with" if use_cache else "without"} the key/value cache: '
          f'{prompt.shape[0] * new_tokens / seconds:,.0f} tokens/s '
          f'({prompt.shape[0]} samples x {new_tokens} tokens in {seconds:.2f} s)')


def build_step(c, dtype: str):
  """The seed model's train step in dtype, as train.py builds it (its rows
  over threads where the cores allow), compiled, with its state and a fixed
  random batch: run(i) does iteration i. Returns (run, compile seconds)."""
  config = GPTConfig.from_run_config(c, SHAKESPEARE_VOCAB_SIZE)
  config = dataclasses.replace(config, dtype=dtype)
  _, graphdef, params = init_model(config, c.seed)
  tx = make_optimizer(c)
  state = [params, tx.init(params)]
  step = make_train_step(c, graphdef, tx, parallel.make_mesh(), runtime.compiler_options(dtype, config.n_embd))
  rng = np.random.default_rng(0)
  shape = (c.gradient_accumulation_steps, c.batch_size, c.block_size)
  xs, ys = (rng.integers(0, SHAKESPEARE_VOCAB_SIZE, shape, dtype=np.int32) for _ in range(2))

  def run(i: int) -> None:
    state[0], state[1], metrics = step(state[0], state[1], xs, ys, i)
    jax.block_until_ready(metrics)

  t0 = time.perf_counter()
  run(0)
  return run, time.perf_counter() - t0


@dataclasses.dataclass
class Measured:
  peak_kb: int  # the child's ru_maxrss
  rss_kb: dict[int, int]  # its VmRSS when its `iter K:` line came, by K
  seconds: float  # from its start to its exit, as /usr/bin/time counts them
  lines: list[str]  # its stdout


def rss_kb(pid: int) -> int | None:
  """A running process's resident set (VmRSS) in KB; None once it has exited."""
  try:
    with open(f'/proc/{pid}/status') as f:
      return next((int(line.split()[1]) for line in f if line.startswith('VmRSS:')), None)
  except OSError:
    return None


def measure(name: str, args: list[str], cwd: pathlib.Path | None = None) -> Measured:
  """Runs args in cwd, reading its stdout line by line, to the end; a failure
  is a JaxGPTError that shows the end of its stderr."""
  t0 = time.perf_counter()
  report_fd, write_fd = os.pipe()
  with tempfile.TemporaryFile('w+') as stderr, os.fdopen(report_fd) as report:
    # unbuffered: each `iter K:` line arrives as it is printed, and the RSS read then is that iteration's
    starter = subprocess.Popen([sys.executable, '-S', '-c', START, str(write_fd), *args], pass_fds=[write_fd],
                               cwd=cwd, stdout=subprocess.PIPE, stderr=stderr, text=True,
                               env=os.environ | {'PYTHONUNBUFFERED': '1'})
    os.close(write_fd)
    pid = int(report.readline())
    rss, lines = {}, []
    with starter.stdout:
      for line in starter.stdout:
        lines.append(line.rstrip('\n'))
        if (m := re.match(r'iter (\d+):', line)) and (kb := rss_kb(pid)) is not None:
          rss[int(m[1])] = kb
    status, peak_kb = map(int, report.readline().split())
    starter.wait()
    if status:
      stderr.seek(0)
      tail = '\n'.join(stderr.read().splitlines()[-15:])
      raise JaxGPTError(f'{name} failed (exit status {status}), its stderr ending:\n{tail}')
  return Measured(peak_kb, rss, time.perf_counter() - t0, lines)


def mb(kb: int | None) -> str:
  return '-' if kb is None else f'{kb / 1024:,.0f} MB'


def cpu_name() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      return next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
  except (OSError, StopIteration):
    return platform.processor() or 'unknown CPU'


def bench_memory(recipes: list[str], iters: int, overrides: list[str], nanogpt_dir: str | None) -> None:
  """Peak RSS of jaxgpt's train.py and of nanoGPT's (of the checkout in
  nanogpt_dir) on each recipe, one run after another."""
  torch = optional_import('torch', '--memory', 'torch')
  flags = {recipe: [f'--config={recipe}', '--config.device=cpu', f'--config.max_iters={iters}',
                    '--config.eval_iters=1', '--config.log_interval=1', *overrides] for recipe in recipes}
  # a typo answers now, not after minutes of runs
  settings = {recipe: cli.parse_config(['bench'] + recipe_flags) for recipe, recipe_flags in flags.items()}
  runs = {}
  with nanogpt_checkout(nanogpt_dir, settings.values()) as (nanogpt, keys):
    for recipe, recipe_flags in flags.items():
      with tempfile.TemporaryDirectory() as out_dir:
        # base_config: nanoGPT's defaults
        nanogpt_flags = ['--device=cpu', '--compile=False', *changed_settings(settings[recipe], base_config(), keys)]
        commands = {'jaxgpt': ([sys.executable, str(TRAIN_PY), *recipe_flags, f'--config.out_dir={out_dir}'], None),
                    NANOGPT: ([sys.executable, 'train.py', *nanogpt_flags], nanogpt)}
        for name, (args, cwd) in commands.items():
          label = f'{pathlib.Path(recipe).name}, {name}'
          m = runs[recipe, name] = measure(label, args, cwd)
          print(f'{label}: peak RSS {mb(m.peak_kb)}; RSS {mb(m.rss_kb.get(2))} at iter 2, '
                f'{mb(m.rss_kb.get(iters))} at iter {iters}; {m.seconds:.0f} s', flush=True)
  print(f'\n| recipe | jaxgpt peak RSS | nanoGPT peak RSS | nanoGPT / jaxgpt | jaxgpt RSS at iter 2, {iters} '
        f'| nanoGPT RSS at iter 2, {iters} |')
  print('| --- | ---: | ---: | ---: | ---: | ---: |')
  for recipe in recipes:
    jaxgpt, nanogpt = runs[recipe, 'jaxgpt'], runs[recipe, NANOGPT]
    cells = [pathlib.Path(recipe).name, mb(jaxgpt.peak_kb), mb(nanogpt.peak_kb),
             f'{nanogpt.peak_kb / jaxgpt.peak_kb:.2f}x',
             *(f'{mb(m.rss_kb.get(2))}, {mb(m.rss_kb.get(iters))}' for m in (jaxgpt, nanogpt))]
    print(f'| {" | ".join(cells)} |')
  print("\nnanoGPT / jaxgpt: nanoGPT's peak RSS over jaxgpt's (above 1, jaxgpt needs less)")
  print(f'{cpu_name()}, {len(os.sched_getaffinity(0))} cores; {iters} iterations, eval_iters=1; '
        f'jax {jax.__version__}, PyTorch {torch.__version__} (eager), Python {platform.python_version()}')


# -- nanoGPT's own train.py against jaxgpt's -------------------------------------


@contextlib.contextmanager
def nanogpt_checkout(nanogpt_dir: str | None, runs) -> Iterator[tuple[pathlib.Path, set[str]]]:
  """A scratch nanoGPT checkout (nanogpt_torch.lay_out) of the one in
  nanogpt_dir, which is only read, that trains on data/shakespeare_char of
  the current folder (prepared first where it is not), and the config keys
  of its train.py; removed afterwards. runs: the run configs it is for."""
  files = nanogpt_torch.train_files(nanogpt_dir)  # a missing checkout answers before anything is done
  for c in runs:
    if c.dataset != 'shakespeare_char':
      raise JaxGPTError(f"dataset={c.dataset}: the bench runs nanoGPT's train.py on shakespeare_char, the data set "
                        'its prepare.py is copied for; leave dataset out')
  here = prepare.ensure_prepared('shakespeare_char')
  if not (here / 'input.txt').is_file():
    raise JaxGPTError(f'{here / "input.txt"} not found, from which nanoGPT\'s prepare.py makes its data set: put tiny '
                      f'Shakespeare there ({prepare.SHAKESPEARE_URL})')
  with tempfile.TemporaryDirectory(prefix='nanogpt-') as folder:
    nanogpt = nanogpt_torch.lay_out(pathlib.Path(folder), files, here / 'input.txt')
    for name in ('train.bin', 'val.bin'):
      if not filecmp.cmp(nanogpt / 'data' / 'shakespeare_char' / name, here / name, shallow=False):
        raise JaxGPTError(f"nanoGPT's prepare.py made another {name} from {here / 'input.txt'} than the one there: "
                          'prepare it afresh with python -m jaxgpt.data shakespeare_char --overwrite')
    yield nanogpt, nanogpt_torch.config_keys(files['train.py'])


def changed_settings(c: ml_collections.ConfigDict, reference: ml_collections.ConfigDict, keys: set[str]) -> list[str]:
  """The settings of c that differ from reference's, as nanoGPT's train.py
  flags (--key=value): those of its keys (keys) but NOT_PASSED_ON."""
  return [f'--{key}={c[key]}' for key in c if key in keys - NOT_PASSED_ON and c[key] != reference[key]]


FIRST_TIMED_ITER = 5  # the iterations before it hold compiling and warm-up
ITER_TIME = re.compile(r'^iter (\d+): loss [\d.]+, time ([\d.]+)ms')
EVALUATION = re.compile(r'^step (\d+): train loss')


def median_iteration(name: str, args: list[str], cwd: pathlib.Path | None = None) -> tuple[float, int]:
  """Runs args (a train.py's command line) in cwd to the end: the median
  time of its logged iterations from FIRST_TIMED_ITER on, evaluated ones
  left out, in ms, and how many they are. A failure is a JaxGPTError with
  its last line."""
  proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
  if proc.returncode:
    raise JaxGPTError(f'{name} failed: {(proc.stderr.strip().splitlines() or ["no message"])[-1]}')
  lines = proc.stdout.splitlines()
  evaluated = {int(m[1]) for m in map(EVALUATION.match, lines) if m}
  times = [float(m[2]) for m in map(ITER_TIME.match, lines)
           if m and int(m[1]) >= FIRST_TIMED_ITER and int(m[1]) not in evaluated]
  if not times:
    raise JaxGPTError(f'{name} logged no iteration from {FIRST_TIMED_ITER} on: its output ended {lines[-3:]}')
  return float(np.median(times)), len(times)


def with_max_iters(flags: list[str], iters: int) -> list[str]:
  """The seed command's flags with its max_iters=2000 made iters, in either spelling."""
  return [re.sub(r'max_iters=\d+$', f'max_iters={iters}', flag) for flag in flags]


def bench_nanogpt(nanogpt_dir: str | None, iters: int, rounds: int, overrides: list[str],
                  overridden: frozenset[str]) -> None:
  """nanoGPT's own train.py against jaxgpt's, on the seed command, by turns."""
  torch = optional_import('torch', '--nanogpt', 'torch')
  c = cli.parse_config(['bench'] + SEED_COMMAND + overrides)  # a typo answers now, not after minutes of runs
  dtypes = [c.dtype] if 'dtype' in overridden else ['float32', 'bfloat16']
  seed = cli.parse_config(['bench'] + SEED_COMMAND)
  with nanogpt_checkout(nanogpt_dir, [c]) as (nanogpt, keys):
    nanogpt_args = ['train.py', *with_max_iters(NANOGPT_SEED_COMMAND, iters), *changed_settings(c, seed, keys)]
    jaxgpt_args = [str(TRAIN_PY), *with_max_iters(SEED_COMMAND, iters), *overrides]
    print(f"{NANOGPT}: {nanogpt_torch.find('train.py', nanogpt_dir)}, run in a scratch copy of its checkout as\n"
          f"  python {' '.join(nanogpt_args)} --out_dir=TEMP")
    print(f"jaxgpt: python {' '.join(jaxgpt_args)} --config.out_dir=TEMP --config.dtype={'|'.join(dtypes)}", flush=True)
    # each run's command line but its out_dir, where it runs, and how it names its out_dir
    commands = {NANOGPT: ([sys.executable, *nanogpt_args], nanogpt, '--out_dir')} | \
               {dtype: ([sys.executable, *jaxgpt_args, f'--config.dtype={dtype}'], None, '--config.out_dir')
                for dtype in dtypes}
    medians, counts = {name: [] for name in commands}, {}
    for turn in range(1, rounds + 1):
      for name, (args, cwd, out_dir_flag) in commands.items():
        with tempfile.TemporaryDirectory() as out_dir:  # a fresh one: jaxgpt's train.py refuses one holding a run
          ms, counts[name] = median_iteration(name, [*args, f'{out_dir_flag}={out_dir}'], cwd)
        medians[name].append(ms)
      print(f'round {turn} of {rounds}: ' + ', '.join(f'{name} {m[-1]:.2f}' for name, m in medians.items()) +
            ' ms/iter', flush=True)
  for name, m in medians.items():
    print(f'{name}: median {np.median(m):.2f} ms/iter (the median of {rounds} runs\' medians, each over iterations '
          f'{FIRST_TIMED_ITER} to {iters}, {counts[name]} timed)')
  print(', '.join(f'{NANOGPT} / {dtype}: {np.median(medians[NANOGPT]) / np.median(medians[dtype]):.2f}x'
                  for dtype in dtypes) + " (nanoGPT's time over jaxgpt's: above 1, jaxgpt is the faster)")
  print(f'{cpu_name()}, {len(os.sched_getaffinity(0))} cores; jax {jax.__version__}, PyTorch {torch.__version__} '
        f'(eager), Python {platform.python_version()}')


# -- the speedrun: nanoGPT's seed command against a recipe, whole commands ----------


@dataclasses.dataclass
class Run:
  """A whole training command's figures, and its model's loss over the whole val split."""
  name: str
  seconds: float  # start to exit
  peak_kb: int
  evaluation: evaluate.Evaluation
  iterations: int  # the iteration it stopped at, or its max_iters
  stopped_by: str  # 'target', 'time' or 'end'


# train.py's last line when target_val_loss or time_limit ends a run (Trainer.stop_here)
STOPPED = re.compile(r'^(val loss [\d.]+ is at or below target_val_loss|time_limit)=.*: stopped at iteration (\d+), '
                     'saved in ')


def how_it_ended(lines: list[str], max_iters: int) -> tuple[int, str]:
  """(the iteration it stopped at, what stopped it) of a run that printed lines: its target, its time limit, or
  the end of its schedule."""
  for line in reversed(lines):
    if m := STOPPED.match(line):
      return int(m[2]), 'time' if m[1] == 'time_limit' else 'target'
  return max_iters, 'end'


def run_and_evaluate(name: str, args: list[str], cwd: pathlib.Path | None, model: pathlib.Path,
                     max_iters: int) -> Run:
  """Runs a training command (args) in cwd to its end, then evaluates the model it saved at model (an out_dir, or
  nanoGPT's ckpt.pt) over the whole val split at a context of SPEEDRUN_CONTEXT."""
  m = measure(name, args, cwd)
  if model.suffix == '.pt' and not model.is_file():
    raise JaxGPTError(f"{name} saved no {model}: nanoGPT saves its ckpt.pt at an evaluation after iteration 0 "
                      'whose val loss is its best yet; give it more --iters')
  evaluation = evaluate.evaluate(str(model), context=SPEEDRUN_CONTEXT)
  run = Run(name, m.seconds, m.peak_kb, evaluation, *how_it_ended(m.lines, max_iters))
  print(f'{name}: {run.seconds:.1f} s, peak RSS {mb(run.peak_kb)}, stopped by {run.stopped_by} at iteration '
        f'{run.iterations}; {evaluation.line()}', flush=True)
  return run


@contextlib.contextmanager
def runs_folder(runs_dir: str | None, names: list[str]) -> Iterator[pathlib.Path]:
  """The folder where each run's out_dir is made, one per name: runs_dir, kept, whose run folders must not exist
  yet; else a temporary one, removed afterwards."""
  if runs_dir is None:
    with tempfile.TemporaryDirectory(prefix='speedrun-') as folder:
      yield pathlib.Path(folder)
    return
  folder = pathlib.Path(runs_dir).absolute()
  if taken := [name for name in names if (folder / name).exists()]:
    raise JaxGPTError(f'{folder / taken[0]} exists: each run needs a fresh out_dir, pass another --runs_dir')
  folder.mkdir(parents=True, exist_ok=True)
  yield folder


def bench_speedrun(recipe: str, seeds: int, iters: int, overrides: list[str], overridden: frozenset[str],
                   nanogpt_dir: str | None, runs_dir: str | None, budget: float | None) -> None:
  """nanoGPT's seed command (unless budget), then jaxgpt's train.py on recipe once a seed, each a whole command
  in a child process, each model evaluated over the whole val split; their table."""
  if 'seed' in overridden:
    raise JaxGPTError(f'--config.seed: the bench gives each run its seed ({FIRST_SEED} on, --seeds of them): '
                      'leave it out')
  limits = [] if budget is None else [f'--config.time_limit={budget:g}', '--config.target_val_loss=0']
  flags = [f'--config={recipe}', *overrides, *limits]
  c = cli.parse_config(['bench'] + flags)  # a typo answers now, not after minutes of runs
  names = [f'seed-{seed}' for seed in range(FIRST_SEED, FIRST_SEED + seeds)]
  with contextlib.ExitStack() as stack:
    torch, nanogpt_run = None, None
    if budget is None:
      torch = optional_import('torch', '--speedrun', 'torch')
      nanogpt, _ = stack.enter_context(nanogpt_checkout(nanogpt_dir, [c]))  # the data set prepared, and checked
    else:
      prepare.ensure_prepared(c.dataset)  # before the runs: their times leave the download out
    folder = stack.enter_context(runs_folder(runs_dir, ([NANOGPT] if budget is None else []) + names))
    runtime.pin_device('cpu')  # the evaluations, in this process
    if budget is None:
      nanogpt_run = run_nanogpt_seed_command(nanogpt, nanogpt_dir, iters, folder / NANOGPT)
    runs = []
    for seed, name in zip(range(FIRST_SEED, FIRST_SEED + seeds), names):
      args = [str(TRAIN_PY), *flags, f'--config.seed={seed}', f'--config.out_dir={folder / name}']
      print(f"{name}: python {' '.join(args)}, then\n  python -m jaxgpt.evaluate {folder / name} "
            f'--context={SPEEDRUN_CONTEXT}', flush=True)
      runs.append(run_and_evaluate(name, [sys.executable, *args], None, folder / name, c.max_iters))
  print_speedrun(runs, nanogpt_run)
  print(f'{cpu_name()}, {len(os.sched_getaffinity(0))} cores; jax {jax.__version__}, ' +
        (f'PyTorch {torch.__version__} (eager), ' if torch else '') + f'Python {platform.python_version()}')


def run_nanogpt_seed_command(nanogpt: pathlib.Path, nanogpt_dir: str | None, iters: int, out_dir: pathlib.Path) -> Run:
  """nanoGPT's own train.py on the seed command, cut to iters iterations, in its scratch checkout (nanogpt), and
  the loss of the ckpt.pt it saves in out_dir."""
  args = ['train.py', *with_max_iters(NANOGPT_SEED_COMMAND, iters)]
  if iters != SEED_ITERS:  # its evaluation every 250 iterations would miss the end: one there, which saves ckpt.pt
    args.append(f'--eval_interval={iters}')
  args.append(f'--out_dir={out_dir}')
  print(f"{NANOGPT}: python {' '.join(args)}\n  in a scratch copy of the checkout of "
        f"{nanogpt_torch.find('train.py', nanogpt_dir)}, then\n  python -m jaxgpt.evaluate {out_dir / 'ckpt.pt'} "
        f'--context={SPEEDRUN_CONTEXT}', flush=True)
  return run_and_evaluate(NANOGPT, [sys.executable, *args], nanogpt, out_dir / 'ckpt.pt', iters)


def print_speedrun(runs: list[Run], nanogpt: Run | None) -> None:
  """One row a run, then the seeds' medians and spreads, and against nanoGPT's run (where there is one) the
  ratio of the wall times and whether every seed's loss is at or below nanoGPT's."""
  print(f'\n| run | wall s | val loss (whole split, context {SPEEDRUN_CONTEXT}) | iterations | stopped by | '
        'peak RSS |\n| --- | ---: | ---: | ---: | --- | ---: |')
  for run in ([nanogpt] if nanogpt else []) + runs:
    print(f'| {run.name} | {run.seconds:.1f} | {run.evaluation.loss:.4f} | {run.iterations} | {run.stopped_by} | '
          f'{mb(run.peak_kb)} |')
  seconds, losses = [run.seconds for run in runs], [run.evaluation.loss for run in runs]
  print(f'\njaxgpt: median {np.median(seconds):.1f} s ({min(seconds):.1f}-{max(seconds):.1f}), val loss median '
        f'{np.median(losses):.4f} ({min(losses):.4f}-{max(losses):.4f}) over {len(runs)} seed(s)')
  if nanogpt is None:
    return
  target = nanogpt.evaluation.loss
  print(f'{NANOGPT}: {nanogpt.seconds:.1f} s, val loss {target:.4f}')
  print(f'{NANOGPT} / jaxgpt speedrun: {nanogpt.seconds / np.median(seconds):.2f}x (nanoGPT\'s wall time over '
        "jaxgpt's median: above 1, jaxgpt is the faster)")
  above = [f'{run.name} {run.evaluation.loss:.4f}' for run in runs if run.evaluation.loss > target]
  print(f"every seed's val loss at or below nanoGPT's {target:.4f}: " +
        (f'no ({", ".join(above)})' if above else 'yes'))


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(prog='python -m jaxgpt.bench', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--steps', type=int, default=300, help='timed steps of each kind, after 5 warm-up steps')
  parser.add_argument('--nanogpt', action='store_true',
                      help="time nanoGPT's own train.py against jaxgpt's, on the seed command, by turns")
  parser.add_argument('--nanogpt_dir', help="the nanoGPT checkout whose train.py --nanogpt, --memory and "
                      "--speedrun run, in a scratch copy (default: $JAXGPT_NANOGPT_DIR, else ../nanoGPT)")
  parser.add_argument('--generate', action='store_true', help='time sampling instead of training')
  parser.add_argument('--memory', action='store_true',
                      help="peak RSS of jaxgpt's train.py and of nanoGPT's, in child processes, per RECIPE")
  parser.add_argument('--iters', type=int, help=f'iterations of each run: {NANOGPT_ITERS} with --nanogpt, '
                      f'{RUN_ITERS} with --memory or --processes; of nanoGPT\'s run with --speedrun, {SEED_ITERS} '
                      '(fewer: a quick try, evaluated at its end, whose loss is no target)')
  parser.add_argument('--speedrun', action='store_true', help="nanoGPT's seed command, then RECIPE (default: "
                      'configs/shakespeare_char_speedrun.py) once a seed: whole commands, full-split val losses')
  parser.add_argument('--budget', type=float, metavar='SECONDS', help="RECIPE once a seed, stopped after the first "
                      'iteration past SECONDS (time_limit), no target: the loss a budget reaches')
  parser.add_argument('--seeds', type=int, default=3, help=f'runs of RECIPE with --speedrun or --budget, seeds '
                      f'{FIRST_SEED}, {FIRST_SEED + 1}, ... (default: 3)')
  parser.add_argument('--runs_dir', help='with --speedrun or --budget, the folder where each run\'s out_dir is made '
                      '(nanoGPT, seed-1337, ...) and kept (default: a temporary folder, removed)')
  parser.add_argument('--processes', type=int, help='N: the seed step in 1 train.py process against N started by '
                      'jaxgpt.launch, the same tokens a step')
  parser.add_argument('--rounds', type=int, default=3, help='turns of each --nanogpt or --processes run')
  parser.add_argument('--cores', type=core_counts, help='e.g. 1,2,4: the same (with --nanogpt or without) once per '
                      'core count, each in a child process pinned to that many cores')
  args, overrides = parser.parse_known_args(argv[1:])
  if args.iters is None:
    args.iters = NANOGPT_ITERS if args.nanogpt else SEED_ITERS if args.speedrun else RUN_ITERS
  for flag in ('steps', 'iters', 'rounds', 'seeds'):
    if getattr(args, flag) < 1:
      parser.error(f'--{flag}={getattr(args, flag)} must be >= 1')
  if args.nanogpt and args.iters < FIRST_TIMED_ITER:
    parser.error(f'--iters={args.iters}: --nanogpt times iterations {FIRST_TIMED_ITER} on, so it needs at least '
                 f'{FIRST_TIMED_ITER}')
  runs = [flag for flag in ('nanogpt', 'memory', 'generate', 'processes', 'cores') if getattr(args, flag)]
  if (args.speedrun or args.budget is not None) and runs:
    parser.error(f'--speedrun and --budget run whole commands: leave out --{runs[0]}')
  if args.speedrun and args.budget is not None:
    parser.error('--budget runs RECIPE alone, --speedrun nanoGPT against it: pass one of the two')
  if args.budget is not None and args.budget <= 0:
    parser.error(f'--budget={args.budget:g} must be > 0 seconds')
  if args.nanogpt and (args.generate or args.processes):
    parser.error('--nanogpt times training runs: leave out --generate and --processes')
  if args.processes is not None and not 2 <= args.processes <= len(os.sched_getaffinity(0)):
    parser.error(f'--processes={args.processes} must be 2 to the {len(os.sched_getaffinity(0))} CPUs this process may use')
  if args.cores and (args.memory or args.generate):
    parser.error('--cores times the train step: leave out --memory and --generate')
  if args.cores:
    # the same command line for each child, without --cores=N,.. (or --cores N,..)
    at = next(i for i, arg in enumerate(argv) if arg.startswith('--cores'))
    child_argv = argv[1:at] + argv[at + (1 if '=' in argv[at] else 2):]
    return entry.run(lambda: bench_cores(args.cores, child_argv), 'interrupted: nothing was measured')
  return entry.run(lambda: bench(args, overrides, cli.overridden_keys(argv)), 'interrupted: nothing was measured')


def core_counts(text: str) -> list[int]:
  """--cores=1,2,4 as [1, 2, 4]; each at least 1 and at most the CPUs this process may use."""
  usable = len(os.sched_getaffinity(0))
  try:
    counts = [int(part) for part in text.split(',')]
  except ValueError:
    raise argparse.ArgumentTypeError(f'{text!r} is not a list of core counts: pass e.g. --cores=1,2') from None
  if not all(1 <= n <= usable for n in counts):
    raise argparse.ArgumentTypeError(f'{text}: each core count must be 1 to {usable}, the CPUs this process may use')
  return counts


MEDIAN_LINE = re.compile(r'^(.+?): median ([\d.]+) ms/iter')


def bench_cores(counts: list[int], child_argv: list[str]) -> None:
  """The same bench (the train steps by turns, or with --nanogpt the runs)
  once per core count, each in a child process whose CPU affinity is that
  many cores (its own children inherit it): XLA:CPU sizes its thread pool
  from the affinity, and PyTorch's and OpenMP's thread counts are set to
  match. Prints each child's medians, then one row per core count."""
  cpus = sorted(os.sched_getaffinity(0))
  rows = {}
  for n in counts:
    threads = {name: str(n) for name in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS')}
    proc = subprocess.run([sys.executable, '-m', 'jaxgpt.bench', *child_argv], env=os.environ | threads,
                          preexec_fn=lambda n=n: os.sched_setaffinity(0, cpus[:n]), capture_output=True, text=True)
    if proc.returncode:
      raise JaxGPTError(f'the run on {n} core(s) failed: {(proc.stderr.strip().splitlines() or ["no message"])[-1]}')
    if f', {n} cores' not in proc.stdout:  # the child's config line says how many cores it ran on
      raise JaxGPTError(f'the run meant for {n} core(s) did not run on them: {proc.stdout[-300:]}')
    rows[n] = {m[1]: float(m[2]) for m in map(MEDIAN_LINE.match, proc.stdout.splitlines()) if m}
    print(f'{n} core(s): ' + ', '.join(f'{name} {ms:.2f} ms/iter' for name, ms in rows[n].items()), flush=True)
  names = list(next(iter(rows.values())))
  jaxgpt_names = [name for name in names if name != NANOGPT]
  speedups = [f'{NANOGPT} / {name}' for name in jaxgpt_names] if NANOGPT in names else []
  fewest = min(rows)  # scaling: each one's time on the fewest cores over its own on these
  scalings = [f'{name} on {fewest} / on these' for name in names]
  print(f'\n{cpu_name()}, {len(cpus)} CPUs usable; jax {jax.__version__}')
  print('| cores | ' + ' | '.join(f'{name} ms/iter' for name in names) + ''.join(f' | {s}' for s in speedups) +
        ''.join(f' | {s}' for s in scalings) + ' |')
  print('| ---: |' + ' ---: |' * (len(names) + len(speedups) + len(scalings)))
  for n, medians in rows.items():
    ratios = [f'{medians[NANOGPT] / medians[name]:.2f}x' for name in jaxgpt_names] if speedups else []
    scaled = [f'{rows[fewest][name] / medians[name]:.2f}x' for name in names]
    print(f'| {n} | ' + ' | '.join(f'{medians[name]:.2f}' for name in names) + ''.join(f' | {r}' for r in ratios) +
          ''.join(f' | {x}' for x in scaled) + ' |')
  if speedups:
    print(f"\n{NANOGPT} / <dtype>: nanoGPT's time over jaxgpt's (above 1, jaxgpt is the faster)")
  print(f'<name> on {fewest} / on these: its time on {fewest} core(s) over its time on these (above 1, faster on '
        'these)')


def bench_processes(nproc: int, iters: int, rounds: int, overrides: list[str]) -> None:
  """The seed command's iterations in one train.py process against nproc
  processes started by `python -m jaxgpt.launch`, with the same tokens a
  step: each of the nproc takes batch_size / nproc rows of every micro-batch
  (gradient_accumulation_steps times nproc, as nanoGPT counts it over its
  world). By turns, `rounds` times; each run's median iteration time, from
  its log (iteration 0 and the evaluation left out). Reads data/ in the
  current folder, as train.py does (it prepares it on first use)."""
  c = cli.parse_config(['bench'] + SEED_COMMAND + overrides)
  if c.batch_size % nproc:
    raise JaxGPTError(f'--processes={nproc}: batch_size={c.batch_size} does not split across that many processes')
  common = SEED_COMMAND + overrides + [f'--config.max_iters={iters}', '--config.eval_iters=1',
                                       '--config.eval_interval=100000', '--config.log_interval=1']
  split = [f'--config.batch_size={c.batch_size // nproc}',
           f'--config.gradient_accumulation_steps={c.gradient_accumulation_steps * nproc}']
  commands = {'1 process': [str(TRAIN_PY), *common],
              f'{nproc} processes': ['-m', 'jaxgpt.launch', f'--nproc={nproc}', str(TRAIN_PY), *common, *split]}
  medians = {name: [] for name in commands}
  for _ in range(rounds):
    for name, command in commands.items():
      with tempfile.TemporaryDirectory() as out_dir:  # the launcher's logs of processes 1.. go there too
        launcher_logs = [f'--log_dir={out_dir}'] if 'jaxgpt.launch' in command else []
        command = command[:2] + launcher_logs + command[2:]
        proc = subprocess.run([sys.executable, *command, f'--config.out_dir={out_dir}'], capture_output=True, text=True)
      if proc.returncode:
        raise JaxGPTError(f'{name} failed: {(proc.stderr.strip().splitlines() or ["no message"])[-1]}')
      times = [float(m[2]) for m in map(ITER_TIME.match, proc.stdout.splitlines()) if m and int(m[1]) > 0]
      medians[name].append(float(np.median(times)))
      print(f'{name}: median {medians[name][-1]:.2f} ms/iter over {len(times)} iterations', flush=True)
  one, many = (float(np.median(m)) for m in medians.values())
  print(f'\n{cpu_name()}, {len(os.sched_getaffinity(0))} CPUs usable; {c.batch_size} rows x '
        f'{c.gradient_accumulation_steps} micro-batch(es) a step in all')
  print(f'| processes | ms/iter (median of {rounds} runs) | 1 / these |\n| ---: | ---: | ---: |')
  print(f'| 1 | {one:.2f} | 1.00x |\n| {nproc} | {many:.2f} | {one / many:.2f}x |')
  print("\n1 / these: 1 process's time over these processes' (above 1, these are the faster)")


def bench(args: argparse.Namespace, overrides: list[str], overridden: frozenset[str]) -> None:
  """The benchmark the flags ask for: training runs' memory or speed against nanoGPT's, sampling, or train
  steps by turns."""
  if args.processes:
    bench_processes(args.processes, args.iters, args.rounds, overrides)
    return
  # RECIPE.py as cli reads nanoGPT's CONFIG.py: a .py argument that is not a flag
  recipes = [arg for arg in overrides if arg.endswith('.py') and not arg.startswith('-')]
  flags = [arg for arg in overrides if arg not in recipes]
  if args.speedrun or args.budget is not None:
    if len(recipes) > 1:
      raise JaxGPTError(f'--speedrun and --budget run one RECIPE, not {len(recipes)}: pass one of {", ".join(recipes)}')
    bench_speedrun((recipes or [SPEEDRUN_RECIPE])[0], args.seeds, args.iters, flags, overridden, args.nanogpt_dir,
                   args.runs_dir, args.budget)
    return
  if args.memory:
    bench_memory(recipes or MEMORY_RECIPES, args.iters, flags, args.nanogpt_dir)
    return
  if args.nanogpt:
    bench_nanogpt(args.nanogpt_dir, args.iters, args.rounds, overrides, overridden)
    return
  c = cli.parse_config(['bench'] + SEED_COMMAND + overrides)
  dtypes = [c.dtype] if 'dtype' in overridden else ['float32', 'bfloat16']
  runtime.size_thread_pool(parallel.planned_shards(c), dtypes)  # as train.py: before jax starts
  pin_device(c.device)
  if args.generate:
    config = GPTConfig.from_run_config(c, SHAKESPEARE_VOCAB_SIZE)
    _, graphdef, params = init_model(config, c.seed)
    bench_generate(graphdef, params, config)
    return
  steps = {}
  for dtype in dtypes:
    steps[dtype], compile_s = build_step(c, dtype)
    print(f'{dtype}: compile + first step {compile_s:.2f} s')
  report(c, time_by_turns(steps, args.steps), dtypes)


def time_by_turns(steps: dict[str, Callable[[int], None]], count: int) -> dict[str, list[float]]:
  """Seconds of each of count steps of each kind. The steps take turns, 25
  at a time: this VM's speed drifts from minute to minute, and turns expose
  them all to the same drift."""
  times = {name: [] for name in steps}
  for turn in range(math.ceil(count / 25)):
    for name, run in steps.items():
      for i in range(5 if turn == 0 else 1):  # warm-up (caches, allocator) before the first turn's timings
        run(i + 1)
      for i in range(25):
        t0 = time.perf_counter()
        run(i + 1)
        times[name].append(time.perf_counter() - t0)
  return times


def report(c: ml_collections.ConfigDict, times: dict[str, list[float]], dtypes: list[str]) -> None:
  """The median ms/iter of each kind of step, their ratios, and this process's peak RSS."""
  tokens = c.gradient_accumulation_steps * c.batch_size * c.block_size
  shards = parallel.gradient_shards(c.threads, c.batch_size, c.device, c.fsdp)
  print(f'config: {c.n_layer} layers, {c.n_head} heads, {c.n_embd} wide, block {c.block_size}, '
        f'batch {c.batch_size}, compile={c.compile}, threads={shards}, jax {jax.__version__}, '
        f'{len(os.sched_getaffinity(0))} cores')
  medians = {}
  for name, t in times.items():
    ms, ms_p10, ms_p90 = (1000 * float(np.percentile(t, q)) for q in (50, 10, 90))
    medians[name] = ms
    print(f'{name}: median {ms:.2f} ms/iter ({len(t)} steps; 10% {ms_p10:.2f}, 90% {ms_p90:.2f}), '
          f'{tokens / ms * 1000:,.0f} tokens/s')
  if 'float32' in medians and 'bfloat16' in medians:
    print(f'float32 / bfloat16: {medians["float32"] / medians["bfloat16"]:.2f}x '
          "(float32's time over bfloat16's: above 1, bfloat16 is the faster)")
  peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  print(f'peak RSS: {peak_mb:.0f} MB (this process, {" and ".join(dtypes)} steps compiled)')


if __name__ == '__main__':
  sys.exit(main(sys.argv))
