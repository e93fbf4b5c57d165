"""train.py end to end, in a subprocess, on a tiny model: nanoGPT's log lines,
evaluation, checkpoints, both command-line spellings, and clean user errors.

Each run works in its own folder holding data/shakespeare_char/input.txt (a
copy of the corpus: never downloaded), as train.py reads data/ and writes
out_dir relative to the working directory.
"""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import (E2E_RUN, ITER_LINE as ITER, REPO_ROOT, STEP_LINE as STEP, config_flags, make_workdir, parse_log,
                      run_in_terminal)
from jaxgpt import cli, runtime

CONFIG = REPO_ROOT / 'configs' / 'shakespeare_char.py'


def train(workdir, *args, timeout=300, env=None):
  """Runs train.py with cwd=workdir (and env, if given); returns the completed process."""
  return subprocess.run([sys.executable, str(REPO_ROOT / 'train.py'), *map(str, args)], cwd=workdir,
                        capture_output=True, text=True, timeout=timeout, env=env)


def overrides(prefix, **settings):
  return config_flags(E2E_RUN | settings, prefix)


@pytest.fixture
def workdir(tmp_path, shakespeare):
  return make_workdir(tmp_path, shakespeare)


@pytest.fixture(scope='module')
def fused_run(tmp_path_factory, shakespeare):
  """The --config spelling, compile=True (the default) on one thread: 40 iterations, evaluated at 0, 20, 40."""
  workdir = make_workdir(tmp_path_factory.mktemp('fused'), shakespeare)
  out_dir = workdir / 'out'
  proc = train(workdir, f'--config={CONFIG}', *overrides('--config.', out_dir=out_dir, threads=1))
  return proc, out_dir


@pytest.mark.slow
def test_run_succeeds(fused_run):
  proc, _ = fused_run
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert proc.stderr == ''  # no warning, no log noise


@pytest.mark.slow
def test_prepares_data_and_reports_the_model(fused_run):
  lines = fused_run[0].stdout.splitlines()
  assert re.fullmatch(r"memory: ~0\.\d\d GB estimated \(this process 0\.\d\d GB, weights and AdamW state 0\.00 GB, "
                      r"a step's working memory 0\.\d\d GB\), \d+\.\d\d GB available", lines.pop(8))
  assert lines[:9] == [
      'tokens per iteration will be: 256',  # 1 x 8 x 32
      'preparing shakespeare_char in data/shakespeare_char',
      'length of dataset in characters: 1,115,394',
      'vocab size: 65',
      'train has 1,003,854 tokens',
      'val has 111,540 tokens',
      'found vocab_size = 65 (inside data/shakespeare_char/meta.json)',
      'Initializing a new model from scratch',
      'number of parameters: 0.03M',  # no biases: 2 x (12 x 32^2 + 2 x 32) + 65 x 32 + 32 = 26,816
  ]


@pytest.mark.slow
def test_log_lines_are_nanogpts(fused_run):
  proc, _ = fused_run
  steps, iters = parse_log(proc.stdout)
  assert sorted(steps) == [0, 20, 40]
  assert sorted(iters) == list(range(0, 41, 5))  # iterations 0..max_iters inclusive, every log_interval
  other = [line for line in proc.stdout.splitlines()
           if line.startswith(('step', 'iter')) and not (STEP.match(line) or ITER.match(line))]
  assert other == []


@pytest.mark.slow
def test_loss_goes_down(fused_run):
  steps, iters = parse_log(fused_run[0].stdout)
  assert 4.0 < steps[0][1] < 4.35  # about ln(65) = 4.17 at init
  assert steps[40][1] < steps[20][1] < steps[0][1] - 0.3
  assert iters[40] < iters[0] - 0.3


@pytest.mark.slow
def test_checkpoint_after_improving_evals_never_at_step_0(fused_run):
  proc, out_dir = fused_run
  lines = proc.stdout.splitlines()
  saves = [i for i, line in enumerate(lines) if line == f'saving checkpoint to {out_dir}']
  assert [STEP.match(lines[i - 1])[1] for i in saves] == ['20', '40']  # each right after its eval
  assert lines[-1] == f'saving checkpoint to {out_dir} (the final state, before iteration 41)'
  # orbax keeps the best (40) and the latest (the final state)
  assert sorted(p.name for p in out_dir.iterdir()) == ['40', '41', 'metrics.jsonl']
  assert {'params', 'opt_state', 'meta'} <= {p.name for p in (out_dir / '40').iterdir()}
  meta = json.loads((out_dir / '40' / 'meta' / 'metadata').read_text())
  assert meta['iter_num'] == 40
  assert meta['best_val_loss'] == pytest.approx(parse_log(proc.stdout)[0][40][1], abs=5e-5)
  assert meta['model_args']['n_layer'] == 2 and meta['model_args']['vocab_size'] == 65
  assert meta['config']['max_iters'] == 40


@pytest.mark.slow
def test_nanogpt_spelling_staged_step_same_run(fused_run, workdir):
  # nanoGPT's `train.py CONFIG --key=value`, and compile=False: the same run, the same numbers
  out_dir = workdir / 'out'
  proc = train(workdir, CONFIG, '--device=cpu', '--compile=False', *overrides('--', out_dir=out_dir, threads=1))
  assert proc.returncode == 0, proc.stdout + proc.stderr
  steps, iters = parse_log(proc.stdout)
  fused_steps, fused_iters = parse_log(fused_run[0].stdout)
  assert sorted(steps) == [0, 20, 40] and sorted(iters) == list(range(0, 41, 5))
  # one program or two: the same float32 math up to summation order, so the
  # 4-decimal prints agree but for a rounding flip in the last digit
  for step in steps:
    assert steps[step] == pytest.approx(fused_steps[step], abs=1.5e-4)
  for it in iters:
    assert iters[it] == pytest.approx(fused_iters[it], abs=1.5e-4)
  assert (out_dir / '40' / 'params').is_dir()


@pytest.mark.slow
@pytest.mark.parametrize('threads', [0, 2, 4])
def test_step_sharded_over_threads_same_run(fused_run, workdir, threads):
  # the batch's rows over threads (0: one a core, the default): the fused run's
  # losses, up to float32 summation order
  proc = train(workdir, f'--config={CONFIG}', *overrides('--config.', out_dir=workdir / 'out', threads=threads))
  assert proc.returncode == 0, proc.stdout + proc.stderr
  (steps, iters), (fused_steps, fused_iters) = parse_log(proc.stdout), parse_log(fused_run[0].stdout)
  assert steps.keys() == fused_steps.keys() and iters.keys() == fused_iters.keys()
  for got, want in ((steps, fused_steps), (iters, fused_iters)):
    for n in want:
      assert got[n] == pytest.approx(want[n], abs=1.5e-4)


@pytest.mark.slow
def test_each_program_compiles_once_in_a_run_and_in_a_resumed_one(workdir):
  # jax logs every compilation; a step input placed otherwise than the step's
  # output (the optimizer's step count was) compiles the step again at iteration 1.
  # The fresh run fuses its step, the first resumed one stages it (compile=False),
  # the second splits it over two threads (one shard program, run by both).
  env = os.environ | {'JAX_LOG_COMPILES': '1'}
  for init_from, max_iters, compile_, threads, step_programs in (
      ('scratch', 6, True, 1, ['fused_step']), ('resume', 9, False, 1, ['loss_and_grads', 'apply_update']),
      ('resume', 12, True, 2, ['shard_grads', 'apply_update'])):
    proc = train(workdir, f'--config={CONFIG}', *overrides(
        '--config.', compile=compile_, threads=threads, init_from=init_from, max_iters=max_iters, eval_interval=3,
        log_interval=1, out_dir=workdir / 'out'), env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    compiled = re.findall(r'Compiling jit\((\w+)\)', proc.stderr)
    for program in step_programs + ['eval_losses']:
      assert compiled.count(program) == 1, (init_from, program, compiled)


@pytest.mark.slow
def test_metrics_jsonl_holds_every_logged_iteration_and_evaluation(fused_run):
  proc, out_dir = fused_run
  records = [json.loads(line) for line in (out_dir / 'metrics.jsonl').read_text().splitlines()]
  steps, iters = parse_log(proc.stdout)
  evals = [r for r in records if 'val_loss' in r]
  logged = [r for r in records if 'loss' in r]
  assert len(evals) + len(logged) == len(records)
  assert [r['iter'] for r in evals] == [0, 20, 40]
  for r in evals:
    assert (round(r['train_loss'], 4), round(r['val_loss'], 4)) == pytest.approx(steps[r['iter']], abs=1e-9)
  assert [r['iter'] for r in logged] == list(range(0, 41, 5))
  for r in logged:
    assert set(r) == {'iter', 'loss', 'lr', 'ms', 'tokens_per_s', 'mfu'}
    assert round(r['loss'], 4) == pytest.approx(iters[r['iter']], abs=1e-9)
    assert r['tokens_per_s'] == pytest.approx(8 * 32 / r['ms'] * 1000)
  # nanoGPT's schedule: linear warmup over 5 iterations, cosine to min_lr at 40
  assert [r['lr'] for r in logged[:2]] == pytest.approx([1e-3 * 1 / 6, 1e-3], rel=1e-6)
  assert logged[-1]['lr'] == pytest.approx(1e-4, rel=1e-6)
  assert logged[0]['mfu'] is None and logged[-1]['mfu'] > 0  # nanoGPT skips the first 5 iterations


@pytest.mark.slow
def test_non_finite_loss_stops_at_once_and_keeps_the_checkpoints(workdir):
  out_dir = workdir / 'out'
  proc = train(workdir, f'--config={CONFIG}', *overrides('--config.', out_dir=out_dir, max_iters=20, eval_interval=10))
  assert proc.returncode == 0, proc.stderr
  before = {p.relative_to(out_dir): p.stat().st_mtime_ns for p in out_dir.rglob('*') if p.name != 'metrics.jsonl'}
  # resumed with a learning rate that blows the weights up within a few steps,
  # logging (100) and evaluating (30) too rarely to notice on those
  proc = train(workdir, f'--config={CONFIG}', '--config.init_from=resume',
               *overrides('--config.', out_dir=out_dir, max_iters=40, eval_interval=30, log_interval=100,
                          learning_rate=1e6, min_lr=1.0, warmup_iters=0))
  assert proc.returncode == 1
  message = proc.stderr.splitlines()[-1]
  assert re.fullmatch(r'error: loss is (nan|inf) at iteration (2[1-9]) \(the last finite loss was \S+ at iteration '
                      r'(2\d)\); stopped, the checkpoints in \S+ are as they were: lower --config.learning_rate or '
                      r'raise --config.warmup_iters', message), message
  assert 'saving checkpoint' not in proc.stdout
  after = {p.relative_to(out_dir): p.stat().st_mtime_ns for p in out_dir.rglob('*') if p.name != 'metrics.jsonl'}
  assert after == before


@pytest.mark.slow
def test_eval_fixed_evaluates_the_same_batches_every_time(workdir):
  """With a learning rate too small to move the weights, only the batches can
  change the eval losses: fixed, every eval prints the same numbers."""
  still = dict(max_iters=10, eval_interval=5, learning_rate=1e-9, decay_lr=False, warmup_iters=0)
  fixed = train(workdir, f'--config={CONFIG}', *overrides('--config.', out_dir=workdir / 'fixed', eval_fixed=True, **still))
  moving = train(workdir, f'--config={CONFIG}', *overrides('--config.', out_dir=workdir / 'moving', **still))
  assert fixed.returncode == 0 and moving.returncode == 0, fixed.stderr + moving.stderr
  fixed_steps, moving_steps = parse_log(fixed.stdout)[0], parse_log(moving.stdout)[0]
  assert sorted(fixed_steps) == [0, 5, 10]
  assert fixed_steps[0] == moving_steps[0]  # both draw the batches of iteration 0 first
  assert fixed_steps[5] == fixed_steps[10] == fixed_steps[0]
  assert moving_steps[5] != moving_steps[0] and moving_steps[10] != moving_steps[5]


@pytest.mark.slow
def test_eval_only(workdir):
  out_dir = workdir / 'out'
  proc = train(workdir, f'--config={CONFIG}', *overrides('--config.', out_dir=out_dir, eval_only=True))
  assert proc.returncode == 0, proc.stdout + proc.stderr
  steps, iters = parse_log(proc.stdout)
  assert list(steps) == [0] and iters == {}
  assert 'saving checkpoint' not in proc.stdout
  assert sorted(p.name for p in out_dir.iterdir()) == ['metrics.jsonl']  # no checkpoint at step 0



@pytest.mark.slow
def test_eval_only_on_resume_evaluates_the_checkpoint_and_keeps_it(fused_run, tmp_path):
  """nanoGPT's `iter_num == 0 and eval_only` would train a resumed run on,
  and the rotation would delete the checkpoint it resumed from."""
  _, out_dir = fused_run
  work = tmp_path / 'work'
  shutil.copytree(out_dir.parent / 'data', work / 'data')
  shutil.copytree(out_dir, work / 'out')
  before = sorted(p.name for p in (work / 'out').iterdir())
  proc = train(work, f'--config={CONFIG}', *overrides('--config.', out_dir='out', max_iters=80),
               '--config.init_from=resume', '--config.eval_only=True')
  assert proc.returncode == 0, proc.stdout + proc.stderr
  steps, iters = parse_log(proc.stdout)
  assert list(steps) == [41] and iters == {}  # the final state of the 40-iteration run, evaluated
  assert 'saving checkpoint' not in proc.stdout
  assert sorted(p.name for p in (work / 'out').iterdir()) == before


@pytest.mark.slow
def test_the_final_state_is_saved_when_no_evaluation_comes(workdir):
  proc = train(workdir, f'--config={CONFIG}', *overrides('--config.', out_dir='out', max_iters=10, eval_interval=100))
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert list(parse_log(proc.stdout)[0]) == [0]
  assert proc.stdout.splitlines()[-1] == 'saving checkpoint to out (the final state, before iteration 11)'
  resumed = train(workdir, f'--config={CONFIG}', *overrides('--config.', out_dir='out', max_iters=12, log_interval=1),
                  '--config.init_from=resume')
  assert resumed.returncode == 0, resumed.stdout + resumed.stderr
  assert sorted(parse_log(resumed.stdout)[1]) == [11, 12]  # on from where the first run ended


@pytest.mark.slow
def test_a_second_writer_on_a_training_out_dir_is_one_error_line(workdir):
  """Two trainings in one out_dir: the second stops at once with one line
  (orbax's tracebacks before); the first trains on untouched."""
  first = subprocess.Popen([sys.executable, str(REPO_ROOT / 'train.py'), f'--config={CONFIG}',
                            *overrides('--config.', out_dir='out', max_iters=100000, eval_interval=10)],
                           cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    for line in first.stdout:  # until it has saved: out holds a checkpoint and the lock
      if line.startswith('saving checkpoint'):
        break
    proc = train(workdir, f'--config={CONFIG}', *overrides('--config.', out_dir='out', max_iters=100),
                 '--config.init_from=resume')
    assert proc.returncode == 1
    [error] = proc.stderr.splitlines()
    assert error == f'error: another run is writing into {workdir / "out"}: wait for it to finish, or write into ' \
        'another out_dir'
    assert first.poll() is None  # still training
  finally:
    first.terminate()
    first.communicate(timeout=120)
  assert first.returncode == 0


@pytest.mark.slow
@pytest.mark.parametrize('args, message', [
    (['--config.batch_size=abc'], 'error: --config.batch_size=abc is not an int: pass e.g. --config.batch_size=12'),
    (['--config.n_embd=130'], 'error: n_embd=130 is not divisible by n_head=4'),
    (['--config.dropout=1.5'], 'error: dropout=1.5 must be in [0, 1)'),
])
def test_bad_override_is_one_error_line(tmp_path, args, message):
  proc = train(tmp_path, f'--config={CONFIG}', *args, timeout=60)
  assert proc.returncode == 1
  assert proc.stdout == ''
  assert 'Traceback' not in proc.stderr
  [line] = proc.stderr.splitlines()
  assert line.startswith(message)
  assert not (tmp_path / 'data').exists()  # nothing ran


@pytest.mark.slow
def test_missing_config_file_is_one_error_line(tmp_path):
  proc = train(tmp_path, '--config=configs/nope.py', timeout=60)
  assert proc.returncode == 1
  assert 'Traceback' not in proc.stderr
  [line] = proc.stderr.splitlines()
  assert line.startswith('error: ') and "configs/nope.py" in line


@pytest.mark.slow
def test_missing_dataset_is_one_error_line(tmp_path):
  proc = train(tmp_path, f'--config={CONFIG}', '--config.dataset=openwebtext', timeout=120)
  assert proc.returncode == 1
  assert 'Traceback' not in proc.stderr
  [line] = proc.stderr.splitlines()
  assert line.startswith('error: data/openwebtext/train.bin not found: prepare the data set first')


# the progress bar as drawn: iter N/M, the bar, what the run is doing (or the last step's figures), the time left
BAR = re.compile(r'iter +(\d+)/(\d+) [━╺╸ ]+ (compiling|loading the weights|evaluating|training|'
                 r'loss (\S+)  lr \S+  ([\d,]+) tokens/s) +(-:--:--|\d+:\d\d:\d\d)')


def bars(text):
  """[(iteration shown, what the bar says)] in the order drawn, and the log lines apart."""
  drawn, lines = [], []
  for piece in re.split(r'[\r\n]+', text):
    m = BAR.fullmatch(piece.strip())
    if m:
      drawn.append((int(m[1]), m[3]))
    elif piece.strip():
      lines.append(piece.strip())
  return drawn, lines


@pytest.mark.slow
def test_progress_bar_on_a_terminal(workdir):
  """On a terminal a rich progress bar sits under the log lines; piped (every
  other test here) the output is the log lines alone. It says what the run is
  doing before the first step's figures: compiling, then evaluating (at step
  0, and at each evaluation after); never a loss or a speed it has not got."""
  status, text = run_in_terminal([sys.executable, str(REPO_ROOT / 'train.py'), f'--config={CONFIG}',
                                  *overrides('--config.', out_dir=workdir / 'out', max_iters=20, eval_interval=10)],
                                 cwd=workdir)
  assert status == 0, text[-2000:]
  drawn, lines = bars(text)
  assert 'step 20: train loss' in text and 'iter 20: loss' in text  # the log lines too
  assert not [line for line in lines if line.startswith('iter ') and not ITER.match(line)]  # no bar left unparsed
  assert drawn[0] == (0, 'compiling') and text.index('compiling') < text.index('memory: ')  # drawn while compiling
  first_figures = next(i for i, (_, says) in enumerate(drawn) if says.startswith('loss '))
  assert 'evaluating' in [says for _, says in drawn[:first_figures]]  # step 0's evaluation
  assert text.index('evaluating') < text.index('step 0: train loss')
  assert (10, 'evaluating') in drawn and (20, 'evaluating') in drawn  # and the later ones
  figures = [says for _, says in drawn if says.startswith('loss ')]
  assert all(float(says.split()[1]) > 0 and says.split()[4] != '0' for says in figures)
  assert 'nan' not in text
  assert re.fullmatch(r'loss \d\.\d{4}  lr \d\.\d\de-0\d  [\d,]+ tokens/s', figures[-1])
  assert drawn[-1][0] == 21  # left on the screen at the end: the whole run, with its last figures


WANDB_STUB = '''
import json, os
_log = open(os.environ['WANDB_STUB_LOG'], 'a')
def init(project, name, config):
  _log.write(json.dumps({'init': [project, name, config['wandb_log']]}) + '\\n')
def log(values):
  _log.write(json.dumps(values) + '\\n')
def finish():
  _log.write('"finish"\\n')
  _log.close()
'''


@pytest.mark.slow
def test_wandb_logs_nanogpts_keys_at_every_evaluation(workdir, tmp_path):
  """wandb itself is an optional extra (its offline mode was tried by hand):
  a stand-in module records what train.py hands it."""
  (tmp_path / 'stub').mkdir()
  (tmp_path / 'stub' / 'wandb.py').write_text(WANDB_STUB)
  env = os.environ | {'PYTHONPATH': str(tmp_path / 'stub'), 'WANDB_STUB_LOG': str(tmp_path / 'calls.jsonl')}
  proc = subprocess.run([sys.executable, str(REPO_ROOT / 'train.py'), f'--config={CONFIG}', '--config.wandb_log=True',
                         *overrides('--config.', out_dir=workdir / 'out', max_iters=20, eval_interval=10)],
                        cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr
  calls = [json.loads(line) for line in (tmp_path / 'calls.jsonl').read_text().splitlines()]
  assert calls[0] == {'init': ['shakespeare-char', 'mini-gpt', True]} and calls[-1] == 'finish'
  steps = parse_log(proc.stdout)[0]
  logged = calls[1:-1]
  assert [c['iter'] for c in logged] == [0, 10, 20]
  for c in logged:
    assert set(c) == {'iter', 'train/loss', 'val/loss', 'lr', 'mfu'}
    assert (round(c['train/loss'], 4), round(c['val/loss'], 4)) == pytest.approx(steps[c['iter']], abs=1e-9)
  assert logged[0]['mfu'] == -100  # nanoGPT's value before its first estimate


@pytest.mark.slow
def test_wandb_missing_is_one_error_line(workdir, tmp_path):
  (tmp_path / 'stub' / 'wandb').mkdir(parents=True)
  (tmp_path / 'stub' / 'wandb' / '__init__.py').write_text('raise ImportError("no wandb here")')
  proc = subprocess.run([sys.executable, str(REPO_ROOT / 'train.py'), f'--config={CONFIG}', '--config.wandb_log=True',
                         *overrides('--config.', out_dir=workdir / 'out')], cwd=workdir, capture_output=True, text=True,
                        env=os.environ | {'PYTHONPATH': str(tmp_path / 'stub')}, timeout=300)
  assert proc.returncode == 1
  assert proc.stderr.splitlines()[-1] == ('error: wandb_log=True needs wandb: pip install -e ".[wandb]", or pass '
                                          '--config.wandb_log=False')
  assert not (workdir / 'out').exists()  # it stops before writing anything


@pytest.mark.slow  # trains in process
def test_without_onednn_training_says_so_in_one_line_and_trains(workdir, monkeypatch, capsys):
  monkeypatch.chdir(workdir)
  monkeypatch.setattr(runtime, 'prefers_onednn', lambda n_embd: True)  # as for a wide model
  monkeypatch.setattr(runtime, 'has_onednn', lambda: False)  # as on a jaxlib built without oneDNN
  assert cli.main(['train.py', f'--config={CONFIG}', *overrides('--config.', out_dir='out', max_iters=4,
                                                                eval_interval=4, log_interval=1)]) == 0
  stdout = capsys.readouterr().out
  assert stdout.splitlines().count("float32 matmuls: XLA's own, not oneDNN's (this jaxlib has no oneDNN): slower "
                                   'than on x86-64 Linux') == 1
  steps, iters = parse_log(stdout)
  assert sorted(steps) == [0, 4] and sorted(iters) == [0, 1, 2, 3, 4]


@pytest.mark.slow  # trains in process
def test_the_splits_evaluated_in_two_threads_give_the_losses_of_one_thread(workdir, monkeypatch, capsys):
  # on one device train.py evaluates train and val at once, one split a thread
  from jaxgpt import train as train_module
  pools = []

  class Threads(train_module.ThreadPoolExecutor):
    def __init__(self, workers, **kwargs):
      pools.append(('threads', workers))
      super().__init__(workers, **kwargs)

  class OneThread:  # runs each split as it is submitted, on the caller's thread
    def __init__(self, workers, **kwargs):
      pools.append(('one thread', workers))

    def __enter__(self):
      return self

    def __exit__(self, *exc_info):
      return None

    def submit(self, fn, *args):
      result = fn(*args)
      return type('Done', (), {'result': lambda self: result})()

  monkeypatch.chdir(workdir)
  logs = {}
  for name, pool in (('threads', Threads), ('one thread', OneThread)):
    monkeypatch.setattr(train_module, 'ThreadPoolExecutor', pool)
    assert cli.main(['train.py', f'--config={CONFIG}', *overrides('--config.', out_dir=f'out-{len(logs)}', max_iters=4,
                                                                  eval_interval=2, log_interval=1)]) == 0
    logs[name] = [line for line in capsys.readouterr().out.splitlines() if line.startswith('step ')]
  assert pools == [('threads', 1), ('one thread', 1)]  # one second thread, kept for the run's 3 evaluations
  assert len(logs['threads']) == 3 and logs['threads'] == logs['one thread']
  steps = parse_log('\n'.join(logs['threads']))[0]
  assert all(train != val for train, val in steps.values())  # each split its own batches
