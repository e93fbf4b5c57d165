"""nanoGPT's ckpt.pt in and out (needs torch: pip install -e '.[torch]').

  python -m jaxgpt.ckpt_pt import out-shakespeare-char/ckpt.pt --out_dir=out-imported
  python -m jaxgpt.ckpt_pt export --out_dir=out-shakespeare-char ckpt.pt

Import makes a jaxgpt checkpoint of a nanoGPT one: its weights, iteration,
best val loss, model shape, training settings and AdamW moments; the
vocabulary is read from data/<dataset>/meta.json when the data set is there.
Export writes what nanoGPT's sample.py and train.py read: `model` (the
state_dict), `optimizer` (the AdamW state_dict that configure_optimizers'
optimizer loads), `model_args`, `iter_num`, `best_val_loss`, `config`; so
either side's `init_from=resume` continues the other's run. The file is read
with torch.load(weights_only=True): no pickle code runs.
"""

import argparse
import dataclasses
import sys

import jax
import numpy as np
import optax

from jaxgpt import data, nanogpt
from jaxgpt.checkpoint import Checkpoints
from jaxgpt.config import GPTConfig, JaxGPTError, base_config, validate
from jaxgpt.optim import lr_schedule, make_optimizer
from jaxgpt.step import init_model

MODEL_ARGS = ('n_layer', 'n_head', 'n_embd', 'block_size', 'bias', 'vocab_size', 'dropout')
# the order nanoGPT's modules declare their parameters in (named_parameters order)
_DECLARED = ('wte', 'wpe', 'h', 'ln_f', 'ln_1', 'attn', 'ln_2', 'mlp',
             'c_attn', 'c_fc', 'c_proj', 'weight', 'bias')


def _torch():
  try:
    import torch
  except ImportError:
    raise JaxGPTError('reading or writing ckpt.pt needs torch: pip install torch==2.13.0 '
                      '(the CPU build), or pip install -e ".[torch]"') from None
  return torch


def import_ckpt(path: str, out_dir: str) -> int:
  """Writes nanoGPT's checkpoint at `path` as a jaxgpt checkpoint in out_dir;
  returns its step."""
  torch = _torch()
  try:
    ckpt = torch.load(path, map_location='cpu', weights_only=True)
    model_args, state_dict = ckpt['model_args'], ckpt['model']
  except Exception as e:  # torch.load raises many kinds: OSError, UnpicklingError, RuntimeError, ...
    message = str(e).splitlines()[0][:200] if str(e) else ''
    raise JaxGPTError(f'{path} is not a readable nanoGPT checkpoint ({type(e).__name__}: {message})') from None
  c = base_config()
  for key, value in ckpt.get('config', {}).items():
    if key in c and key not in ('device', 'dtype', 'compile', 'out_dir', 'init_from', 'wandb_log'):
      c[key] = type(c[key])(value)
  c.update({k: model_args[k] for k in MODEL_ARGS if k != 'vocab_size'})
  c.out_dir = out_dir
  validate(c)
  config = GPTConfig(**{k: model_args[k] for k in MODEL_ARGS})
  # the causal-mask buffer of nanoGPT's non-flash attention is not a weight;
  # torch.compile'd models save their names with an _orig_mod. prefix
  weights = {k.removeprefix('_orig_mod.'): v.float().numpy() for k, v in state_dict.items()
             if not k.endswith('.attn.bias')}
  _, _, like = init_model(config, seed=0)
  try:
    params = nanogpt.from_nanogpt(weights, like)
  except ValueError as e:
    raise JaxGPTError(f'{path}: {e}') from None
  folder = data.data_dir(c.dataset)
  vocab = data.load_vocab(folder) if folder.is_dir() else None
  if vocab is not None and len(vocab) != config.vocab_size:
    raise JaxGPTError(f'{folder / "meta.json"} has {len(vocab)} characters but the model {config.vocab_size}: '
                      'prepare the data set the checkpoint was trained on')
  step = int(ckpt.get('iter_num', 0))
  best_val_loss = float(ckpt.get('best_val_loss', float('inf')))
  checkpoints = Checkpoints(out_dir)
  if checkpoints.manager.latest_step() is not None:
    raise JaxGPTError(f'{out_dir} already holds checkpoints: import into an empty --out_dir')
  opt_state = adamw_state(make_optimizer(c).init(params), ckpt.get('optimizer'), weights, step, like)
  checkpoints.save(step, params, opt_state, {
      'iter_num': step, 'val_loss': best_val_loss, 'best_val_loss': best_val_loss,
      'model_args': dataclasses.asdict(config), 'config': c.to_dict(), 'vocab': vocab})
  checkpoints.close()
  return step


def _adamw_groups(weights: dict) -> tuple[list[str], list[str]]:
  """The parameter names of nanoGPT's configure_optimizers groups: those with
  2+ dims (decayed), then the rest, each in named_parameters order, which
  skips lm_head.weight (tied: the same tensor as transformer.wte.weight).
  torch numbers the parameters in this order, group after group."""
  def declared(name):
    return tuple(int(p) if p.isdigit() else _DECLARED.index(p) for p in name.removeprefix('transformer.').split('.'))
  names = sorted((n for n in weights if n != 'lm_head.weight'), key=declared)
  return [n for n in names if weights[n].ndim >= 2], [n for n in names if weights[n].ndim < 2]


def adamw_state(opt_state, torch_state: dict | None, weights: dict[str, np.ndarray], step: int, like):
  """opt_state holding nanoGPT's AdamW moments (and `step` updates done), when
  torch_state (the ckpt's `optimizer`) has them; else opt_state as it is.
  The inverse of torch_adamw_state."""
  if not torch_state or not torch_state.get('state'):
    return opt_state
  decayed, rest = _adamw_groups(weights)
  moments = torch_state['state']
  mu, nu = ({name: moments[i][key].float().numpy() for i, name in enumerate(decayed + rest)}
            for key in ('exp_avg', 'exp_avg_sq'))
  mu, nu = nanogpt.from_nanogpt(mu, like), nanogpt.from_nanogpt(nu, like)
  count = np.asarray(step, np.int32)

  def with_moments(state):
    if isinstance(state, optax.ScaleByAdamState):
      return state._replace(count=count, mu=mu, nu=nu)
    if isinstance(state, optax.ScaleByScheduleState):
      return state._replace(count=count)
    return state
  return jax.tree.map(with_moments, opt_state,
                      is_leaf=lambda s: isinstance(s, (optax.ScaleByAdamState, optax.ScaleByScheduleState)))


def torch_adamw_state(opt_state, state_dict: dict, c, iter_num: int) -> dict:
  """The state_dict of nanoGPT's AdamW (configure_optimizers' two groups, the
  lr get_lr sets for iter_num) over state_dict's tensors, holding opt_state's
  moments and update count. The inverse of adamw_state."""
  torch = _torch()
  decayed, rest = _adamw_groups(state_dict)
  optimizer = torch.optim.AdamW([
      {'params': [state_dict[n] for n in decayed], 'weight_decay': c.weight_decay},
      {'params': [state_dict[n] for n in rest], 'weight_decay': 0.0},
  ], lr=float(lr_schedule(c)(iter_num)), betas=(c.beta1, c.beta2))
  adam = next(s for s in jax.tree.leaves(opt_state, is_leaf=lambda s: isinstance(s, optax.ScaleByAdamState))
              if isinstance(s, optax.ScaleByAdamState))
  count = int(adam.count)
  if count:  # else no update yet: the empty state of a fresh optimizer
    mu, nu = nanogpt.to_nanogpt(adam.mu), nanogpt.to_nanogpt(adam.nu)
    for name in decayed + rest:
      optimizer.state[state_dict[name]] = {
          'step': torch.tensor(float(count)), 'exp_avg': torch.tensor(mu[name]), 'exp_avg_sq': torch.tensor(nu[name])}
  return optimizer.state_dict()


def export_ckpt(out_dir: str, path: str, which: str = 'best') -> int:
  """Writes out_dir's best (or latest) checkpoint as nanoGPT's ckpt.pt; returns its step."""
  torch = _torch()
  checkpoints = Checkpoints(out_dir, read_only=True)
  step = checkpoints.best_step() if which == 'best' else checkpoints.latest_step()
  meta = checkpoints.meta(step)
  config = GPTConfig(**meta['model_args'])
  c = base_config()
  c.update(meta['config'])
  _, _, like = init_model(config, seed=0)
  params, opt_state = checkpoints.state(step, like, make_optimizer(c).init(like))
  state_dict = {name: torch.from_numpy(np.array(array)) for name, array in nanogpt.to_nanogpt(params).items()}
  state_dict['lm_head.weight'] = state_dict['transformer.wte.weight']  # tied: the same tensor, as nanoGPT saves it
  torch.save({
      'model': state_dict,
      'optimizer': torch_adamw_state(opt_state, state_dict, c, meta['iter_num']),
      'model_args': {k: meta['model_args'][k] for k in MODEL_ARGS},
      'iter_num': meta['iter_num'],
      'best_val_loss': meta['best_val_loss'],
      'config': meta['config'],
  }, path)
  return step


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  commands = parser.add_subparsers(dest='command', required=True)
  importer = commands.add_parser('import', help='nanoGPT ckpt.pt -> jaxgpt checkpoint in --out_dir')
  importer.add_argument('ckpt_pt')
  importer.add_argument('--out_dir', required=True)
  exporter = commands.add_parser('export', help='jaxgpt checkpoint in --out_dir -> nanoGPT ckpt.pt')
  exporter.add_argument('ckpt_pt')
  exporter.add_argument('--out_dir', required=True)
  exporter.add_argument('--checkpoint', choices=('best', 'latest'), default='best')
  args = parser.parse_args(argv[1:])
  try:
    if args.command == 'import':
      step = import_ckpt(args.ckpt_pt, args.out_dir)
      print(f'imported {args.ckpt_pt} (iteration {step}) into {args.out_dir}')
    else:
      step = export_ckpt(args.out_dir, args.ckpt_pt, args.checkpoint)
      print(f'exported step {step} of {args.out_dir} to {args.ckpt_pt}')
  except JaxGPTError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv))
