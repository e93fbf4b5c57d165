"""Data parallel over 4 host devices (XLA_FLAGS=--xla_force_host_platform_device_count=4,
in subprocesses: the test process has one): the train step against the
single-device step on the same global batches, replicated and fsdp; the
parity traces replayed data parallel; train.py end to end on 4 devices, and
in 2 processes started by `python -m jaxgpt.launch` (127.0.0.1, a free port,
gloo) against 1 process with 2 devices.
"""

import collections
import json
import os
import pathlib
import pty
import re
import select
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from conftest import E2E_RUN, REPO_ROOT, config_flags, linux_only, make_workdir, parse_log
from jaxgpt import launch, parallel, runtime
from jaxgpt.config import ConfigError, base_config

CONFIG = REPO_ROOT / 'configs' / 'shakespeare_char.py'

@pytest.mark.parametrize('cores, batch_size, shards', [
    (1, 12, 1), (2, 12, 2), (4, 12, 4), (5, 12, 4), (8, 12, 6), (16, 12, 12), (64, 12, 12), (3, 7, 1), (8, 7, 7)])
def test_automatic_threads_take_the_most_shards_the_cores_and_the_batch_allow(monkeypatch, cores, batch_size, shards):
  monkeypatch.setattr(runtime, 'usable_cores', lambda: cores)
  assert parallel.gradient_shards(0, batch_size, 'cpu', fsdp=False) == shards


def test_threads_set_by_hand(monkeypatch):
  monkeypatch.setattr(runtime, 'usable_cores', lambda: 1)
  assert parallel.gradient_shards(3, 12, 'cpu', fsdp=False) == 3  # more than the cores: as asked
  with pytest.raises(ConfigError, match=r'^threads=2: .* only on a CPU, one device a process, without fsdp; not '
                     r'with fsdp: pass --config.threads=0 \(automatic\)$'):
    parallel.gradient_shards(2, 12, 'cpu', fsdp=True)
  assert parallel.gradient_shards(0, 12, 'cpu', fsdp=True) == 1  # automatic: one program, where threads do not apply
  assert parallel.gradient_shards(1, 12, 'cpu', fsdp=True) == 1


def test_launch_logs_into_a_new_temporary_folder_or_the_one_named(monkeypatch, tmp_path):
  monkeypatch.setattr(tempfile, 'tempdir', str(tmp_path))  # the system's temporary folder
  first, second = launch.make_log_dir(None), launch.make_log_dir(None)
  assert first.parent == second.parent == tmp_path and first != second and first.name.startswith('jaxgpt-launch-')
  assert launch.make_log_dir(tmp_path / 'runs' / 'logs') == tmp_path / 'runs' / 'logs'
  assert (tmp_path / 'runs' / 'logs').is_dir()
  assert launch.log_paths(3, first) == [None, first / 'rank1.log', first / 'rank2.log']  # process 0: the terminal


def test_xla_pool_sized_to_each_step_threads_cores_before_jax_starts(monkeypatch):
  monkeypatch.setattr(runtime, 'usable_cores', lambda: 8)
  monkeypatch.delenv('XLA_FLAGS', raising=False)
  c = base_config()
  c.update(device='cpu', batch_size=12)
  assert parallel.planned_shards(c) == 6  # as gradient_shards will
  for step_threads, pool in ((6, '1'), (4, '2'), (2, '4')):
    monkeypatch.delenv('PJRT_NPROC', raising=False)
    runtime.size_thread_pool(step_threads, ['float32'])
    assert os.environ['PJRT_NPROC'] == pool
  monkeypatch.delenv('PJRT_NPROC')
  runtime.size_thread_pool(1, ['float32'])  # one program a step: XLA's pool takes every core, as ever
  runtime.size_thread_pool(2, ['bfloat16'])  # bfloat16's matmuls need the pool
  runtime.size_thread_pool(2, ['float32', 'bfloat16'])
  assert 'PJRT_NPROC' not in os.environ
  monkeypatch.setenv('PJRT_NPROC', '3')  # set by the user, or by jaxgpt.launch: left alone
  runtime.size_thread_pool(4, ['float32'])
  assert os.environ['PJRT_NPROC'] == '3'
  for key, value in (('device', 'gpu'), ('fsdp', True)):
    assert parallel.planned_shards(_with(c, **{key: value})) == 1
  monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=4')
  assert parallel.planned_shards(c) == 1


def _with(c, **values):
  c = c.copy_and_resolve_references()
  c.update(values)
  return c


@linux_only('the CPU affinity (os.sched_getaffinity), which launch deals out')
@pytest.mark.parametrize('cpus, nproc, shares', [
    ({0, 1}, 2, [[0], [1]]), ({0, 1, 2, 3, 4, 5, 6, 7}, 3, [[0, 1], [2, 3, 4], [5, 6, 7]]),
    ({2, 3, 8, 9}, 2, [[2, 3], [8, 9]]), ({0, 1, 2}, 1, [[0, 1, 2]])])
def test_launch_deals_each_process_its_share_of_the_cores(monkeypatch, cpus, nproc, shares):
  monkeypatch.setattr(os, 'sched_getaffinity', lambda pid: cpus)
  assert launch.share_cores(nproc) == shares


FOUR_DEVICES = os.environ | {'XLA_FLAGS': '--xla_force_host_platform_device_count=4'}


def run(*args, env=FOUR_DEVICES, cwd=REPO_ROOT):
  return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                        timeout=300)


MEAN_ACROSS_DEVICES = """
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import PartitionSpec
from jaxgpt import parallel
for n in (1, 2, 4):  # one device: x itself; two: one swap; four: XLA's all-reduce
  x = (jnp.arange(n * 5, dtype=jnp.float32).reshape(n, 5) + 1) ** 1.5
  mean = jax.jit(jax.shard_map(lambda row: parallel.mean_across_devices(row[0], n)[None],
                               mesh=parallel.make_mesh(jax.devices()[:n]), in_specs=PartitionSpec('data'),
                               out_specs=PartitionSpec('data'), check_vma=False))
  every = np.asarray(mean(x))  # each device's result, a row each
  np.testing.assert_allclose(every, np.broadcast_to(np.asarray(x).mean(0), (n, 5)), rtol=1e-6)
  assert (every == every[0]).all(), (n, every)  # the same bits on every device: replicas stay identical
print('ok')
"""


@pytest.mark.slow
def test_mean_across_devices_gives_every_device_the_same_mean():
  proc = run('-c', MEAN_ACROSS_DEVICES)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout == 'ok\n'


@pytest.mark.slow
@pytest.mark.parametrize('dropout', ['0.0', '0.1'])
def test_data_parallel_step_is_the_single_device_step(dropout):
  proc = run(REPO_ROOT / 'tests' / 'dp_check.py', dropout)
  assert proc.returncode == 0, proc.stderr
  result = json.loads(proc.stdout)
  for mode in ('replicated', 'fsdp'):
    assert result[mode]['devices'] == 4
    assert result[mode]['loss'] <= 1e-6, (mode, result)
    # AdamW divides by sqrt(v): a gradient summed in another order moves the
    # few weights whose gradient is near 0 by up to ~2e-6 per step at lr 5e-4;
    # the parity traces allow the final weights 1e-5 for the same reason
    assert result[mode]['weights_first_step'] <= 1e-5, (mode, result)
    assert result[mode]['weights'] <= 1e-5, (mode, result)
  assert result['replicated']['split_params'] == result['replicated']['split_opt_state'] == 0
  assert result['fsdp']['split_params'] == 28  # every weight: each has a dimension 4 divides
  assert result['fsdp']['split_opt_state'] == 56  # AdamW's two moments of each
  assert len(set(result['losses'])) == 3  # the steps did train


@pytest.mark.slow
@pytest.mark.parametrize('mode', [['--data_parallel'], ['--data_parallel', '--fsdp']])
def test_parity_trace_replayed_data_parallel(mode):
  proc = run('-m', 'jaxgpt.parity', 'tests/fixtures/seed_model.npz', *mode)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert proc.stdout.splitlines()[-1] == 'PASS: jaxgpt matches nanoGPT on tests/fixtures/seed_model.npz (40 steps)'


@pytest.fixture(scope='module')
def workdir(tmp_path_factory, shakespeare):
  return make_workdir(tmp_path_factory.mktemp('dp'), shakespeare)


@pytest.mark.slow
def test_train_on_four_devices_then_resume_on_one(workdir):
  settings = dict(batch_size=2, gradient_accumulation_steps=4, max_iters=20, eval_interval=10, log_interval=1)
  four = run(REPO_ROOT / 'train.py', f'--config={CONFIG}', *config_flags(E2E_RUN | dict(out_dir='out-4', **settings)),
             cwd=workdir)
  assert four.returncode == 0, four.stderr
  lines = four.stdout.splitlines()
  assert 'data parallel over 4 devices in 1 process(es), params replicated' in lines
  assert 'tokens per iteration will be: 256' in lines  # 4 micro-batches x 2 rows x 32, as on one device
  steps, iters = parse_log(four.stdout)
  assert sorted(iters) == list(range(21)) and sorted(steps) == [0, 10, 20]
  assert steps[20][1] < steps[0][1] - 0.3  # it learns
  resumed = run(REPO_ROOT / 'train.py', f'--config={CONFIG}', '--config.init_from=resume',
                *config_flags(E2E_RUN | dict(out_dir='out-4', **(settings | {'max_iters': 22}))), env=os.environ, cwd=workdir)
  assert resumed.returncode == 0, resumed.stderr
  assert parse_log(resumed.stdout)[1].keys() == {21, 22}  # on from the final state, before iteration 21


# dropout off: two processes (ShardedTrainStep: one key a shard) and two devices
# in one process (one key for the whole batch) draw different masks
MULTI = dict(batch_size=4, gradient_accumulation_steps=2, max_iters=10, eval_interval=5, log_interval=1, dropout=0.0)


@pytest.mark.slow
def test_two_processes_train_as_one_process_with_two_devices(workdir):
  """Each device draws its own rows from (seed, stream, iteration, device),
  however devices are spread over processes: the same losses, whether
  XLA's all-reduce averages the gradients (one process) or the processes
  swap one flat buffer (ShardedTrainStep)."""
  launched = run('-m', 'jaxgpt.launch', '--nproc=2', '--log_dir=logs-2p', REPO_ROOT / 'train.py',
                 f'--config={CONFIG}', *config_flags(E2E_RUN | dict(out_dir='out-2p', **MULTI)), env=os.environ,
                 cwd=workdir)
  assert launched.returncode == 0, launched.stderr
  one = run(REPO_ROOT / 'train.py', f'--config={CONFIG}', *config_flags(E2E_RUN | dict(out_dir='out-2d', **MULTI)),
            env=os.environ | {'XLA_FLAGS': '--xla_force_host_platform_device_count=2'}, cwd=workdir)
  assert one.returncode == 0, one.stderr
  # process 0 alone prints, each line once, as the one process does; process 1's output, gloo's line too, is in its log
  first, *lines = launched.stdout.splitlines()
  assert first == 'the output of process 1 goes to logs-2p/rank1.log' and launched.stderr == ''
  assert [line for line in lines if line.startswith('[Gloo]')] == [  # gloo's own std::cout: no log level quiets it
      '[Gloo] Rank 0 is connected to 1 peer ranks. Expected number of connected peer ranks is : 1']
  assert 'Rank 1 is connected' in (workdir / 'logs-2p' / 'rank1.log').read_text()

  def repeated(lines, out_dir):  # nanoGPT's lines said more than once: 'saving checkpoint' at each better val loss
    return {line.replace(out_dir, 'OUT'): n for line, n in collections.Counter(lines).items() if n > 1}
  assert repeated(lines, 'out-2p') == repeated(one.stdout.splitlines(), 'out-2d') != {}
  assert 'data parallel over 2 devices in 2 process(es), params replicated' in launched.stdout.splitlines()
  assert launched.stdout.count('tokens per iteration will be: ') == 1  # process 0 alone prints
  (steps_p, iters_p), (steps_d, iters_d) = parse_log(launched.stdout), parse_log(one.stdout)
  assert sorted(iters_p) == list(range(11)) and sorted(steps_p) == [0, 5, 10]
  assert (steps_p, iters_p) == (steps_d, iters_d)
  # the best and the final state, each written once, that a single process resumes
  assert sorted(p.name for p in (workdir / 'out-2p').iterdir() if p.name.isdigit()) == ['10', '11']
  resumed = run(REPO_ROOT / 'train.py', f'--config={CONFIG}', '--config.init_from=resume',
                *config_flags(E2E_RUN | dict(out_dir='out-2p', **(MULTI | {'max_iters': 12}))), env=os.environ, cwd=workdir)
  assert resumed.returncode == 0, resumed.stderr
  assert parse_log(resumed.stdout)[1].keys() == {11, 12}


@pytest.mark.slow
def test_launch_stops_every_process_when_one_fails(workdir, tmp_path):
  proc = run('-m', 'jaxgpt.launch', '--nproc=2', f'--log_dir={tmp_path}', REPO_ROOT / 'train.py', f'--config={CONFIG}',
             '--config.n_embd=33', env=os.environ, cwd=workdir)
  assert proc.returncode == 1  # said once, by the launcher: no process started
  assert proc.stdout == '' and proc.stderr.startswith('error: n_embd=33 is not divisible by n_head=4') and \
      len(proc.stderr.splitlines()) == 1, proc.stderr
  # a mistake found once the processes joined: each finds it, process 0 alone says it
  proc = run('-m', 'jaxgpt.launch', '--nproc=2', f'--log_dir={tmp_path}', REPO_ROOT / 'train.py', f'--config={CONFIG}',
             *config_flags(E2E_RUN | dict(out_dir='out-odd', gradient_accumulation_steps=1)), env=os.environ, cwd=workdir)
  assert proc.returncode == 1
  assert proc.stderr.splitlines() == ['error: gradient_accumulation_steps=1 is not divisible by the 2 devices training '
                                      'together: make it a multiple of 2, as nanoGPT requires of its world size']
  assert (tmp_path / 'rank1.log').read_text().splitlines()[-1] == proc.stderr.splitlines()[0]
  proc = run('-m', 'jaxgpt.launch', '--nproc=0', 'train.py', env=os.environ, cwd=workdir)
  assert proc.returncode == 2 and '--nproc=0 must be >= 1' in proc.stderr


# process 1 fails as it starts (a sitecustomize module, which Python runs first); process 0 runs on
FAIL_PROCESS_1 = """
import os, sys
if '--config.process_id=1' in sys.argv:
  print('process 1 starting', flush=True)
  print('error: process 1 cannot go on (a test)', file=sys.stderr, flush=True)
  os._exit(3)
"""


@pytest.mark.slow
def test_launch_shows_the_end_of_a_failed_processs_output(workdir, tmp_path):
  (tmp_path / 'sitecustomize.py').write_text(FAIL_PROCESS_1)
  proc = run('-m', 'jaxgpt.launch', '--nproc=2', f'--log_dir={tmp_path / "logs"}', REPO_ROOT / 'train.py',
             f'--config={CONFIG}', *config_flags(E2E_RUN | dict(out_dir='out-fail', **MULTI)),
             env=os.environ | {'PYTHONPATH': str(tmp_path)}, cwd=workdir)
  assert proc.returncode == 3  # process 1's
  log = tmp_path / 'logs' / 'rank1.log'
  assert proc.stderr.splitlines() == [f'process 1 failed (exit status 3); the end of its output (all of it in {log}):',
                                      '[rank1]: process 1 starting', '[rank1]: error: process 1 cannot go on (a test)']
  assert log.read_text() == 'process 1 starting\nerror: process 1 cannot go on (a test)\n'
  assert not [line for line in proc.stdout.splitlines() if 'process 1 ' in line][1:]  # the first line names its log


def ctrl_c_at_a_terminal(args, cwd, after: str, timeout=300) -> tuple[int, str]:
  """Runs args in the foreground of a terminal of its own (a pseudo-terminal that is its controlling
  terminal, as a shell's), types Ctrl-C once `after` shows; its exit status and output."""
  main_fd, child_fd = pty.openpty()
  # in a session of its own, the terminal made its controlling one, then args: a small python does it, not a
  # preexec_fn (that would fork this process, whose jax threads make fork unsafe)
  take_terminal = ('import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); '
                   'os.execv(sys.executable, [sys.executable, *sys.argv[1:]])')
  popen = subprocess.Popen([sys.executable, '-c', take_terminal, *map(str, args)], cwd=cwd, stdin=child_fd,
                           stdout=child_fd, stderr=child_fd, start_new_session=True,
                           env=os.environ | {'COLUMNS': '160'})
  os.close(child_fd)
  output, typed, deadline = b'', False, time.monotonic() + timeout
  try:
    while select.select([main_fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
      try:
        chunk = os.read(main_fd, 65536)
      except OSError:  # the command closed the terminal
        break
      output += chunk
      if not typed and after.encode() in output:
        os.write(main_fd, b'\x03')  # the terminal sends SIGINT to its foreground process group
        typed = True
  finally:
    os.close(main_fd)
    if popen.poll() is None:
      popen.kill()
  return popen.wait(), output.decode(errors='replace')


@pytest.mark.slow
def test_ctrl_c_at_the_terminal_stops_every_process_once_with_a_checkpoint(workdir, tmp_path):
  """The terminal's SIGINT reaches the launcher alone, which passes it on once: a second one would stop
  the processes at once, unsaved."""
  code, output = ctrl_c_at_a_terminal(
      ['-m', 'jaxgpt.launch', '--nproc=2', f'--log_dir={tmp_path}', REPO_ROOT / 'train.py', f'--config={CONFIG}',
       *config_flags(E2E_RUN | dict(out_dir='out-ctrl-c', **(MULTI | {'max_iters': 100000})))], workdir,
      after='iter 3:')
  assert code == 0, output
  lines = [line.strip() for line in re.split(r'\r|\n|\x1b\[[0-9;?]*[A-Za-z]', output)]  # the progress bar's codes too
  assert sum(line.startswith('SIGINT: finishing this iteration') for line in lines) == 1, output
  [saved] = [line for line in lines if line.startswith('SIGINT at iteration')]
  step = int(saved.split()[3].rstrip(':'))
  assert saved.endswith('saved a checkpoint to out-ctrl-c; continue with --config.init_from=resume')
  assert str(step) in os.listdir(workdir / 'out-ctrl-c')
  assert 'Traceback' not in (tmp_path / 'rank1.log').read_text()


def children(pid: int) -> list[int]:
  """The processes pid started (each of its threads' children)."""
  return [int(child) for task in os.listdir(f'/proc/{pid}/task')
          for child in pathlib.Path(f'/proc/{pid}/task/{task}/children').read_text().split()]


def alive(pid: int) -> bool:
  try:
    return pathlib.Path(f'/proc/{pid}/stat').read_text().split(')')[-1].split()[0] != 'Z'
  except FileNotFoundError:
    return False


FATALS = ('F0000', 'Check failed', 'Traceback', 'Fatal Python error')  # XLA's C++ fatal lines, Python's


@pytest.mark.slow
@linux_only("the launcher's /proc: each process's open files and children")
# after 0.2 s the launcher is checking the flags (Python's Ctrl-C, entry.run's SIGTERM), after 1 s starting the
# processes, after 3 s they are joining (the launcher's own handler, alike for each signal): each point and each
# signal once
@pytest.mark.parametrize('after, how', [(0.2, 'ctrl-c to the group'), (0.2, 'SIGTERM to the launcher'),
                                        (1.0, 'SIGHUP to the launcher'), (3.0, 'ctrl-c to the group')])
def test_a_stop_while_the_processes_start_ends_them_all_at_once_with_one_line(workdir, tmp_path, how, after):
  """Stopped before training begins (starting, joining, compiling), the processes have nothing to save: they
  are stopped at once, not left waiting for each other until jax.distributed's timeout and XLA's fatal lines."""
  out_dir = tmp_path / 'out'
  popen = subprocess.Popen(
      [sys.executable, '-m', 'jaxgpt.launch', '--nproc=2', f'--log_dir={tmp_path}', REPO_ROOT / 'train.py',
       f'--config={CONFIG}', *config_flags(E2E_RUN | dict(out_dir=out_dir, **(MULTI | {'max_iters': 100000})))],
      cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
  try:
    time.sleep(after)
    started = children(popen.pid)  # those started yet: the launcher starts no more once stopped
    if how == 'ctrl-c to the group':
      os.killpg(popen.pid, signal.SIGINT)
    else:
      popen.send_signal(signal.SIGTERM if how == 'SIGTERM to the launcher' else signal.SIGHUP)
    stdout, stderr = popen.communicate(timeout=30)
  finally:
    if popen.poll() is None:
      os.killpg(popen.pid, signal.SIGKILL)
      popen.communicate()
  assert not [pid for pid in started if alive(pid)]
  assert popen.returncode == 130, stdout + stderr
  assert stderr.splitlines()[-1:] == ['interrupted, before any checkpoint was saved'], stderr
  rank1_log = tmp_path / 'rank1.log'  # opened as process 1 starts: stopped before that, it never started
  rank1 = rank1_log.read_text() if rank1_log.exists() else ''
  assert not [fatal for fatal in FATALS if fatal in stdout + stderr + rank1], stdout + stderr + rank1
  assert not [p for p in out_dir.glob('*') if p.name.isdigit()] if out_dir.exists() else True  # nothing saved


# a stand-in for train.py: says whether it ignores SIGHUP; process 0 sends its launcher SIGHUP (the terminal closed)
# and gives it a second to stop the processes, as it would if it heard it
SAYS_IT_IGNORES_SIGHUP = """
import os, signal, sys, time
print('SIGHUP ignored:', signal.getsignal(signal.SIGHUP) is signal.SIG_IGN, flush=True)
if '--config.process_id=0' in sys.argv:
  os.kill(os.getppid(), signal.SIGHUP)
  time.sleep(1)
"""


@pytest.mark.slow
def test_a_nohup_launcher_and_its_processes_outlive_the_terminal(tmp_path):
  (tmp_path / 'train.py').write_text(SAYS_IT_IGNORES_SIGHUP)
  proc = subprocess.run(['nohup', sys.executable, '-m', 'jaxgpt.launch', '--nproc=2', f'--log_dir={tmp_path}',
                         'train.py'], cwd=tmp_path, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 0, proc.stdout + proc.stderr  # not 130, stopped
  assert proc.stdout.splitlines()[1:] == ['SIGHUP ignored: True'], proc.stdout
  assert (tmp_path / 'rank1.log').read_text() == 'SIGHUP ignored: True\n'


UNTIL_STOPPED = dict(max_iters=100000, eval_interval=100000)  # no evaluation after the first, no save but a stop's


@pytest.mark.slow
@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_to_the_launcher_while_training_saves_a_checkpoint(workdir, tmp_path, signum):
  """SIGHUP, the terminal closed: as Ctrl-C, the processes' output then goes nowhere (train.py's choice)."""
  out_dir = tmp_path / 'out'
  popen = subprocess.Popen(
      [sys.executable, '-m', 'jaxgpt.launch', '--nproc=2', f'--log_dir={tmp_path}', REPO_ROOT / 'train.py',
       f'--config={CONFIG}', *config_flags(E2E_RUN | dict(out_dir=out_dir, **(MULTI | UNTIL_STOPPED)))],
      cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    for line in popen.stdout:
      if line.startswith('iter 3:'):
        popen.send_signal(signum)
        break
    stdout, stderr = popen.communicate(timeout=120)
  finally:
    if popen.poll() is None:
      popen.kill()
      popen.communicate()
  assert popen.returncode == 0, stderr
  assert not [fatal for fatal in FATALS if fatal in stderr + (tmp_path / 'rank1.log').read_text()], stderr
  [step] = [int(p.name) for p in out_dir.iterdir() if p.name.isdigit()]  # the one save: on the signal
  assert step >= 4  # after iteration 3 at least
  if signum == signal.SIGTERM:
    [saved] = [line for line in stdout.splitlines() if line.startswith('SIGTERM at iteration')]
    assert saved.endswith(f'saved a checkpoint to {out_dir}; continue with --config.init_from=resume')
    assert int(saved.split()[3].rstrip(':')) == step


@pytest.mark.slow
def test_accumulation_must_divide_by_the_devices(workdir):
  proc = run(REPO_ROOT / 'train.py', f'--config={CONFIG}', *config_flags(E2E_RUN | dict(out_dir='out-bad')), cwd=workdir)
  assert proc.returncode == 1
  assert proc.stderr.splitlines()[-1] == (
      'error: gradient_accumulation_steps=1 is not divisible by the 4 devices training together: make it a '
      'multiple of 4, as nanoGPT requires of its world size')
  assert not (workdir / 'out-bad').exists()
