"""The full-split evaluation: jaxgpt.evaluate's loss against a plain sum over
the split (jaxgpt's model, window by window) and against nanoGPT's model.py
in torch on a ckpt.pt; the same number at every call; its command's line and
its one-line errors; and train.py's full_val_context, target_val_loss and
time_limit, end to end in a subprocess.

In process, in a folder holding a small character data set (data/tiny), a
jaxgpt checkpoint of the tiny model in `out` and nanoGPT's ckpt.pt of it.
"""

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import jax
import numpy as np
import pytest
import torch
from flax import nnx

from conftest import REPO_ROOT, TINY, TINY_RUN, config_flags, make_workdir, nanogpt_folder, parse_log
from jaxgpt import ckpt_pt, cli, evaluate, nanogpt_torch
from jaxgpt.checkpoint import Checkpoints
from jaxgpt.config import ConfigError, base_config, validate
from jaxgpt.optim import make_optimizer
from jaxgpt.step import init_model

VOCAB = [chr(ord('0') + i) for i in range(TINY.vocab_size)]
SPLIT_LENGTHS = {'train': 2_001, 'val': 1_000}  # val: 999 targets, so windows of 8 or 16 leave a partial last one
CONTEXT = 8  # the tests' windows, shorter than TINY's block_size of 16


def sharp_params(seed: int = 3):
  """TINY's params, scaled up so that its predictions are far from uniform: a
  window or target taken wrongly changes the loss by more than the tolerance."""
  return jax.tree.map(lambda a: a * 6, init_model(TINY, seed)[2])


def write_dataset(folder, vocab, lengths, seed=0):
  """data/<name>: train.bin and val.bin of random ids, and the meta.json of vocab."""
  folder.mkdir(parents=True)
  rng = np.random.default_rng(seed)
  for split, length in lengths.items():
    rng.integers(0, len(vocab), length).astype(np.uint16).tofile(folder / f'{split}.bin')
  (folder / 'meta.json').write_text(json.dumps({'vocab_size': len(vocab), 'itos': vocab}))


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  """data/tiny (and data/short, data/other), and `out` holding step 7 of the tiny model, trained in bfloat16."""
  root = tmp_path_factory.mktemp('evaluate')
  write_dataset(root / 'data' / 'tiny', VOCAB, SPLIT_LENGTHS)
  write_dataset(root / 'data' / 'short', VOCAB, {'train': 100, 'val': 10})
  write_dataset(root / 'data' / 'other', VOCAB[:60], SPLIT_LENGTHS)
  params = sharp_params()
  c = base_config()
  c.dataset = 'tiny'
  with Checkpoints(str(root / 'out')) as checkpoints:
    checkpoints.save(7, params, make_optimizer(c).init(params), {
        'iter_num': 7, 'val_loss': 2.0, 'best_val_loss': 2.0,
        'model_args': dataclasses.asdict(dataclasses.replace(TINY, dtype='bfloat16')),
        'config': c.to_dict(), 'vocab': VOCAB})
  return root


def plain_loss(logits_of, tokens: np.ndarray, context: int) -> float:
  """The mean loss over tokens 1 .. n - 1, written out: the windows one after
  another from 0, then the split's last `context` tokens, each target counted
  the first time a window predicts it. logits_of(window) -> (context, vocab)."""
  n = len(tokens)
  starts = list(range(0, n - context, context))
  if starts[-1] + context < n - 1:
    starts.append(n - 1 - context)
  total, counted = 0.0, set()
  for start in starts:
    logits = np.asarray(logits_of(tokens[start:start + context]), np.float64)
    log_probs = logits - np.log(np.sum(np.exp(logits - logits.max(-1, keepdims=True)), -1,
                                       keepdims=True)) - logits.max(-1, keepdims=True)
    for position in range(context):
      target = start + position + 1
      if target not in counted:
        counted.add(target)
        total -= log_probs[position, tokens[target]]
  assert counted == set(range(1, n))
  return total / (n - 1)


def jaxgpt_logits(params):
  model = nnx.merge(init_model(TINY, 0)[1], params)
  return lambda window: model(window[None].astype(np.int32))[0][0]


@pytest.mark.parametrize('num_tokens, context', [(10, 3), (11, 5), (17, 16), (100, 16), (1000, 8), (1001, 8)])
def test_windows_cover_each_target_once(num_tokens, context):
  starts, counted = evaluate.windows(num_tokens, context)
  targets = [start + position + 1 for start, first in zip(starts, counted) for position in range(first, context)]
  assert targets == list(range(1, num_tokens))
  assert all(0 <= start <= num_tokens - 1 - context for start in starts)


def test_windows_need_one_window_and_its_targets():
  with pytest.raises(ValueError, match='10 tokens hold no window of 10 tokens'):
    evaluate.windows(10, 10)


@pytest.mark.parametrize('length', [1 + 40 * CONTEXT, 1 + 40 * CONTEXT + 5])  # whole windows only; a partial last one
def test_split_loss_is_the_plain_sum_over_the_split(length):
  params = sharp_params()
  tokens = np.random.default_rng(1).integers(0, TINY.vocab_size, length).astype(np.uint16)
  loss = evaluate.split_loss(params, init_model(TINY, 0)[1], tokens, CONTEXT)
  expected = plain_loss(jaxgpt_logits(params), tokens, CONTEXT)
  assert abs(loss - np.log(TINY.vocab_size)) > 0.5  # far from uniform predictions
  assert loss == pytest.approx(expected, rel=1e-6)


def test_a_stop_ends_the_evaluation_between_program_calls():
  params, graphdef = sharp_params(), init_model(TINY, 0)[1]
  tokens = np.zeros(3 * evaluate.TOKENS_PER_CALL + 1, np.uint16)  # three calls' windows
  sum_losses, calls = evaluate.make_token_losses(graphdef), []

  def counted(*args):
    calls.append(1)
    return sum_losses(*args)
  assert evaluate.split_loss(params, graphdef, tokens, CONTEXT, sum_losses=counted, stop=lambda: len(calls) == 2) \
      is None
  assert len(calls) == 2


def test_a_helper_thread_makes_every_other_call_and_the_number_is_the_same():
  params, graphdef = sharp_params(), init_model(TINY, 0)[1]
  tokens = np.random.default_rng(2).integers(0, TINY.vocab_size, 5 * evaluate.TOKENS_PER_CALL + 3).astype(np.uint16)
  sum_losses, threads = evaluate.make_token_losses(graphdef), []

  def noted(*args):
    threads.append(threading.current_thread().name)
    return sum_losses(*args)
  alone = evaluate.split_loss(params, graphdef, tokens, CONTEXT, sum_losses=noted)
  assert threads == ['MainThread'] * 6  # five calls of whole windows, and the partial last
  threads.clear()
  with ThreadPoolExecutor(1, thread_name_prefix='helper') as helper:
    helped = evaluate.split_loss(params, graphdef, tokens, CONTEXT, sum_losses=noted, helper=helper)
    assert sorted(threads) == ['MainThread'] * 3 + ['helper_0'] * 3
    threads.clear()
    stopped = evaluate.split_loss(params, graphdef, tokens, CONTEXT, sum_losses=noted, helper=helper,
                                  stop=lambda: len(threads) == 2)
  assert helped == alone  # the calls' sums added in one order: not a bit apart
  assert stopped is None and len(threads) == 2  # the stop heard after the first two calls


def test_the_checkpoint_gives_the_plain_sum_the_same_every_time(folder, monkeypatch, capsys):
  monkeypatch.chdir(folder)
  tokens = np.fromfile(folder / 'data' / 'tiny' / 'val.bin', np.uint16)
  expected = plain_loss(jaxgpt_logits(sharp_params()), tokens, CONTEXT)
  first, second = (evaluate.evaluate('out', context=CONTEXT) for _ in range(2))
  assert first.loss == second.loss == pytest.approx(expected, rel=1e-6)  # in float32: bfloat16's would be ~1e-3 off
  assert evaluate.main(['evaluate', 'out', f'--context={CONTEXT}']) == 0
  assert evaluate.main(['evaluate', 'out', f'--context={CONTEXT}']) == 0
  out, err = capsys.readouterr()
  line = re.escape(f'val loss {expected:.4f} over 999 tokens of data/tiny/val.bin (windows of {CONTEXT}), step 7 of '
                   'out, in ') + r'\d+\.\d s'
  assert re.fullmatch(f'{line}\n{line}\n', out) and err == ''
  train = evaluate.evaluate('out', 'latest', split='train')  # the default context: the model's block_size
  assert (train.targets, train.context) == (SPLIT_LENGTHS['train'] - 1, TINY.block_size)


def test_nanogpt_ckpt_pt_gives_nanogpts_own_loss(folder, monkeypatch):
  monkeypatch.chdir(folder)
  model_py = nanogpt_torch.checkout(nanogpt_folder())
  model_args = {key: getattr(TINY, key) for key in ckpt_pt.MODEL_ARGS}  # nanoGPT's
  torch.manual_seed(0)
  model = model_py.GPT(model_py.GPTConfig(**model_args))
  with torch.no_grad():  # as sharp_params: far from uniform predictions
    for weight in model.parameters():
      weight.mul_(6)
  torch.save({'model': model.state_dict(), 'model_args': model_args, 'iter_num': 250,
              'best_val_loss': torch.tensor(2.5), 'config': {'dataset': 'tiny'}}, 'ckpt.pt')

  def torch_logits(window):
    with torch.no_grad():  # nanoGPT's GPT gives the logits of every position only with targets (any will do)
      idx = torch.from_numpy(window.astype(np.int64))[None]
      return model(idx, idx)[0][0].numpy()
  tokens = np.fromfile(folder / 'data' / 'tiny' / 'val.bin', np.uint16)
  evaluation = evaluate.evaluate('ckpt.pt', context=CONTEXT)
  assert abs(evaluation.loss - np.log(TINY.vocab_size)) > 0.5  # far from uniform predictions
  assert evaluation.loss == pytest.approx(plain_loss(torch_logits, tokens, CONTEXT), rel=1e-5)
  assert evaluation.what == 'step 250 of ckpt.pt'


@pytest.mark.parametrize('args, message', [
    (['nowhere'], 'out_dir {folder}/nowhere does not exist: point out_dir at the folder a training run wrote'),
    (['nowhere.pt'], "nowhere.pt is not a readable nanoGPT checkpoint (no such file): pass the ckpt.pt nanoGPT's"),
    (['data'], 'no checkpoint in {folder}/data: train first'),
    (['out', '--context=17'], "--context=17 is not a context the model takes (1 to its block_size, 16): pass "
                              '--context=16 or less'),
    (['out', '--context=0'], "--context=0 is not a context the model takes"),
    (['out', '--dataset=missing'], 'data/missing/train.bin not found: prepare the data set first'),
    (['out', '--dataset=../tiny'], "--dataset='../tiny' is not a data set name"),
    (['out', '--dataset=short'], 'data/short/val.bin holds 10 tokens, too few for one window of 16 tokens and its '
                                 'targets (17): lower --context, or use a longer split'),
    (['out', '--dataset=other'], 'data/other holds 60 characters, not the vocabulary step 7 of out was trained on '
                                 '(vocab_size 65): pass --dataset=<the data set it was trained on>'),
    (['ckpt.pt', '--checkpoint=latest'], "is one checkpoint, nanoGPT's ckpt.pt: drop --checkpoint"),
])
def test_bad_input_is_one_error_line(folder, monkeypatch, capsys, args, message):
  monkeypatch.chdir(folder)
  (folder / 'ckpt.pt').touch()
  assert evaluate.main(['evaluate', *args]) == 1
  out, err = capsys.readouterr()
  assert out == '' and err.startswith('error: ') and err.count('\n') == 1, err
  assert message.format(folder=folder) in err


def test_a_ckpt_pt_without_torch_is_one_error_line(folder, monkeypatch, capsys):
  monkeypatch.chdir(folder)
  torch.save({}, 'empty.pt')
  monkeypatch.setitem(sys.modules, 'torch', None)  # import torch fails
  assert evaluate.main(['evaluate', 'empty.pt']) == 1
  assert capsys.readouterr().err == 'error: reading or writing ckpt.pt needs torch: pip install -e ".[torch]"\n'


@pytest.mark.parametrize('settings, message', [
    (dict(full_val_context=-1), 'full_val_context=-1 must be >= 0 (0: off)'),
    (dict(target_val_loss=-1.0), 'target_val_loss=-1.0 must be >= 0 (0: off)'),
    (dict(time_limit=-1.0), 'time_limit=-1.0 must be >= 0 (0: off)'),
    (dict(eval_start=-1), 'eval_start=-1 must be >= 0'),
    (dict(full_val_context=1025), 'full_val_context=1025 exceeds block_size=1024, the longest context the model '
                                  'reads: pass --config.full_val_context=1024 or less'),
    (dict(full_val_context=64, num_processes=2), 'full_val_context evaluates the whole model in one process'),
])
def test_bad_keys_are_refused(settings, message):
  c = base_config()
  c.update(settings)
  with pytest.raises(ConfigError) as raised:
    validate(c)
  assert message in str(raised.value)


# -- train.py --------------------------------------------------------------------

# 40 iterations evaluated every 10; the whole val split in windows of 16
RUN = TINY_RUN | dict(max_iters=40, eval_interval=10, eval_iters=5, log_interval=5, warmup_iters=5, lr_decay_iters=40,
                      threads=1)
FULL_VAL_LINE = re.compile(r'^step (\d+): train loss \d+\.\d{4}, val loss (\d+\.\d{4}) '
                           r'\(the whole split, windows of 16, \d+\.\d\d s\)$')


CONFIG = REPO_ROOT / 'configs' / 'shakespeare_char.py'


def train(workdir, **settings):
  return subprocess.run([sys.executable, str(REPO_ROOT / 'train.py'), f'--config={CONFIG}',
                         *config_flags(RUN | settings)], cwd=workdir, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_train_stops_at_the_target_on_the_whole_val_split(tmp_path, shakespeare, monkeypatch, capsys):
  # an untrained model's loss is ~4.17; after 10 iterations ~3.9, after 20 ~3.7: the target is met at the third
  # evaluation, and the run stops there, before iteration 20 trains
  workdir = make_workdir(tmp_path, shakespeare)
  proc = train(workdir, out_dir='out', full_val_context=16, target_val_loss=3.8)
  assert proc.returncode == 0 and proc.stderr == '', proc.stderr
  lines = proc.stdout.splitlines()
  evaluations = {int(m[1]): float(m[2]) for m in map(FULL_VAL_LINE.match, lines) if m}
  assert sorted(evaluations) == [0, 10, 20] and evaluations[10] > 3.8 >= evaluations[20]
  assert max(parse_log(proc.stdout)[1]) == 15  # the last iteration logged: none trained past the target
  assert lines[-2:] == ['saving checkpoint to out', f'val loss {evaluations[20]:.4f} is at or below '
                        'target_val_loss=3.8: stopped at iteration 20, saved in out']
  with Checkpoints(str(workdir / 'out'), read_only=True) as checkpoints:
    assert checkpoints.best_step() == checkpoints.latest_step() == 20
    saved = checkpoints.meta(20)['val_loss']
  records = [json.loads(line) for line in (workdir / 'out' / 'metrics.jsonl').read_text().splitlines()]
  assert [r['val_loss'] for r in records if 'val_loss' in r][-1] == saved
  monkeypatch.chdir(workdir)
  assert evaluate.evaluate('out', context=16).loss == saved  # the same program, the same weights: the same number
  assert evaluate.main(['evaluate', 'out', '--context=16']) == 0
  assert capsys.readouterr().out.startswith(f'val loss {saved:.4f} over 111,539 tokens of '
                                            'data/shakespeare_char/val.bin (windows of 16), step 20 of out, in ')


@pytest.mark.slow
def test_train_stops_at_the_time_limit(tmp_path, shakespeare):
  workdir = make_workdir(tmp_path, shakespeare)
  proc = train(workdir, out_dir='out', time_limit=0.001)  # passed before the first iteration ends
  assert proc.returncode == 0 and proc.stderr == '', proc.stderr
  steps, iters = parse_log(proc.stdout)
  assert sorted(steps) == [0, 1] and sorted(iters) == [0]  # evaluated where it stopped, after iteration 0
  assert re.fullmatch(r'time_limit=0\.001 s passed \(\d+\.\d s since the process started\): stopped at iteration 1, '
                      r'saved in out', proc.stdout.splitlines()[-1])
  with Checkpoints(str(workdir / 'out'), read_only=True) as checkpoints:
    assert checkpoints.latest_step() == 1 and checkpoints.meta(1)['val_loss'] == pytest.approx(steps[1][1], abs=1e-4)


@pytest.mark.slow
def test_eval_start_leaves_out_the_evaluations_before_it(tmp_path, shakespeare):
  workdir = make_workdir(tmp_path, shakespeare)
  proc = train(workdir, out_dir='out', eval_start=25, max_iters=35)
  assert proc.returncode == 0 and proc.stderr == '', proc.stderr
  steps, iters = parse_log(proc.stdout)
  assert sorted(steps) == [30]  # 0, 10 and 20 come before eval_start
  assert sorted(iters) == list(range(0, 36, 5))  # trained throughout
  assert proc.stdout.splitlines()[-1] == 'saving checkpoint to out (the final state, before iteration 36)'
  with Checkpoints(str(workdir / 'out'), read_only=True) as checkpoints:
    assert checkpoints.steps() == [30, 36] and checkpoints.best_step() == 30


@pytest.mark.slow  # trains in process
def test_a_stop_during_the_whole_split_evaluation_abandons_it_and_saves(tmp_path, shakespeare, monkeypatch, capsys,
                                                                        caplog):
  monkeypatch.chdir(make_workdir(tmp_path, shakespeare))
  evaluate_split, calls = evaluate.SplitEvaluator.__call__, []

  def interrupted(self, params, stop):
    def ctrl_c_after_the_first_call() -> bool:
      if len(calls) == 1:
        os.kill(os.getpid(), signal.SIGINT)
      calls.append(1)
      return stop()
    with jax.log_compiles():  # its program was compiled before the first step
      return evaluate_split(self, params, ctrl_c_after_the_first_call)
  monkeypatch.setattr(evaluate.SplitEvaluator, '__call__', interrupted)
  assert cli.main(['train.py', f'--config={CONFIG}', *config_flags(RUN | dict(out_dir='out', full_val_context=16))]) \
      == 0
  out = capsys.readouterr().out
  assert len(calls) == 2  # the second program call was not made
  assert 'step 0:' not in out  # abandoned, not finished
  assert out.splitlines()[-1] == ('SIGINT at iteration 0: saved a checkpoint to out; continue with '
                                  '--config.init_from=resume')
  assert not [record for record in caplog.records if 'Compiling' in record.getMessage()]
