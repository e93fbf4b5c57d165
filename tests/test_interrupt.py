"""Ctrl-C (SIGINT) during training: finish the step, save, exit 0; resuming
continues exactly as if nothing had happened."""

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO_ROOT, TINY_RUN, config_flags, finish, make_workdir
from jaxgpt.checkpoint import STEP_METADATA, holds_checkpoints

CONFIG = REPO_ROOT / 'configs' / 'shakespeare_char.py'
TINY_FLAGS = config_flags(TINY_RUN | dict(eval_interval=20, eval_iters=3, log_interval=1, dropout=0.1, warmup_iters=5,
                                          lr_decay_iters=100))
LOSS_LINE = re.compile(r'^(iter|step) (\d+): (.*?)(, time .*)?$')


@pytest.fixture(scope='module')
def workdir(tmp_path_factory, shakespeare):
  return make_workdir(tmp_path_factory.mktemp('interrupt'), shakespeare)


def start(workdir, *args):
  return subprocess.Popen([sys.executable, str(REPO_ROOT / 'train.py'), f'--config={CONFIG}', *TINY_FLAGS, *args],
                          cwd=workdir, env=os.environ | {'PYTHONUNBUFFERED': '1'},
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def signal_at(run: subprocess.Popen, prefix: str, signum: int) -> list[str]:
  """Sends run signum once its stdout shows a line starting with prefix; returns the lines read until then."""
  seen = []
  for line in run.stdout:
    seen.append(line)
    if line.startswith(prefix):
      run.send_signal(signum)
      break
  return seen


def losses_from(stdout: str, first: int) -> dict[tuple[str, int], str]:
  """{('iter' | 'step', N): the loss text} for N >= first."""
  found = {}
  for line in stdout.splitlines():
    match = LOSS_LINE.match(line)
    if match and int(match[2]) >= first:
      found[match[1], int(match[2])] = match[3]
  return found


@pytest.mark.slow
def test_ctrl_c_saves_and_resume_continues_exactly(workdir):
  uninterrupted = finish(start(workdir, '--config.max_iters=40', f'--config.out_dir={workdir / "a"}'))
  assert uninterrupted.returncode == 0, uninterrupted.stderr

  run = start(workdir, '--config.max_iters=1000', f'--config.out_dir={workdir / "b"}')
  seen = signal_at(run, 'iter 23:', signal.SIGINT)  # once training is under way, past the first eval
  interrupted = finish(run)
  stdout = ''.join(seen) + interrupted.stdout
  assert interrupted.returncode == 0, stdout + interrupted.stderr
  assert 'Traceback' not in interrupted.stderr
  [stop_line] = [line for line in stdout.splitlines() if line.startswith('SIGINT at iteration')]
  stopped_at = int(re.match(r'SIGINT at iteration (\d+): saved a checkpoint to ', stop_line)[1])
  assert 'continue with --config.init_from=resume' in stop_line
  assert 24 <= stopped_at < 40
  assert (workdir / 'b' / str(stopped_at)).is_dir()

  resumed = finish(start(workdir, '--config.max_iters=40', f'--config.out_dir={workdir / "b"}',
                         '--config.init_from=resume'))
  assert resumed.returncode == 0, resumed.stderr
  expected = losses_from(uninterrupted.stdout, stopped_at)
  assert ('iter', 40) in expected and ('step', 40) in expected
  assert losses_from(resumed.stdout, stopped_at) == expected


@pytest.mark.slow
def test_the_terminal_closed_sighup_saves_and_stops_as_ctrl_c(workdir):
  # an ssh session dropped: the run was killed unsaved (exit 129) after 12,566 iterations
  run = start(workdir, '--config.max_iters=1000', f'--config.out_dir={workdir / "hup"}')
  signal_at(run, 'iter 5:', signal.SIGHUP)
  stopped = finish(run)
  assert stopped.returncode == 0, stopped.stdout + stopped.stderr
  assert 'Traceback' not in stopped.stderr
  assert 'SIGHUP: finishing this iteration or evaluation batch, then saving a checkpoint (again to stop at once, ' \
         'unsaved)' in stopped.stdout
  stop_line = stopped.stdout.splitlines()[-1]
  stopped_at = int(re.fullmatch(rf'SIGHUP at iteration (\d+): saved a checkpoint to {re.escape(str(workdir / "hup"))}; '
                                'continue with --config.init_from=resume', stop_line)[1])
  assert 6 <= stopped_at < 1000
  assert (workdir / 'hup' / str(stopped_at)).is_dir()


@pytest.mark.slow
def test_a_nohup_run_trains_on_past_sighup_to_its_end(workdir):
  """nohup python train.py ...: the user asked for the run to outlive the terminal, so its SIGHUP stays ignored."""
  out_dir = workdir / 'nohup'
  run = subprocess.Popen(['nohup', sys.executable, str(REPO_ROOT / 'train.py'), f'--config={CONFIG}', *TINY_FLAGS,
                          '--config.max_iters=30', f'--config.out_dir={out_dir}'],
                         cwd=workdir, env=os.environ | {'PYTHONUNBUFFERED': '1'}, stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  seen = signal_at(run, 'iter 5:', signal.SIGHUP)
  finished = finish(run)
  stdout = ''.join(seen) + finished.stdout
  assert finished.returncode == 0, stdout + finished.stderr
  assert 'SIGHUP' not in stdout + finished.stderr
  assert ('iter', 30) in losses_from(stdout, 30)
  assert stdout.splitlines()[-1] == f'saving checkpoint to {out_dir} (the final state, before iteration 31)'
  assert (out_dir / '31').is_dir()


@pytest.mark.slow
def test_a_run_whose_terminal_closes_saves_and_exits_0(workdir):
  """train.py at a terminal of its own (its controlling terminal, as a login shell's) that closes: the kernel
  sends SIGHUP, and writes to the terminal fail from then on; the run saves a checkpoint all the same."""
  main_fd, child_fd = pty.openpty()
  # in a session of its own, the terminal made its controlling one: a small python does it, not a preexec_fn
  take_terminal = ('import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); '
                   'os.execv(sys.executable, [sys.executable, *sys.argv[1:]])')
  out_dir = workdir / 'hup-terminal'
  popen = subprocess.Popen([sys.executable, '-c', take_terminal, str(REPO_ROOT / 'train.py'), f'--config={CONFIG}',
                            *TINY_FLAGS, '--config.max_iters=100000', f'--config.out_dir={out_dir}'],
                           cwd=workdir, stdin=child_fd, stdout=child_fd, stderr=child_fd, start_new_session=True,
                           env=os.environ | {'COLUMNS': '160'})
  os.close(child_fd)
  output, deadline = b'', time.monotonic() + 300
  try:
    while b'iter 5:' not in output and select.select([main_fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
      output += os.read(main_fd, 65536)
  finally:
    os.close(main_fd)  # the terminal closes: its session leader, train.py, gets SIGHUP
  try:
    code = popen.wait(timeout=120)
  finally:
    if popen.poll() is None:
      popen.kill()
  assert b'iter 5:' in output, output.decode(errors='replace')
  assert code == 0  # not 129, killed by SIGHUP
  assert holds_checkpoints(out_dir)
  assert 5 < max(int(folder.name) for folder in out_dir.iterdir() if folder.name.isdigit()) < 100000


@pytest.mark.slow
def test_sigterm_during_an_evaluation_abandons_it_and_saves(workdir):
  # an evaluation of 100,000 batches would take minutes: the stop ends it
  # between two batches, and the checkpoint holds the state before it
  run = start(workdir, '--config.max_iters=40', '--config.eval_iters=100000', f'--config.out_dir={workdir / "c"}')
  for line in run.stdout:
    if line.startswith('number of parameters'):  # the first evaluation is next
      break
  time.sleep(2)
  run.send_signal(signal.SIGTERM)
  stopped = finish(run, timeout=60)
  assert stopped.returncode == 0, stopped.stdout + stopped.stderr
  assert stopped.stdout.splitlines()[-1] == (f'SIGTERM at iteration 0: saved a checkpoint to {workdir / "c"}; '
                                             'continue with --config.init_from=resume')
  assert 'step 0:' not in stopped.stdout  # abandoned, not finished

  uninterrupted = finish(start(workdir, '--config.max_iters=40', f'--config.out_dir={workdir / "d"}'))
  resumed = finish(start(workdir, '--config.max_iters=40', f'--config.out_dir={workdir / "c"}',
                         '--config.init_from=resume'))
  assert resumed.returncode == 0, resumed.stderr
  assert losses_from(resumed.stdout, 0) == losses_from(uninterrupted.stdout, 0)


@pytest.mark.parametrize('signum', [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=['SIGINT', 'SIGTERM', 'SIGHUP'])
@pytest.mark.parametrize('checkpoint, message', [
    (False, 'interrupted, before any checkpoint was saved'),
    (True, 'interrupted: continue from the last checkpoint in out with --config.init_from=resume'),
])
def test_a_stop_before_training_begins_is_one_line(tmp_path, monkeypatch, capsys, checkpoint, message, signum):
  """Ctrl-C or SIGTERM while the data set is prepared or the step compiles
  (before the stop handler is installed): exit 130, one line, and no word of
  a checkpoint that does not exist."""
  from jaxgpt import cli, train
  monkeypatch.chdir(tmp_path)
  if checkpoint:  # a finished checkpoint's folder, as orbax leaves it
    (tmp_path / 'out' / '10').mkdir(parents=True)
    (tmp_path / 'out' / '10' / STEP_METADATA).write_text('{}')

  def unhandled(signum, frame):  # what the test sees of a main that leaves SIGTERM's default: death
    raise AssertionError('main did not handle SIGTERM')

  monkeypatch.setattr(train, 'run', lambda *args: signal.raise_signal(signum))
  sigterm_handler = signal.signal(signal.SIGTERM, unhandled)
  try:
    assert cli.main(['train.py', f'--config={CONFIG}', '--config.out_dir=out']) == 130
  finally:
    signal.signal(signal.SIGTERM, sigterm_handler)
  assert capsys.readouterr().err.splitlines() == [message]


@pytest.mark.slow
@pytest.mark.parametrize('signum', [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=['SIGINT', 'SIGTERM', 'SIGHUP'])
def test_a_stop_during_start_up_is_one_line_and_writes_nothing(workdir, signum):
  """Ctrl-C or SIGTERM while the data set is read and the step compiles: it
  stops there, one line, exit 130 (raised inside jax's start-up, it once
  crashed the interpreter on its way out: exit 139)."""
  proc = start(workdir, '--config.out_dir=out-start-up', '--config.max_iters=100')
  assert proc.stdout.readline().startswith('tokens per iteration will be: ')  # its handler is in place
  proc.send_signal(signum)
  done = finish(proc)
  assert done.returncode == 130, done.stdout + done.stderr
  assert f'{signum.name}: stopping before training begins (again to stop at once, unsaved)' in done.stdout
  assert done.stderr.splitlines() == ['interrupted, before any checkpoint was saved']
  assert not (workdir / 'out-start-up').exists()


@pytest.mark.slow
def test_sampling_stops_on_sighup_as_on_ctrl_c(workdir):
  """sample.py with its output on a terminal, and SIGHUP once it is drawing tokens: it stops as on Ctrl-C (exit
  130, one line on stderr, here a pipe), what would go to the closed terminal going nowhere."""
  out_dir = workdir / 'sample-hup'
  trained = finish(start(workdir, '--config.max_iters=2', '--config.eval_interval=2', f'--config.out_dir={out_dir}'))
  assert trained.returncode == 0, trained.stderr
  main_fd, child_fd = pty.openpty()
  popen = subprocess.Popen([sys.executable, str(REPO_ROOT / 'sample.py'), f'--out_dir={out_dir}', '--start=ROMEO:',
                            '--num_samples=1', '--max_new_tokens=1000000'],
                           cwd=workdir, stdin=subprocess.DEVNULL, stdout=child_fd, stderr=subprocess.PIPE, text=True,
                           env=os.environ | {'COLUMNS': '160', 'TERM': 'xterm'})
  os.close(child_fd)
  output, sent = b'', False
  try:
    while not sent and select.select([main_fd], [], [], 300)[0]:  # a guard against a hang
      output += os.read(main_fd, 65536)
      if re.search(rb' [1-9]\d*%', output):  # its progress bar: thousands of tokens drawn
        popen.send_signal(signal.SIGHUP)
        sent = True
    _, stderr = popen.communicate(timeout=300)
  finally:
    os.close(main_fd)
    if popen.poll() is None:
      popen.kill()
  assert sent, output.decode(errors='replace')
  assert popen.returncode == 130, stderr
  [line] = stderr.splitlines()
  assert 0 < int(re.fullmatch(r'SIGHUP: stopped after (\d+) of 1000000 new tokens', line)[1]) < 1000000


def read_then_close(popen, enough) -> tuple[int, str]:
  """As `| head` does: reads the command's stdout until enough(popen.stdout) is true, closes the pipe, and waits
  for the command; its exit status and stderr."""
  with popen:
    try:
      while not enough(popen.stdout):
        pass
      popen.stdout.close()
      return popen.wait(timeout=300), popen.stderr.read()
    finally:
      if popen.poll() is None:
        popen.kill()


@pytest.mark.slow
def test_a_closed_pipe_stops_training_as_ctrl_c(workdir):
  # `train.py ... | head -n 8` ended in a BrokenPipeError traceback, nothing saved
  out_dir = workdir / 'pipe'
  popen = subprocess.Popen([sys.executable, str(REPO_ROOT / 'train.py'), f'--config={CONFIG}', *TINY_FLAGS,
                            '--config.max_iters=100000', f'--config.out_dir={out_dir}'],
                           cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  # training under way (the data set was prepared before, or a closed pipe would stop it there, unsaved)
  code, stderr = read_then_close(popen, lambda stdout: (line := stdout.readline()) == '' or line.startswith('iter 1:'))
  assert code == 0, stderr
  assert 'Traceback' not in stderr and 'Exception ignored' not in stderr
  [line] = stderr.splitlines()
  stopped_at = int(re.fullmatch(rf'SIGPIPE at iteration (\d+): saved a checkpoint to {re.escape(str(out_dir))}; '
                                'continue with --config.init_from=resume', line)[1])
  assert 1 < stopped_at < 100000
  assert (out_dir / str(stopped_at) / STEP_METADATA).is_file()


@pytest.mark.slow
def test_a_closed_pipe_ends_sampling_quietly(workdir):
  # `sample.py | head -c 20` ended in a BrokenPipeError traceback
  out_dir = workdir / 'sample-pipe'
  trained = finish(start(workdir, '--config.max_iters=2', '--config.eval_interval=2', f'--config.out_dir={out_dir}'))
  assert trained.returncode == 0, trained.stderr
  # ~130 KB of samples, twice the pipe's 64 KiB: sample.py is still writing them when the reader closes it
  popen = subprocess.Popen([sys.executable, str(REPO_ROOT / 'sample.py'), f'--out_dir={out_dir}', '--start=ROMEO:',
                            '--num_samples=256', '--max_new_tokens=500'],
                           cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  code, stderr = read_then_close(popen, lambda stdout: len(stdout.read(20)) == 20)
  assert code == 0, stderr  # the reader had what it asked for, as from `| head`
  assert stderr == ''  # no traceback, nor "Exception ignored" at exit


@pytest.mark.slow
def test_a_pipe_closed_while_the_data_set_is_prepared_stops_as_ctrl_c(tmp_path, shakespeare):
  workdir = make_workdir(tmp_path, shakespeare)
  popen = subprocess.Popen([sys.executable, str(REPO_ROOT / 'train.py'), f'--config={CONFIG}', *TINY_FLAGS,
                            '--config.out_dir=out'],
                           cwd=workdir, env=os.environ | {'PYTHONUNBUFFERED': '1'}, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
  code, stderr = read_then_close(popen, lambda stdout: stdout.readline().startswith('tokens per iteration'))
  assert code == 130, stderr
  assert stderr.splitlines() == ['interrupted, before any checkpoint was saved']
  assert not (workdir / 'out').exists()
