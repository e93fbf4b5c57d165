"""nanoGPT's ckpt.pt in and out, against nanoGPT's own model (tests/nanogpt_model.py)."""

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
import torch
from flax import nnx

import nanogpt_model
from conftest import REPO_ROOT
from jaxgpt import ckpt_pt, nanogpt
from jaxgpt.checkpoint import Checkpoints
from jaxgpt.config import GPTConfig, base_config
from jaxgpt.optim import make_optimizer
from jaxgpt.step import init_model, make_train_step

CONFIG = GPTConfig(block_size=16, vocab_size=65, n_layer=2, n_head=2, n_embd=32, dropout=0.0, bias=True)
# float32 through two implementations of the same graph: the reference README
# measured 1e-6 on logits; 1e-5 leaves headroom and still catches any wrong weight
LOGITS_TOL = 1e-5


def idx() -> np.ndarray:
  return np.random.default_rng(0).integers(0, CONFIG.vocab_size, (3, CONFIG.block_size), dtype=np.int64)


def jax_logits(params) -> np.ndarray:
  graphdef = init_model(CONFIG, seed=0)[1]
  tokens = idx().astype(np.int32)
  return np.asarray(nnx.merge(graphdef, params)(tokens, tokens)[0])


def torch_logits(model: nanogpt_model.GPT) -> np.ndarray:
  with torch.no_grad():
    return model(torch.from_numpy(idx())).numpy()


def save_jaxgpt_checkpoint(out_dir, params, step=10, val_loss=2.0):
  c = base_config()
  checkpoints = Checkpoints(str(out_dir))
  checkpoints.save(step, params, make_optimizer(c).init(params), {
      'iter_num': step, 'val_loss': val_loss, 'best_val_loss': val_loss,
      'model_args': dataclasses.asdict(CONFIG), 'config': c.to_dict(), 'vocab': None,
      'train_rng': None, 'eval_rng': None})
  checkpoints.close()


def nanogpt_checkpoint(path, prefix=''):
  torch.manual_seed(0)
  model = nanogpt_model.GPT(nanogpt_model.GPTConfig(**{
      k: getattr(CONFIG, k) for k in ('block_size', 'vocab_size', 'n_layer', 'n_head', 'n_embd', 'dropout', 'bias')}))
  model_args = {k: getattr(CONFIG, k) for k in ckpt_pt.MODEL_ARGS}
  torch.save({'model': {prefix + k: v for k, v in model.state_dict().items()}, 'model_args': model_args,
              'iter_num': 7, 'best_val_loss': torch.tensor(2.5),
              'config': {'learning_rate': 1e-3, 'dataset': 'no_such_dataset', 'device': 'cuda'}}, path)
  return model


def test_export_loads_into_nanogpt_with_equal_logits(tmp_path):
  params = init_model(CONFIG, seed=3)[2]
  save_jaxgpt_checkpoint(tmp_path / 'out', params)
  assert ckpt_pt.export_ckpt(str(tmp_path / 'out'), str(tmp_path / 'ckpt.pt')) == 10
  ckpt = torch.load(tmp_path / 'ckpt.pt', map_location='cpu', weights_only=True)
  assert ckpt['iter_num'] == 10 and ckpt['best_val_loss'] == 2.0
  model = nanogpt_model.GPT(nanogpt_model.GPTConfig(**ckpt['model_args']))
  model.load_state_dict(ckpt['model'])  # strict: every name and shape as nanoGPT's
  assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()  # still tied
  np.testing.assert_allclose(torch_logits(model), jax_logits(params), atol=LOGITS_TOL, rtol=0)


@pytest.mark.parametrize('prefix', ['', '_orig_mod.'])  # torch.compile'd models save with the prefix
def test_import_gives_nanogpt_logits(tmp_path, prefix):
  model = nanogpt_checkpoint(tmp_path / 'ckpt.pt', prefix)
  assert ckpt_pt.import_ckpt(str(tmp_path / 'ckpt.pt'), str(tmp_path / 'out')) == 7
  checkpoints = Checkpoints(str(tmp_path / 'out'), read_only=True)
  meta = checkpoints.meta(7)
  assert meta['iter_num'] == 7 and meta['best_val_loss'] == 2.5
  assert meta['config']['learning_rate'] == 1e-3 and meta['config']['device'] == 'cpu'
  params = checkpoints.params(7, init_model(CONFIG, seed=0)[2])
  np.testing.assert_allclose(jax_logits(params), torch_logits(model), atol=LOGITS_TOL, rtol=0)


def test_round_trip_keeps_every_weight(tmp_path):
  model = nanogpt_checkpoint(tmp_path / 'in.pt')
  ckpt_pt.import_ckpt(str(tmp_path / 'in.pt'), str(tmp_path / 'out'))
  ckpt_pt.export_ckpt(str(tmp_path / 'out'), str(tmp_path / 'back.pt'))
  back = torch.load(tmp_path / 'back.pt', map_location='cpu', weights_only=True)['model']
  for name, tensor in model.state_dict().items():
    assert torch.equal(back[name], tensor), name


def run_cli(*args, cwd):
  return subprocess.run([sys.executable, '-m', 'jaxgpt.ckpt_pt', *args], cwd=cwd, capture_output=True, text=True)


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


def test_module_runs_from_the_repository(tmp_path):
  # the documented command line, end to end
  nanogpt_checkpoint(tmp_path / 'ckpt.pt')
  proc = run_cli('import', str(tmp_path / 'ckpt.pt'), f'--out_dir={tmp_path / "out"}', cwd=REPO_ROOT)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.startswith(f'imported {tmp_path / "ckpt.pt"} (iteration 7)')


def test_import_continues_nanogpt_adamw(tmp_path):
  # nanoGPT trains 3 steps and saves (weights + AdamW moments); its 4th step
  # and jaxgpt's first step after import must give the same weights
  settings = dict(learning_rate=1e-3, decay_lr=False, weight_decay=0.1, beta1=0.9, beta2=0.99, grad_clip=1.0)
  model = nanogpt_checkpoint(tmp_path / 'unused.pt')
  params = dict(model.named_parameters())  # the tied lm_head is named once, as transformer.wte.weight
  groups = [{'params': [p for p in params.values() if p.dim() >= 2], 'weight_decay': settings['weight_decay']},
            {'params': [p for p in params.values() if p.dim() < 2], 'weight_decay': 0.0}]
  optimizer = torch.optim.AdamW(groups, lr=settings['learning_rate'], betas=(0.9, 0.99), eps=1e-8)
  batches = np.random.default_rng(1).integers(0, CONFIG.vocab_size, (4, 4, CONFIG.block_size + 1))

  def torch_step(batch):
    logits = model(torch.from_numpy(batch[:, :-1]))
    loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), torch.from_numpy(batch[:, 1:]).reshape(-1))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), settings['grad_clip'])
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)

  for batch in batches[:3]:
    torch_step(batch)
  torch.save({'model': model.state_dict(), 'optimizer': optimizer.state_dict(), 'iter_num': 3,
              'best_val_loss': 3.0, 'config': settings | {'dataset': 'no_such_dataset'},
              'model_args': {k: getattr(CONFIG, k) for k in ckpt_pt.MODEL_ARGS}}, tmp_path / 'ckpt.pt')
  torch_step(batches[3])
  expected = {k: v.detach().numpy() for k, v in model.state_dict().items()}

  ckpt_pt.import_ckpt(str(tmp_path / 'ckpt.pt'), str(tmp_path / 'out'))
  checkpoints = Checkpoints(str(tmp_path / 'out'), read_only=True)
  c = base_config()
  c.update(settings)
  tx = make_optimizer(c)
  _, graphdef, like = init_model(CONFIG, seed=0)
  params, opt_state = checkpoints.state(3, like, tx.init(like))
  step = make_train_step(graphdef, tx, dropout=False, seed=0, fused=True)
  xs = batches[3][None, :, :-1].astype(np.int32)
  ys = batches[3][None, :, 1:].astype(np.int32)
  params, _, _ = step(params, opt_state, xs, ys, 3)
  got = nanogpt.to_nanogpt(params)
  # float32 in two frameworks, 4 AdamW steps: the traces' weight tolerance
  worst = max(float(np.max(np.abs(got[k] - expected[k]))) for k in expected)
  assert worst < 1e-5, worst
