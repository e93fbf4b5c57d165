"""nanoGPT's ckpt.pt in and out, against nanoGPT's own model.py (conftest.nanogpt_folder())."""

import dataclasses
import math
import os
import pathlib
import pickle
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest
import torch
from flax import nnx

from conftest import REPO_ROOT, TINY, file_size_limit, make_workdir, nanogpt_folder, nanogpt_get_lr
from jaxgpt import ckpt_pt, data, evaluate, files, gpt2, nanogpt, nanogpt_torch, runtime
from jaxgpt.checkpoint import Checkpoints
from jaxgpt.config import base_config
from jaxgpt.errors import JaxGPTError
from jaxgpt.optim import make_optimizer
from jaxgpt.step import init_model, TrainStep

CONFIG = TINY
# float32 through two implementations of the same graph: tests/fixtures/README.md
# measured 1e-6 on logits; 1e-5 leaves headroom and still catches any wrong weight
LOGITS_TOL = 1e-5


def idx() -> np.ndarray:
  return np.random.default_rng(0).integers(0, CONFIG.vocab_size, (3, CONFIG.block_size), dtype=np.int64)


def jax_logits(params) -> np.ndarray:
  graphdef = init_model(CONFIG, seed=0)[1]
  tokens = idx().astype(np.int32)
  return np.asarray(nnx.merge(graphdef, params)(tokens)[0])


def nanogpt_gpt(**model_args) -> torch.nn.Module:
  """nanoGPT's own GPT, from its model.py in nanogpt_folder(), initialised from torch's seed."""
  model_py = nanogpt_torch.checkout(nanogpt_folder())
  return model_py.GPT(model_py.GPTConfig(**model_args))


def torch_logits(model: torch.nn.Module) -> np.ndarray:
  tokens = torch.from_numpy(idx())
  with torch.no_grad():  # nanoGPT's GPT gives the logits of every position only with targets (any will do)
    return model(tokens, tokens)[0].numpy()


def save_jaxgpt_checkpoint(out_dir, params, step=10, val_loss=2.0):
  c = base_config()
  checkpoints = Checkpoints(str(out_dir))
  checkpoints.save(step, params, make_optimizer(c).init(params), {
      'iter_num': step, 'val_loss': val_loss, 'best_val_loss': val_loss,
      'model_args': dataclasses.asdict(CONFIG), 'config': c.to_dict(), 'vocab': None})
  checkpoints.close()


# a character vocabulary of CONFIG.vocab_size, as nanoGPT's prepare.py sorts it
VOCAB = sorted(chr(c) for c in range(ord('0'), ord('0') + CONFIG.vocab_size))
DATASET = 'tiny_char'


def write_meta_pkl(folder, vocab=VOCAB):
  """folder/meta.pkl as nanoGPT's data/shakespeare_char/prepare.py writes it."""
  folder.mkdir(parents=True, exist_ok=True)
  with open(folder / 'meta.pkl', 'wb') as f:
    pickle.dump({'vocab_size': len(vocab), 'itos': dict(enumerate(vocab)),
                 'stoi': {ch: i for i, ch in enumerate(vocab)}}, f)
  return folder / 'meta.pkl'


def nanogpt_checkpoint(path, prefix='', dataset=DATASET, vocab=VOCAB):
  """A nanoGPT checkpoint at path, with its data set's meta.pkl where nanoGPT
  keeps it: in data/ of the checkout its out_dir is in (path's folder's
  parent); vocab=None writes none."""
  path.parent.mkdir(parents=True, exist_ok=True)
  if vocab is not None:
    write_meta_pkl(path.parent.parent / 'data' / dataset, vocab)
  torch.manual_seed(0)
  model_args = {k: getattr(CONFIG, k) for k in ckpt_pt.MODEL_ARGS}
  model = nanogpt_gpt(**model_args)
  torch.save({'model': {prefix + k: v for k, v in model.state_dict().items()}, 'model_args': model_args,
              'iter_num': 7, 'best_val_loss': torch.tensor(2.5),
              'config': {'learning_rate': 1e-3, 'dataset': dataset, 'device': 'cuda'}}, path)
  return model


def torch_step(model, optimizer, batch, grad_clip):
  """One iteration of nanoGPT's train.py on the batch (x, then y one token on)."""
  # contiguous, as nanoGPT's get_batch stacks them: its loss views the targets flat
  x, y = (torch.from_numpy(np.ascontiguousarray(tokens)) for tokens in (batch[:, :-1], batch[:, 1:]))
  _, loss = model(x, y)
  loss.backward()
  if grad_clip != 0.0:
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
  optimizer.step()
  optimizer.zero_grad(set_to_none=True)


def jax_train_step(c):
  """jaxgpt's train step: (params, opt_state, batch, iter_num) -> (params, opt_state),
  the batch (x, then y one token on) as one micro-batch."""
  step = TrainStep(init_model(CONFIG, seed=0)[1], make_optimizer(c), dropout=False, seed=0, fused=True,
                   compiler_options=runtime.compiler_options(CONFIG.dtype, CONFIG.n_embd))

  def train_step(params, opt_state, batch, iter_num):
    xs, ys = batch[None, :, :-1].astype(np.int32), batch[None, :, 1:].astype(np.int32)
    return step(params, opt_state, xs, ys, iter_num)[:2]
  return train_step


def test_export_loads_into_nanogpt_with_equal_logits(tmp_path):
  params = init_model(CONFIG, seed=3)[2]
  save_jaxgpt_checkpoint(tmp_path / 'out', params)
  assert ckpt_pt.export_ckpt(str(tmp_path / 'out'), str(tmp_path / 'ckpt.pt')).step == 10
  ckpt = torch.load(tmp_path / 'ckpt.pt', map_location='cpu', weights_only=True)
  assert ckpt['iter_num'] == 10 and ckpt['best_val_loss'] == 2.0
  # tied in the file itself: the GPT ties them whatever the file holds, so only the file can show it
  assert torch.equal(ckpt['model']['lm_head.weight'], ckpt['model']['transformer.wte.weight'])
  model = nanogpt_gpt(**ckpt['model_args'])
  model.load_state_dict(ckpt['model'])  # strict: every name and shape as nanoGPT's
  assert ckpt['optimizer']['state'] == {}  # no update done: a fresh optimizer's
  np.testing.assert_allclose(torch_logits(model), jax_logits(params), atol=LOGITS_TOL, rtol=0)


@pytest.mark.parametrize('prefix', ['', '_orig_mod.'])  # torch.compile'd models save with the prefix
def test_import_gives_nanogpt_logits(tmp_path, prefix):
  model = nanogpt_checkpoint(tmp_path / 'out-nanogpt' / 'ckpt.pt', prefix)
  assert ckpt_pt.import_ckpt(str(tmp_path / 'out-nanogpt' / 'ckpt.pt'), str(tmp_path / 'out')) == 7
  checkpoints = Checkpoints(str(tmp_path / 'out'), read_only=True)
  meta = checkpoints.meta(7)
  assert meta['iter_num'] == 7 and meta['best_val_loss'] == 2.5
  assert meta['config']['learning_rate'] == 1e-3 and meta['config']['device'] == 'cpu'
  assert meta['vocab'] == VOCAB
  params = checkpoints.params(7, init_model(CONFIG, seed=0)[2])
  np.testing.assert_allclose(jax_logits(params), torch_logits(model), atol=LOGITS_TOL, rtol=0)


def test_round_trip_keeps_every_weight(tmp_path):
  model = nanogpt_checkpoint(tmp_path / 'in' / 'in.pt')
  ckpt_pt.import_ckpt(str(tmp_path / 'in' / 'in.pt'), str(tmp_path / 'out'))
  ckpt_pt.export_ckpt(str(tmp_path / 'out'), str(tmp_path / 'back.pt'))
  back = torch.load(tmp_path / 'back.pt', map_location='cpu', weights_only=True)['model']
  for name, tensor in model.state_dict().items():
    assert torch.equal(back[name], tensor), name


def run_cli(*args, cwd):
  return subprocess.run([sys.executable, '-m', 'jaxgpt.ckpt_pt', *args], cwd=cwd, capture_output=True, text=True)


@pytest.mark.slow
def test_bad_files_are_one_error_line(tmp_path):
  (tmp_path / 'junk.pt').write_bytes(b'not a checkpoint')
  torch.save({'model': {'transformer.wte.weight': torch.zeros(3, 3)}, 'model_args': {
      k: getattr(CONFIG, k) for k in ckpt_pt.MODEL_ARGS}}, tmp_path / 'partial.pt')
  cases = [
      (('import', 'junk.pt', '--out_dir=a'), 'is not a readable nanoGPT checkpoint'),
      (('import', 'missing.pt', '--out_dir=b'), 'is not a readable nanoGPT checkpoint'),
      (('import', 'partial.pt', '--out_dir=c'), 'state_dict does not match the model'),
      (('export', 'x.pt', '--out_dir=nowhere'), 'does not exist'),
  ]
  for args, message in cases:
    proc = run_cli(*args, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert 'Traceback' not in proc.stderr
    assert proc.stderr.count('\n') == 1 and proc.stderr.startswith('error: ') and message in proc.stderr, proc.stderr
  assert not (tmp_path / 'x.pt').exists()


@pytest.mark.slow
def test_module_runs_from_the_repository(tmp_path):
  # the documented command line, end to end
  ckpt = tmp_path / 'out-nanogpt' / 'ckpt.pt'
  nanogpt_checkpoint(ckpt)
  proc = run_cli('import', str(ckpt), f'--out_dir={tmp_path / "out"}', cwd=REPO_ROOT)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.splitlines() == [f'found vocab_size = 65 (inside {tmp_path / "data" / DATASET})',
                                      f'imported {ckpt} (iteration 7) into {tmp_path / "out"}']


@pytest.mark.slow  # trains several steps in process
@pytest.mark.parametrize('prefix', ['', '_orig_mod.'])
def test_import_continues_nanogpt_adamw(tmp_path, prefix):
  # nanoGPT trains 3 steps and saves (weights + AdamW moments); its 4th step
  # and jaxgpt's first step after import must give the same weights
  settings = dict(learning_rate=1e-3, decay_lr=False, weight_decay=0.1, beta1=0.9, beta2=0.99, grad_clip=1.0)
  model = nanogpt_checkpoint(tmp_path / 'unused.pt', vocab=None)
  write_meta_pkl(tmp_path / 'meta')
  optimizer = model.configure_optimizers(settings['weight_decay'], settings['learning_rate'], (0.9, 0.99), 'cpu')
  batches = np.random.default_rng(1).integers(0, CONFIG.vocab_size, (4, 4, CONFIG.block_size + 1))
  for batch in batches[:3]:
    torch_step(model, optimizer, batch, settings['grad_clip'])
  torch.save({'model': {prefix + k: v for k, v in model.state_dict().items()}, 'optimizer': optimizer.state_dict(),
              'iter_num': 3, 'best_val_loss': 3.0, 'config': settings | {'dataset': DATASET},
              'model_args': {k: getattr(CONFIG, k) for k in ckpt_pt.MODEL_ARGS}}, tmp_path / 'ckpt.pt')
  torch_step(model, optimizer, batches[3], settings['grad_clip'])
  expected = {k: v.detach().numpy() for k, v in model.state_dict().items()}

  ckpt_pt.import_ckpt(str(tmp_path / 'ckpt.pt'), str(tmp_path / 'out'), meta=str(tmp_path / 'meta' / 'meta.pkl'))
  checkpoints = Checkpoints(str(tmp_path / 'out'), read_only=True)
  c = base_config()
  c.update(settings)
  like = init_model(CONFIG, seed=0)[2]
  params, opt_state = checkpoints.state(3, like, make_optimizer(c).init(like))
  params, _ = jax_train_step(c)(params, opt_state, batches[3], 3)
  got = nanogpt.to_nanogpt(params)
  # float32 in two frameworks, 4 AdamW steps: the traces' weight tolerance
  worst = max(float(np.max(np.abs(got[k] - expected[k]))) for k in expected)
  assert worst < 1e-5, worst


@pytest.fixture(scope='module')
def jaxgpt_run(tmp_path_factory):
  """jaxgpt trains 3 steps (warmup, then cosine decay) and saves, as train.py
  does: (out_dir, run config, the 4 batches)."""
  c = base_config()
  c.update(dict(learning_rate=1e-3, decay_lr=True, warmup_iters=2, lr_decay_iters=10, min_lr=1e-4,
                weight_decay=0.1, beta1=0.9, beta2=0.99, grad_clip=1.0, dataset='no_such_dataset'))
  batches = np.random.default_rng(2).integers(0, CONFIG.vocab_size, (4, 4, CONFIG.block_size + 1))
  params = init_model(CONFIG, seed=0)[2]
  opt_state = make_optimizer(c).init(params)
  train_step = jax_train_step(c)
  for iter_num, batch in enumerate(batches[:3]):
    params, opt_state = train_step(params, opt_state, batch, iter_num)
  out_dir = tmp_path_factory.mktemp('jaxgpt_run') / 'out'
  checkpoints = Checkpoints(str(out_dir))
  checkpoints.save(3, params, opt_state, {
      'iter_num': 3, 'val_loss': 3.0, 'best_val_loss': 3.0, 'model_args': dataclasses.asdict(CONFIG),
      'config': c.to_dict(), 'vocab': None})
  checkpoints.close()
  return out_dir, c, batches


def restore(out_dir, c, step=3):
  """(params, opt_state) of out_dir's checkpoint of `step`."""
  like = init_model(CONFIG, seed=0)[2]
  return Checkpoints(str(out_dir), read_only=True).state(step, like, make_optimizer(c).init(like))


@pytest.mark.slow  # trains several steps in process
def test_export_resumes_in_nanogpt_adamw(jaxgpt_run, tmp_path):
  # nanoGPT's train.py resumes the exported run (configure_optimizers, then
  # load_state_dict); its next step and jaxgpt's must give the same weights
  out_dir, c, batches = jaxgpt_run
  ckpt_pt.export_ckpt(str(out_dir), str(tmp_path / 'ckpt.pt'))
  ckpt = torch.load(tmp_path / 'ckpt.pt', map_location='cpu', weights_only=True)
  model = nanogpt_gpt(**ckpt['model_args'])
  model.load_state_dict(ckpt['model'])
  optimizer = model.configure_optimizers(c.weight_decay, c.learning_rate, (c.beta1, c.beta2), 'cpu')
  optimizer.load_state_dict(ckpt['optimizer'])
  lr = nanogpt_get_lr(3, c.learning_rate, c.warmup_iters, c.lr_decay_iters, c.min_lr)
  groups = ckpt['optimizer']['param_groups']
  assert [g['weight_decay'] for g in groups] == [c.weight_decay, 0.0]
  assert [g['lr'] for g in groups] == pytest.approx([lr, lr], rel=1e-6)
  assert groups[0]['betas'] == (c.beta1, c.beta2) and groups[0]['eps'] == 1e-8
  params, opt_state = restore(out_dir, c)
  mu, nu = (nanogpt.to_nanogpt(optax.tree.get(opt_state, key)) for key in ('mu', 'nu'))
  for name, param in model.named_parameters():  # each parameter got its own moments
    state = optimizer.state[param]
    assert state['step'].item() == 3.0, name
    np.testing.assert_array_equal(state['exp_avg'].numpy(), mu[name], err_msg=name)
    np.testing.assert_array_equal(state['exp_avg_sq'].numpy(), nu[name], err_msg=name)

  for group in optimizer.param_groups:  # train.py sets get_lr(iter_num) before each step
    group['lr'] = lr
  torch_step(model, optimizer, batches[3], c.grad_clip)
  expected = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  params, _ = jax_train_step(c)(params, opt_state, batches[3], 3)
  got = nanogpt.to_nanogpt(params)
  worst = max(float(np.max(np.abs(got[k] - expected[k]))) for k in expected)
  assert worst < 1e-5, worst


@pytest.mark.slow
def test_export_then_import_keeps_the_adamw_state(jaxgpt_run, tmp_path):
  # the documented command lines, jaxgpt -> ckpt.pt -> jaxgpt
  out_dir, c, _ = jaxgpt_run
  assert run_cli('export', str(tmp_path / 'ckpt.pt'), f'--out_dir={out_dir}', cwd=REPO_ROOT).returncode == 0
  meta = write_meta_pkl(tmp_path / 'meta')
  assert run_cli('import', str(tmp_path / 'ckpt.pt'), f'--out_dir={tmp_path / "back"}', f'--meta={meta}',
                 cwd=REPO_ROOT).returncode == 0
  _, original = restore(out_dir, c)
  _, back = restore(tmp_path / 'back', c)
  # every leaf: AdamW's mu, nu and count, and the schedule's count
  for a, b in zip(jax.tree.leaves(original), jax.tree.leaves(back), strict=True):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-7, rtol=0)


def imported_vocab(out_dir) -> list[str] | None:
  checkpoints = Checkpoints(str(out_dir), read_only=True)
  return checkpoints.meta(checkpoints.latest_step())['vocab']


def test_import_finds_the_vocabulary_in_the_order_documented(tmp_path, monkeypatch):
  # a fresh checkout: the data set was prepared by nanoGPT only, in its own checkout
  ckpt = tmp_path / 'nanoGPT' / 'out-shakespeare-char' / 'ckpt.pt'
  nanogpt_checkpoint(ckpt)
  here = tmp_path / 'jaxgpt'
  here.mkdir()
  monkeypatch.chdir(here)
  ckpt_pt.import_ckpt(str(ckpt), 'from-checkout')
  assert imported_vocab(here / 'from-checkout') == VOCAB
  # data/<dataset>/ here comes before the checkout's (jaxgpt's meta.json, or a meta.pkl)
  write_meta_pkl(here / 'data' / DATASET, VOCAB[::-1])
  ckpt_pt.import_ckpt(str(ckpt), 'from-here')
  assert imported_vocab(here / 'from-here') == VOCAB[::-1]
  # --meta comes first
  meta = write_meta_pkl(tmp_path / 'elsewhere', VOCAB[1:] + VOCAB[:1])
  ckpt_pt.import_ckpt(str(ckpt), 'from-meta', meta=str(meta))
  assert imported_vocab(here / 'from-meta') == VOCAB[1:] + VOCAB[:1]


def test_char_model_without_vocabulary_is_refused_and_nothing_written(tmp_path, monkeypatch):
  nanogpt_checkpoint(tmp_path / 'run' / 'ckpt.pt', vocab=None)
  monkeypatch.chdir(tmp_path)
  with pytest.raises(JaxGPTError) as e:
    ckpt_pt.import_ckpt(str(tmp_path / 'run' / 'ckpt.pt'), 'out')
  assert str(e.value).endswith(f'pass --meta=.../data/{DATASET}/meta.pkl, the vocabulary nanoGPT\'s prepare.py wrote')
  assert not (tmp_path / 'out').exists()
  write_meta_pkl(tmp_path / 'data' / DATASET, VOCAB[:10])  # another data set's: nanoGPT pads no vocabulary
  with pytest.raises(JaxGPTError, match='has 10 characters but the model vocab_size=65'):
    ckpt_pt.import_ckpt(str(tmp_path / 'run' / 'ckpt.pt'), 'out')
  assert not (tmp_path / 'out').exists()


@pytest.mark.slow
def test_import_prepares_shakespeare_char_when_its_vocabulary_is_found_nowhere(tmp_path, shakespeare):
  """A fresh checkout with data/shakespeare_char/input.txt alone, a ckpt.pt with no meta.pkl above it:
  import prepares the data set, as train.py does on first use, and takes its vocabulary; the import
  then samples and resumes."""
  nanogpt_checkpoint(tmp_path / 'run' / 'ckpt.pt', dataset='shakespeare_char', vocab=None)
  here = make_workdir(tmp_path / 'jaxgpt', shakespeare)
  lines = run(['-m', 'jaxgpt.ckpt_pt', 'import', '../run/ckpt.pt', '--out_dir=out'], here).splitlines()
  assert lines[0] == 'preparing shakespeare_char in data/shakespeare_char'
  assert lines[-2:] == ['found vocab_size = 65 (inside data/shakespeare_char)',
                        'imported ../run/ckpt.pt (iteration 7) into out']
  vocab = sorted(set(shakespeare.read_text()))
  prepared = here / 'data' / 'shakespeare_char'
  assert data.load_vocab(prepared) == vocab and imported_vocab(here / 'out') == vocab
  assert [(prepared / f'{split}.bin').stat().st_size for split in ('train', 'val')] == [2 * 1_003_854, 2 * 111_540]
  [text] = samples(run([REPO_ROOT / 'sample.py', '--out_dir=out', '--start=ROMEO:', '--num_samples=1',
                        '--max_new_tokens=20'], here))
  assert text.startswith('ROMEO:') and len(text) == 26 and set(text) <= set(vocab)
  resumed = run([REPO_ROOT / 'train.py', f'--config={REPO_ROOT / "configs" / "shakespeare_char.py"}',
                 '--config.init_from=resume', '--config.out_dir=out', '--config.max_iters=9', '--config.batch_size=4',
                 '--config.eval_interval=4', '--config.eval_iters=2', '--config.log_interval=1'], here)
  assert iterations(resumed) == [7, 8, 9]  # on from nanoGPT's iteration


def test_import_refuses_a_prepared_vocabulary_of_another_size(tmp_path, monkeypatch, shakespeare, capsys):
  config = dataclasses.replace(CONFIG, vocab_size=60)  # not shakespeare_char's 65 characters
  model = nanogpt_gpt(**{k: getattr(config, k) for k in ckpt_pt.MODEL_ARGS})
  torch.save({'model': model.state_dict(), 'model_args': {k: getattr(config, k) for k in ckpt_pt.MODEL_ARGS},
              'iter_num': 1, 'config': {'dataset': 'shakespeare_char'}}, make_workdir(tmp_path, shakespeare) / 'ckpt.pt')
  monkeypatch.chdir(tmp_path)
  assert ckpt_pt.main(['ckpt_pt', 'import', 'ckpt.pt', '--out_dir=out']) == 1
  assert capsys.readouterr().err == ('error: data/shakespeare_char has 65 characters but the model vocab_size=60: '
                                     'pass --meta=.../meta.pkl of the data set the checkpoint was trained on\n')
  assert (tmp_path / 'data' / 'shakespeare_char' / 'meta.json').exists() and not (tmp_path / 'out').exists()


def test_gpt2_vocabulary_needs_no_meta(tmp_path, monkeypatch):
  config = dataclasses.replace(CONFIG, vocab_size=50304)
  model = nanogpt_gpt(**{k: getattr(config, k) for k in ckpt_pt.MODEL_ARGS})
  torch.save({'model': model.state_dict(), 'model_args': {k: getattr(config, k) for k in ckpt_pt.MODEL_ARGS},
              'iter_num': 1, 'config': {'dataset': 'openwebtext'}}, tmp_path / 'ckpt.pt')
  monkeypatch.chdir(tmp_path)
  assert ckpt_pt.import_ckpt('ckpt.pt', 'out') == 1
  assert imported_vocab(tmp_path / 'out') is None  # sampling then uses GPT-2's tokenizer


def test_import_refuses_a_checkpoint_that_names_code_without_running_it(tmp_path, monkeypatch):
  ran = tmp_path / 'the-code-ran'

  class Payload:
    def __reduce__(self):
      return open, (str(ran), 'w')  # creates the file, if unpickling ever runs it

  torch.save({'model': Payload(), 'model_args': {}}, tmp_path / 'ckpt.pt')
  monkeypatch.chdir(tmp_path)
  with pytest.raises(JaxGPTError, match=r'ckpt.pt names code \(io.open\), not only tensors and plain data: refused unread, none of it ran'):
    ckpt_pt.import_ckpt('ckpt.pt', 'out')
  assert not ran.exists() and not (tmp_path / 'out').exists()


def test_export_never_replaces_a_file_unless_told(jaxgpt_run, tmp_path):
  out_dir, _, _ = jaxgpt_run
  target = tmp_path / 'ckpt.pt'
  target.write_bytes(b'the nanoGPT run of last week')
  with pytest.raises(JaxGPTError, match='ckpt.pt exists: export to another path, or pass --overwrite to replace it'):
    ckpt_pt.export_ckpt(str(out_dir), str(target))
  assert target.read_bytes() == b'the nanoGPT run of last week'
  assert ckpt_pt.export_ckpt(str(out_dir), str(target), overwrite=True).step == 3
  assert torch.load(target, weights_only=True)['iter_num'] == 3
  assert os.listdir(tmp_path) == ['ckpt.pt']  # no temporary file left beside it


def test_interrupted_export_leaves_the_target_as_it_was(jaxgpt_run, tmp_path, monkeypatch):
  out_dir, _, _ = jaxgpt_run
  target = tmp_path / 'ckpt.pt'
  target.write_bytes(b'the nanoGPT run of last week')

  def save_half_then_interrupt(obj, path):
    pathlib.Path(path).write_bytes(b'half a checkpoint')
    raise KeyboardInterrupt

  monkeypatch.setattr(torch, 'save', save_half_then_interrupt)
  with pytest.raises(KeyboardInterrupt):
    ckpt_pt.export_ckpt(str(out_dir), str(target), overwrite=True)
  assert target.read_bytes() == b'the nanoGPT run of last week'
  assert os.listdir(tmp_path) == ['ckpt.pt']
  with pytest.raises(KeyboardInterrupt):  # a new file: none at all
    ckpt_pt.export_ckpt(str(out_dir), str(tmp_path / 'new.pt'))
  assert os.listdir(tmp_path) == ['ckpt.pt']


def test_export_makes_the_missing_folders(jaxgpt_run, tmp_path, capsys):
  out_dir, _, _ = jaxgpt_run
  target = tmp_path / 'nanoGPT' / 'out-jaxgpt' / 'ckpt.pt'  # as nanoGPT's train.py makes its out_dir
  assert ckpt_pt.main(['ckpt_pt', 'export', f'--out_dir={out_dir}', str(target)]) == 0
  assert capsys.readouterr().out == f'exported step 3 of {out_dir} to {target}\n'
  assert torch.load(target, weights_only=True)['iter_num'] == 3
  assert os.listdir(target.parent) == ['ckpt.pt']  # written whole: no temporary file left beside it


def dead_pid() -> int:
  """The id of a process that has ended (as one killed with kill -9 mid-write)."""
  proc = subprocess.Popen([sys.executable, '-c', ''])
  proc.wait()
  return proc.pid


def test_export_removes_the_leftovers_of_a_killed_export(jaxgpt_run, tmp_path):
  out_dir, _, _ = jaxgpt_run
  target = tmp_path / 'ckpt.pt'
  files.temp_path(target, pid=dead_pid()).write_bytes(b'half a checkpoint')
  assert ckpt_pt.export_ckpt(str(out_dir), str(target)).step == 3
  assert os.listdir(tmp_path) == ['ckpt.pt']


def test_export_on_a_full_disk_is_one_error_and_writes_nothing(jaxgpt_run, tmp_path):
  out_dir, _, _ = jaxgpt_run
  target = tmp_path / 'nanoGPT' / 'out' / 'ckpt.pt'
  with file_size_limit(20_000), pytest.raises(JaxGPTError, match=re.escape(
      f'could not write {target} (the write stopped short, as on a full disk): free some space or export to another '
      'path; nothing was written')):
    ckpt_pt.export_ckpt(str(out_dir), str(target))
  assert os.listdir(tmp_path) == []  # neither the file nor the folders made for it


def test_export_refuses_a_disk_without_room(jaxgpt_run, tmp_path, monkeypatch):
  """TINY's 28,064 weights, their two AdamW moments: 0.34 MB of float32."""
  out_dir, _, _ = jaxgpt_run
  monkeypatch.setattr(shutil, 'disk_usage', lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
  with pytest.raises(JaxGPTError, match=re.escape(f'{tmp_path} has 0.0 MB free and the checkpoint needs 0.3 MB: free '
                                                  'some space or write it elsewhere')):
    ckpt_pt.export_ckpt(str(out_dir), str(tmp_path / 'ckpt.pt'))
  assert os.listdir(tmp_path) == []


# orbax's threads, their writes failed, call into an event loop orbax has closed: Python reports each, unraisable
@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
def test_import_on_a_full_disk_leaves_out_dir_as_it_was(tmp_path, monkeypatch):
  """orbax's writes fail past the size limit (EFBIG, as ENOSPC would): one
  error, and no unfinished checkpoint (*.orbax-checkpoint-tmp) left."""
  nanogpt_checkpoint(tmp_path / 'nanogpt' / 'out' / 'ckpt.pt')
  (tmp_path / 'empty').mkdir()
  monkeypatch.chdir(tmp_path)
  for out_dir in ('new', 'empty'):
    with file_size_limit(20_000), pytest.raises(JaxGPTError, match=re.escape(
        f'could not write the checkpoint to {out_dir} (File too large): free some space or import into another '
        '--out_dir; nothing was written')):
      ckpt_pt.import_ckpt('nanogpt/out/ckpt.pt', out_dir)
  assert not (tmp_path / 'new').exists() and os.listdir(tmp_path / 'empty') == []


def test_import_refuses_a_disk_without_room(tmp_path, monkeypatch):
  nanogpt_checkpoint(tmp_path / 'nanogpt' / 'out' / 'ckpt.pt')
  monkeypatch.chdir(tmp_path)
  monkeypatch.setattr(shutil, 'disk_usage', lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
  with pytest.raises(JaxGPTError, match=re.escape('out has 0.0 MB free and the checkpoint needs 0.3 MB')):
    ckpt_pt.import_ckpt('nanogpt/out/ckpt.pt', 'out')
  assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('export', ['ckpt_pt', 'gpt2'])
def test_export_chooses_again_when_a_training_rotates_its_checkpoint_away(jaxgpt_run, tmp_path, monkeypatch, export):
  """A training saving into out_dir deletes the checkpoint it no longer
  keeps, maybe the one an export chose, before it is read: the export reads
  the one kept in its place, never calling the one gone corrupt."""
  out_dir, c, _ = jaxgpt_run
  out_dir = shutil.copytree(out_dir, tmp_path / 'out')
  params, opt_state = restore(out_dir, c)
  with Checkpoints(str(out_dir), read_only=True) as checkpoints:
    meta = checkpoints.meta(3)
  read_meta = Checkpoints.meta

  def a_training_saves_first(checkpoints, step):
    if step == 3:  # chosen: a better checkpoint saved now deletes it
      with Checkpoints(str(out_dir)) as writer:
        writer.save(4, params, opt_state, meta | {'iter_num': 4, 'val_loss': 2.0, 'best_val_loss': 2.0})
      assert not (out_dir / '3').exists()
    return read_meta(checkpoints, step)

  monkeypatch.setattr(Checkpoints, 'meta', a_training_saves_first)
  if export == 'ckpt_pt':
    assert ckpt_pt.export_ckpt(str(out_dir), str(tmp_path / 'ckpt.pt')).step == 4
    assert torch.load(tmp_path / 'ckpt.pt', weights_only=True)['iter_num'] == 4
  else:
    assert gpt2.export(str(out_dir), str(tmp_path / 'gpt2')) == 4


NANOGPT_SCRIPTS = ('train.py', 'sample.py', 'configurator.py', 'data/shakespeare_char/prepare.py')
# one tiny run's settings, spelled for nanoGPT (--key=value) and jaxgpt (--config.key=value)
ROUND_TRIP = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, batch_size=4, gradient_accumulation_steps=1,
                  dropout=0.0, learning_rate=1e-2, warmup_iters=2, lr_decay_iters=40, min_lr=1e-3,
                  eval_interval=10, eval_iters=20, log_interval=1, always_save_checkpoint=True)


def nanogpt_checkout(folder: pathlib.Path, nanogpt_dir: pathlib.Path, corpus: pathlib.Path) -> pathlib.Path:
  """A nanoGPT checkout: its scripts and model.py (from nanogpt_dir) and
  tiny Shakespeare prepared by its own prepare.py."""
  for name in (*NANOGPT_SCRIPTS, 'model.py'):
    (folder / name).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(nanogpt_dir / name, folder / name)
  shutil.copy(corpus, folder / 'data' / 'shakespeare_char' / 'input.txt')  # prepare.py downloads it only when absent
  run(['data/shakespeare_char/prepare.py'], folder)
  return folder


def run(args, cwd) -> str:
  """python args in cwd (this checkout's jaxgpt importable); its stdout. Exit 0 asserted."""
  proc = subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=300,
                        env=os.environ | {'PYTHONPATH': str(REPO_ROOT), 'HF_HUB_OFFLINE': '1'})
  assert proc.returncode == 0, f'{args}\n{proc.stdout}\n{proc.stderr}'
  return proc.stdout


def evaluations(log: str) -> dict[int, float]:
  """{iteration: val loss} of the 'step N: train loss X, val loss Y' lines, as both print them."""
  return {int(m[1]): float(m[2]) for m in re.finditer(r'^step (\d+): train loss [\d.]+, val loss ([\d.]+)$', log, re.M)}


def iterations(log: str) -> list[int]:
  return [int(m[1]) for m in re.finditer(r'^iter (\d+): loss ([\d.]+)', log, re.M)]


def samples(stdout: str) -> list[str]:
  """The samples sample.py printed, each followed by a line of dashes."""
  return stdout.split('\n---------------\n')[:-1]


@pytest.mark.slow
def test_nanogpt_round_trip(tmp_path, nanogpt_dir, shakespeare, monkeypatch):
  """nanoGPT's ckpt.pt -> import -> sample.py, resume -> export -> nanoGPT's
  sample.py and train.py --init_from=resume, from a fresh jaxgpt checkout
  beside a nanoGPT one, each side's train.py and sample.py in subprocesses
  (import and export in process: their command lines are
  test_module_runs_from_the_repository's and test_export_then_import_keeps_the_adamw_state's)."""
  pytest.importorskip('tiktoken', reason="nanoGPT's sample.py imports tiktoken")
  pytest.importorskip('requests', reason="nanoGPT's prepare.py imports requests")
  nano = nanogpt_checkout(tmp_path / 'nanoGPT', nanogpt_dir, shakespeare)
  vocab = [meta['itos'][i] for meta in [pickle.loads((nano / 'data' / 'shakespeare_char' / 'meta.pkl').read_bytes())]
           for i in range(meta['vocab_size'])]
  nanogpt_flags = [f'--{k}={v}' for k, v in ROUND_TRIP.items()] + ['--device=cpu', '--compile=False', '--dtype=float32']
  jaxgpt_flags = [f'--config.{k}={v}' for k, v in ROUND_TRIP.items()]
  nano_log = run(['train.py', '--dataset=shakespeare_char', '--out_dir=out', '--max_iters=20', *nanogpt_flags], nano)
  assert iterations(nano_log) == list(range(21))

  # a fresh jaxgpt checkout: no data set prepared, nothing in out
  here = make_workdir(tmp_path / 'jaxgpt', shakespeare)
  monkeypatch.chdir(here)
  assert ckpt_pt.import_ckpt('../nanoGPT/out/ckpt.pt', 'out') == 20
  assert imported_vocab(here / 'out') == vocab  # found in the nanoGPT checkout's data/shakespeare_char
  text = samples(run([REPO_ROOT / 'sample.py', '--out_dir=out', '--start=ROMEO:', '--num_samples=2',
                      '--max_new_tokens=30'], here))
  assert len(text) == 2 and all(t.startswith('ROMEO:') and len(t) == 36 and set(t) <= set(vocab) for t in text)

  resumed = run([REPO_ROOT / 'train.py', f'--config={REPO_ROOT / "configs" / "shakespeare_char.py"}', *jaxgpt_flags,
                 '--config.init_from=resume', '--config.out_dir=out', '--config.max_iters=30'], here)
  assert iterations(resumed) == list(range(20, 31))  # continues at nanoGPT's iteration
  nano_val, jax_val = evaluations(nano_log), evaluations(resumed)
  assert sorted(jax_val) == [20, 30]
  # the same weights evaluated on other random batches (20 of 4 x 16 tokens): near, and well below
  # the untrained model's ln(65) = 4.17
  assert abs(jax_val[20] - nano_val[20]) < 0.2 and nano_val[20] < 3.5, (nano_val, jax_val)

  (nano / 'out-jaxgpt').mkdir()
  # the best: the evaluated state at 30 (the latest is the final state, before iteration 31)
  assert ckpt_pt.export_ckpt('out', '../nanoGPT/out-jaxgpt/ckpt.pt').step == 30
  settings, text = run(['sample.py', '--out_dir=out-jaxgpt', '--device=cpu', '--dtype=float32', '--start=ROMEO:',
                        '--num_samples=2', '--max_new_tokens=30'], nano).split('Loading meta from data/shakespeare_char/meta.pkl...\n')
  text = samples(text)
  assert len(text) == 2 and all(t.startswith('ROMEO:') and len(t) == 36 and set(t) <= set(vocab) for t in text)
  nano_resumed = run(['train.py', '--dataset=shakespeare_char', '--out_dir=out-jaxgpt', '--init_from=resume',
                      '--max_iters=40', *nanogpt_flags], nano)
  assert iterations(nano_resumed) == list(range(30, 41))
  back_val = evaluations(nano_resumed)
  assert sorted(back_val) == [30, 40]
  assert abs(back_val[30] - jax_val[30]) < 0.2, (jax_val, back_val)
  assert all(math.isfinite(float(loss)) for log in (nano_log, resumed, nano_resumed)
             for loss in re.findall(r'loss ([\d.naif]+)', log))


# -- a Muon run: the speedrun's recipe, shortened ------------------------------------

SPEEDRUN = REPO_ROOT / 'configs' / 'shakespeare_char_speedrun.py'
# the speedrun's optimizer, dtype and context on a smaller model and batch (what is checked holds at any size);
# 20 iterations, the whole val split evaluated at 10 and 20
MUON_MODEL = dict(n_layer=2, n_head=2, n_embd=32, block_size=64)
MUON_RUN = MUON_MODEL | dict(batch_size=16, max_iters=20, lr_decay_iters=20, warmup_iters=5, eval_interval=10,
                             eval_start=0, eval_iters=2, log_interval=1, target_val_loss=0.0, time_limit=0.0,
                             out_dir='out')
LOSS_LINE = re.compile(r'^(iter|step) (\d+): (loss \d+\.\d{4}|train loss \d+\.\d{4}, val loss \d+\.\d{4})')


def start_speedrun(workdir: pathlib.Path, **settings) -> subprocess.Popen:
  flags = [f'--config.{key}={value}' for key, value in (MUON_RUN | settings).items()]
  return subprocess.Popen([sys.executable, str(REPO_ROOT / 'train.py'), f'--config={SPEEDRUN}', *flags], cwd=workdir,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finished(popen: subprocess.Popen) -> str:
  out, err = popen.communicate(timeout=600)
  assert popen.returncode == 0, out + err
  return out


def loss_lines(log: str, since: int) -> dict[tuple[str, int], str]:
  """{('iter' | 'step', N): the loss text} for N >= since: what a log says of the model, not of the time."""
  return {(m[1], int(m[2])): m[3] for m in map(LOSS_LINE.match, log.splitlines()) if m and int(m[2]) >= since}


@pytest.fixture(scope='module')
def muon_runs(tmp_path_factory, shakespeare):
  """The shortened speedrun trained 20 iterations at once (`whole`), and
  stopped at 10 then resumed to 20 (`resumed`): {name: (workdir, log)}."""
  root = tmp_path_factory.mktemp('muon')
  whole, stopped = (make_workdir(root / name, shakespeare) for name in ('whole', 'stopped'))
  runs = [start_speedrun(whole), start_speedrun(stopped, max_iters=10)]
  try:
    logs = [finished(popen) for popen in runs]
    runs.append(start_speedrun(stopped, init_from='resume'))
    logs.append(finished(runs[-1]))
  finally:
    for popen in runs:  # none left running, whatever failed
      if popen.poll() is None:
        popen.kill()
        popen.communicate()
  return {'whole': (whole, logs[0]), 'first': (stopped, logs[1]), 'resumed': (stopped, logs[2])}


@pytest.mark.slow
def test_a_resumed_muon_run_logs_what_the_whole_run_logs(muon_runs):
  _, whole = muon_runs['whole']
  _, resumed = muon_runs['resumed']
  assert 'Resuming training from out' in resumed
  expected = loss_lines(whole, since=11)  # the first run saved the final state before iteration 11
  assert sorted(expected) == [('iter', n) for n in range(11, 21)] + [('step', 20)]
  assert loss_lines(resumed, since=0) == expected  # the Muon momentum and AdamW moments restored, bit for bit


@pytest.mark.slow
def test_an_exported_muon_run_loads_in_nanogpt_with_the_same_whole_split_loss(muon_runs, nanogpt_dir, monkeypatch):
  workdir, _ = muon_runs['whole']
  monkeypatch.chdir(workdir)
  with Checkpoints('out', read_only=True) as checkpoints:
    best = checkpoints.best_step()
  # in process: the command line prints these lines (test_export_then_import_keeps_the_adamw_state runs it)
  assert ckpt_pt.export_ckpt('out', 'nanogpt/ckpt.pt').lines('out', 'nanogpt/ckpt.pt') == [
      f'exported step {best} of out to nanogpt/ckpt.pt',
      "the optimizer state (Muon's) is not exported: nanoGPT has no Muon, so its train.py cannot resume this run; "
      'its sample.py and model.py load the model']
  ckpt = torch.load('nanogpt/ckpt.pt', map_location='cpu', weights_only=True)
  assert 'optimizer' not in ckpt and ckpt['model_args'] == MUON_MODEL | dict(bias=False, vocab_size=65, dropout=0.0)
  model_py = nanogpt_torch.checkout(nanogpt_dir)  # as nanoGPT's sample.py loads it
  model = model_py.GPT(model_py.GPTConfig(**ckpt['model_args']))
  model.load_state_dict(ckpt['model'])
  model.eval()
  tokens = np.fromfile('data/shakespeare_char/val.bin', np.uint16)
  nanogpt_loss = torch_split_loss(model, tokens, 64)
  jaxgpt_loss = evaluate.evaluate('out', context=64).loss
  assert jaxgpt_loss < 3.5  # trained (3.40 here): an untrained model's is ln(65) = 4.17
  assert nanogpt_loss == pytest.approx(jaxgpt_loss, rel=1e-5)  # its command line's: test_evaluate.py's


def torch_split_loss(model: torch.nn.Module, tokens: np.ndarray, context: int) -> float:
  """The mean loss of nanoGPT's model over tokens 1 .. n - 1, in evaluate.windows' windows (each target once)."""
  starts, counted = evaluate.windows(len(tokens), context)
  positions, total = np.arange(context), 0.0
  for first in range(0, len(starts), 256):
    index = starts[first:first + 256, None] + positions
    x, y = (torch.from_numpy(tokens[i].astype(np.int64)) for i in (index, index + 1))
    with torch.no_grad():  # nanoGPT's GPT gives the logits of every position only with targets
      logits, _ = model(x, y)
    losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), y, reduction='none').double().numpy()
    total += float(np.sum(losses * (positions >= counted[first:first + 256, None])))
  return total / (len(tokens) - 1)
