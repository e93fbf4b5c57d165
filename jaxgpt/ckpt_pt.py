"""nanoGPT's ckpt.pt in and out (needs torch: pip install -e '.[torch]').

  python -m jaxgpt.ckpt_pt import out-shakespeare-char/ckpt.pt --out_dir=out-imported [--meta=PATH/meta.pkl]
  python -m jaxgpt.ckpt_pt export --out_dir=out-shakespeare-char ckpt.pt [--overwrite]

Import makes a jaxgpt checkpoint of a nanoGPT one: its weights, iteration,
best val loss, model shape, training settings, AdamW moments and, for a
character-level model, its vocabulary. nanoGPT keeps that in
data/<dataset>/meta.pkl, beside its train.py; import reads it (as plain data:
no class, no code) from --meta, else from data/<dataset>/ here, else from the
nanoGPT checkout the ckpt.pt sits in (the first data/<dataset>/ in a folder
above it). Found nowhere, a data set jaxgpt prepares itself (shakespeare_char)
is prepared here, as train.py does on first use (from data/<dataset>/input.txt,
downloaded when absent), and its vocabulary taken. Any other character-level
model without its vocabulary is refused: without it sampling and resuming
cannot read or write text. Import writes into a new or empty --out_dir only,
and a failed import (a full disk) leaves it as it was.

Neither side draws a random model to learn its shapes: the weights and the
AdamW state are read into their abstract shapes (jax.eval_shape), so the
memory held is the checkpoint's own.

Export writes what nanoGPT's sample.py and train.py read: `model` (the
state_dict), `optimizer` (the AdamW state_dict that configure_optimizers'
optimizer loads), `model_args`, `iter_num`, `best_val_loss`, `config`; so
either side's `init_from=resume` continues the other's run. A run trained
with optimizer='muon' is exported without `optimizer` (nanoGPT has no Muon:
its sample.py and model.py load the model, its train.py cannot resume it),
and export says so in a line. It never replaces an existing file unless
told to (--overwrite), makes the target's missing folders (as nanoGPT's
train.py makes its out_dir), and writes a temporary file beside the target,
renamed onto it when whole: an interrupted export leaves no half file (the
leftovers of one killed, e.g. by kill -9, the next export to that path
removes). A ckpt.pt is read with torch.load(weights_only=True): a
file that names code is refused and none of it runs.
"""

import argparse
import dataclasses
import os
import pathlib
import pickle
import re
import shutil
import sys
import warnings
import zipfile

import jax
import ml_collections
import numpy as np
import optax
from absl import logging as absl_logging

from jaxgpt import data, entry, files, nanogpt, prepare
from jaxgpt.checkpoint import CHOICES, CheckpointError, Checkpoints
from jaxgpt.config import base_config, validate
from jaxgpt.model import SHAPE_KEYS, GPTConfig
from jaxgpt.errors import JaxGPTError, optional_import
from jaxgpt.optim import lr_schedule, make_optimizer
from jaxgpt.step import abstract_params

MODEL_ARGS = SHAPE_KEYS + ('dropout',)  # nanoGPT's model_args
# the character-level data sets jaxgpt prepares itself (prepare.PREPARABLE); import prepares them as train.py would
CHARACTER_SETS = ('shakespeare_char',)
# nanoGPT's settings of the machine it ran on, not of the run: this machine's defaults stay
MACHINE_KEYS = ('device', 'dtype', 'compile', 'out_dir', 'init_from', 'wandb_log')
# the order nanoGPT's modules declare their parameters in (named_parameters order)
_DECLARED = ('wte', 'wpe', 'h', 'ln_f', 'ln_1', 'attn', 'ln_2', 'mlp',
             'c_attn', 'c_fc', 'c_proj', 'weight', 'bias')


def _torch():
  return optional_import('torch', 'reading or writing ckpt.pt', 'torch')


def read_nanogpt_ckpt(path: pathlib.Path) -> dict:
  """nanoGPT's checkpoint at path, read with torch.load(weights_only=True),
  holding at least a `model` state_dict of tensors and its `model_args`."""
  if not path.exists():
    raise JaxGPTError(f'{path} is not a readable nanoGPT checkpoint (no such file): pass the ckpt.pt '
                      "nanoGPT's train.py wrote in its out_dir")
  if path.is_dir():
    raise JaxGPTError(f'{path} is a folder: pass the checkpoint file in it, e.g. {path / "ckpt.pt"}')
  if path.stat().st_size == 0:
    raise JaxGPTError(f'{path} is empty, not a nanoGPT checkpoint: was the training that wrote it stopped? '
                      'Pass another ckpt.pt')
  torch = _torch()
  try:
    with warnings.catch_warnings():
      warnings.simplefilter('ignore')  # torch warns of a file's pickle protocol before refusing it: the error says all
      ckpt = torch.load(path, map_location='cpu', weights_only=True)
  except pickle.UnpicklingError as e:
    code = re.search(r'GLOBAL ([\w.]+)', str(e))
    if code:
      raise JaxGPTError(f'{path} names code ({code[1]}), not only tensors and plain data: refused unread, none of '
                        "it ran; nanoGPT's train.py saves no code, so this file is not its ckpt.pt") from None
    raise JaxGPTError(f'{path} is not a readable nanoGPT checkpoint (not a file of torch.save): pass the ckpt.pt '
                      "nanoGPT's train.py wrote in its out_dir") from None
  except Exception as e:  # torch.load raises many kinds: OSError, EOFError, RuntimeError, ...
    if not zipfile.is_zipfile(path):  # torch.save writes a zip; a truncated one has lost its central directory
      raise JaxGPTError(f'{path} is truncated or corrupt (not a whole file of torch.save): was the training or copy '
                        'that wrote it stopped? Pass a whole ckpt.pt') from None
    message = str(e).splitlines()[0][:200] if str(e) else ''
    raise JaxGPTError(f'{path} is not a readable nanoGPT checkpoint ({type(e).__name__}: {message})') from None
  for key, kind in (('model', dict), ('model_args', dict)):
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get(key), kind):
      raise JaxGPTError(f"{path} has no '{key}': not a nanoGPT ckpt.pt (its train.py saves model, optimizer, "
                        'model_args, iter_num, best_val_loss and config)')
  missing = [k for k in MODEL_ARGS if k not in ckpt['model_args']]
  if missing:
    raise JaxGPTError(f"{path}'s model_args lack {', '.join(missing)}: not a nanoGPT ckpt.pt")
  if not all(isinstance(v, torch.Tensor) for v in ckpt['model'].values()):
    raise JaxGPTError(f"{path}'s model holds values that are not tensors: not a nanoGPT state_dict")
  return ckpt


def run_config(ckpt: dict, path: pathlib.Path, out_dir: str) -> ml_collections.ConfigDict:
  """jaxgpt's run config of nanoGPT's checkpoint: its training settings and
  model shape; this machine's device, dtype and compile."""
  c = base_config()
  try:
    for key, value in ckpt.get('config', {}).items():
      if key in c and key not in MACHINE_KEYS:
        c[key] = type(c[key])(value)
    c.update({k: ckpt['model_args'][k] for k in MODEL_ARGS if k != 'vocab_size'})
    c.out_dir = out_dir
    validate(c)
  except (AttributeError, TypeError, ValueError, JaxGPTError) as e:
    raise JaxGPTError(f'{path} holds settings jaxgpt cannot run ({str(e).splitlines()[0]})') from None
  return c


def nanogpt_model_config(ckpt: dict, path: pathlib.Path) -> GPTConfig:
  vocab_size = ckpt['model_args']['vocab_size']
  if not isinstance(vocab_size, int) or vocab_size < 1:
    raise JaxGPTError(f"{path}'s model_args has vocab_size={vocab_size!r}: not a nanoGPT ckpt.pt")
  return GPTConfig(**{k: ckpt['model_args'][k] for k in MODEL_ARGS})


def nanogpt_checkouts(path: pathlib.Path):
  """The folders a nanoGPT checkout holding path may be: path's folder and
  each above it (nanoGPT's out_dir is relative to where its train.py ran)."""
  folder = pathlib.Path(os.path.abspath(path)).parent  # abspath: ../nanoGPT/out climbs to nanoGPT, not ..
  return [folder, *folder.parents]


def find_vocab(path: pathlib.Path, dataset: str | None, vocab_size: int,
               meta: str | None) -> tuple[list[str] | None, pathlib.Path | None]:
  """(vocabulary, where it was read) of the checkpoint at path: from meta (a
  meta.pkl or meta.json), else data/<dataset>/ here, else in the nanoGPT
  checkout path sits in, else from the data set prepared here, where jaxgpt
  can prepare it. (None, None) for GPT-2's tokens."""
  if meta is not None:
    meta_path = pathlib.Path(meta)
    if not meta_path.is_file():
      raise JaxGPTError(f'--meta={meta} is not a file: pass the meta.pkl (or meta.json) of the data set the '
                        'checkpoint was trained on')
    return checked_vocab(data.read_vocab(meta_path), meta_path, vocab_size), meta_path
  if vocab_size in data.GPT2_VOCAB_SIZES:
    return None, None
  if dataset is not None:
    for root in (pathlib.Path('.'), *nanogpt_checkouts(path)):
      folder = root / data.data_dir(dataset)
      vocab = data.load_vocab(folder)
      if vocab is not None:
        return checked_vocab(vocab, folder, vocab_size), folder
    if dataset in CHARACTER_SETS:
      folder = prepare.ensure_prepared(dataset)  # prints what it does, as train.py's first use
      vocab = data.load_vocab(folder)
      if vocab is not None:  # else its token files were there, with no vocabulary: which is the user's to say
        return checked_vocab(vocab, folder, vocab_size), folder
    raise JaxGPTError(f'{path} is a character-level model (vocab_size={vocab_size}) and no data/{dataset}/meta.pkl '
                      f'was found here or in a folder above {nanogpt_checkouts(path)[0]}: pass '
                      f"--meta=.../data/{dataset}/meta.pkl, the vocabulary nanoGPT's prepare.py wrote")
  raise JaxGPTError(f'{path} is a character-level model (vocab_size={vocab_size}) and names no data set: pass '
                    "--meta=.../meta.pkl, the vocabulary nanoGPT's prepare.py wrote for its data set")


def checked_vocab(vocab: list[str], source: pathlib.Path, vocab_size: int) -> list[str]:
  # nanoGPT pads no character vocabulary: its vocab_size is the meta.pkl's
  if len(vocab) != vocab_size:
    raise JaxGPTError(f'{source} has {len(vocab)} characters but the model vocab_size={vocab_size}: pass '
                      '--meta=.../meta.pkl of the data set the checkpoint was trained on')
  return vocab


def check_import_dir(out_dir: str) -> None:
  """Import writes into a new or empty folder only: nothing there is replaced."""
  if not out_dir:
    raise JaxGPTError('--out_dir is empty: name the folder to import into, e.g. --out_dir=out-imported')
  directory = pathlib.Path(out_dir)
  if directory.exists() and not directory.is_dir():
    raise JaxGPTError(f'--out_dir={out_dir} is a file: import into a new or empty folder')
  if directory.is_dir() and any(directory.iterdir()):
    raise JaxGPTError(f'--out_dir={out_dir} is not empty: import into a new or empty folder')


def ckpt_weights(ckpt: dict, path: pathlib.Path, config: GPTConfig) -> tuple[dict[str, np.ndarray], dict]:
  """The weights of nanoGPT's checkpoint (read_nanogpt_ckpt's), by nanoGPT's
  names as float32 arrays, and as the params of config (its model)."""
  # the causal-mask buffer of nanoGPT's non-flash attention is not a weight;
  # torch.compile'd models save their names with an _orig_mod. prefix
  weights = {k.removeprefix('_orig_mod.'): v.float().numpy() for k, v in ckpt['model'].items()
             if not k.endswith('.attn.bias')}
  _, like = abstract_params(config)  # the shapes alone: no random model drawn to be replaced
  try:
    return weights, nanogpt.from_nanogpt(weights, like)
  except ValueError as e:
    raise JaxGPTError(f"{path}: {e}: its weights and model_args disagree, so it is damaged or not nanoGPT's") from None


def import_ckpt(path: str, out_dir: str, meta: str | None = None) -> int:
  """Writes nanoGPT's checkpoint at `path` as a jaxgpt checkpoint in out_dir,
  with the vocabulary (see find_vocab); returns its step. Everything is
  checked before anything is written."""
  check_import_dir(out_dir)
  ckpt_path = pathlib.Path(path)
  ckpt = read_nanogpt_ckpt(ckpt_path)
  c = run_config(ckpt, ckpt_path, out_dir)
  config = nanogpt_model_config(ckpt, ckpt_path)
  # (run_config checked the name: a folder of data/)
  dataset = ckpt['config'].get('dataset') if isinstance(ckpt.get('config'), dict) else None
  weights, params = ckpt_weights(ckpt, ckpt_path, config)
  _, like = abstract_params(config)
  try:
    step = int(ckpt.get('iter_num', 0))
    best_val_loss = float(ckpt.get('best_val_loss', float('inf')))  # nanoGPT saves a 0-d tensor
  except (TypeError, ValueError, RuntimeError) as e:
    raise JaxGPTError(f"{path}'s iter_num or best_val_loss is not a number ({e}): not a nanoGPT ckpt.pt") from None
  try:
    opt_state = adamw_state(make_optimizer(c), params, ckpt.get('optimizer'), weights, step, like)
  except (KeyError, IndexError, TypeError, ValueError, AttributeError) as e:
    raise JaxGPTError(f"{path}'s optimizer state does not match its model ({type(e).__name__}: {e}): "
                      'not a ckpt.pt of nanoGPT\'s train.py') from None
  check_space(pathlib.Path(out_dir), (params, opt_state))
  vocab, source = find_vocab(ckpt_path, dataset, config.vocab_size, meta)  # last: it may prepare the data set
  if source is not None:
    print(f'found vocab_size = {len(vocab)} (inside {source})')
  meta = {'iter_num': step, 'val_loss': best_val_loss, 'best_val_loss': best_val_loss,
          'model_args': dataclasses.asdict(config), 'config': c.to_dict(), 'vocab': vocab}
  save_into_empty(pathlib.Path(out_dir), step, params, opt_state, meta)
  return step


def check_space(directory: pathlib.Path, arrays) -> None:
  """Refuses a save the disk holding directory has no room for: orbax's
  threads would fail at the first write that does not fit, each noisily,
  and torch names a full disk in its zip writer's words."""
  needed = sum(leaf.nbytes for leaf in jax.tree.leaves(arrays))
  free = shutil.disk_usage(next(folder for folder in (directory, *directory.absolute().parents)
                                if folder.exists())).free
  if free < needed:
    raise JaxGPTError(f'{directory} has {free / 1e6:.1f} MB free and the checkpoint needs {needed / 1e6:.1f} MB: '
                      'free some space or write it elsewhere')


def save_into_empty(directory: pathlib.Path, step: int, params, opt_state, meta: dict) -> None:
  """Saves the checkpoint into directory, new or empty; a save that fails
  (a full disk, Ctrl-C) leaves it as it was: what was written is removed."""
  missing = [folder for folder in (directory, *directory.parents) if not folder.exists()]
  try:
    directory.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise JaxGPTError(f'cannot create --out_dir={directory} ({e.strerror}): pass a folder you can write to') from None
  checkpoints = Checkpoints(str(directory))  # takes the writer's lock: from here on, what directory holds is ours
  verbosity = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.FATAL)  # orbax's threads log each failed write, hundreds of lines
  try:
    with checkpoints:
      checkpoints.save(step, params, opt_state, meta)
  except BaseException as e:
    remove_written(directory, missing)
    # Checkpoints words a failed write for train.py (resume from the checkpoints before); orbax's own error
    # says a full disk as ValueError('RESOURCE_EXHAUSTED: ...')
    failure = e.__context__ if isinstance(e, CheckpointError) else e
    if not isinstance(failure, (OSError, ValueError)):
      raise
    raise JaxGPTError(f'could not write the checkpoint to {directory} ({write_error_reason(failure)}): free some '
                      'space or import into another --out_dir; nothing was written') from None
  finally:
    absl_logging.set_verbosity(verbosity)


def remove_written(directory: pathlib.Path, made: list[pathlib.Path]) -> None:
  """Removes what a failed save wrote into directory: the folders made for it
  (made, deepest first), else all it holds, since it was empty."""
  if made:
    shutil.rmtree(made[-1], ignore_errors=True)
    return
  for written in directory.iterdir():  # orbax's unfinished *.orbax-checkpoint-tmp
    if written.is_dir():
      shutil.rmtree(written, ignore_errors=True)
    else:
      written.unlink(missing_ok=True)


def write_error_reason(e: Exception) -> str:
  """The system's words for a failed write: orbax's errors carry its code (tensorstore's os_error_code)."""
  code = re.search(r"os_error_code='(\d+)'", str(e))
  if code:
    return os.strerror(int(code[1]))
  return e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0][:200]


def _adamw_groups(weights: dict) -> tuple[list[str], list[str]]:
  """The parameter names of nanoGPT's configure_optimizers groups: those with
  2+ dims (decayed), then the rest, each in named_parameters order, which
  skips lm_head.weight (tied: the same tensor as transformer.wte.weight).
  torch numbers the parameters in this order, group after group."""
  def declared(name):
    return tuple(int(p) if p.isdigit() else _DECLARED.index(p) for p in name.removeprefix('transformer.').split('.'))
  names = sorted((n for n in weights if n != 'lm_head.weight'), key=declared)
  return [n for n in names if weights[n].ndim >= 2], [n for n in names if weights[n].ndim < 2]


def adamw_state(tx: optax.GradientTransformation, params, torch_state: dict | None,
                weights: dict[str, np.ndarray], step: int, like):
  """tx's state of params holding nanoGPT's AdamW moments (and `step` updates
  done), when torch_state (the ckpt's `optimizer`) has them; else a fresh
  one. The moments fill the state's abstract shapes: no zero moments are
  made to be replaced. The inverse of torch_adamw_state."""
  if not torch_state or not torch_state.get('state'):
    return tx.init(params)
  opt_state = jax.eval_shape(tx.init, like)
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


def check_export_path(path: pathlib.Path, overwrite: bool) -> None:
  """Export writes a new file; an existing file only when told to."""
  if path.is_dir():
    raise JaxGPTError(f'{path} is a folder: name the file to write, e.g. {path / "ckpt.pt"}')
  if path.exists() and not overwrite:
    raise JaxGPTError(f'{path} exists: export to another path, or pass --overwrite to replace it')
  nearest = next(folder for folder in path.parents if folder.exists())  # the rest, export makes
  if not nearest.is_dir():
    raise JaxGPTError(f'{nearest} is a file, so no folder can hold {path}: export to another path')


def save_atomically(checkpoint: dict, path: pathlib.Path) -> None:
  """torch.save through files.replacing: an export stopped at any point (a
  full disk, Ctrl-C) leaves path as it was, never half written; path's
  missing folders are made (nanoGPT's train.py makes its out_dir so)."""
  torch = _torch()
  missing = [folder for folder in path.parents if not folder.exists()]
  try:
    with files.replacing(path) as (temp,):
      torch.save(checkpoint, temp)
  except BaseException as e:
    if missing:  # the folders made for path, removed with it
      shutil.rmtree(missing[-1], ignore_errors=True)
    if not isinstance(e, (OSError, RuntimeError)):  # Ctrl-C: path is as it was, as entry.run says
      raise
    # torch's zip writer reports a failed write (a full disk) as a RuntimeError that names no cause
    reason = write_error_reason(e) if isinstance(e, OSError) else 'the write stopped short, as on a full disk'
    raise JaxGPTError(f'could not write {path} ({reason}): free some space or export to another path; '
                      'nothing was written') from None


@dataclasses.dataclass
class Exported:
  """What export_ckpt wrote: the checkpoint's step, and the optimizer its run trained with."""
  step: int
  optimizer: str  # 'adamw': its state is in the ckpt.pt; 'muon': nanoGPT has none to load it into

  def lines(self, out_dir: str, path: str) -> list[str]:
    said = [f'exported step {self.step} of {out_dir} to {path}']
    if self.optimizer == 'muon':
      said.append("the optimizer state (Muon's) is not exported: nanoGPT has no Muon, so its train.py cannot resume "
                  'this run; its sample.py and model.py load the model')
    return said


def export_ckpt(out_dir: str, path: str, which: str = 'best', overwrite: bool = False) -> Exported:
  """Writes out_dir's best (or latest) checkpoint as nanoGPT's ckpt.pt at
  path. An existing file at path is replaced only with overwrite. The AdamW
  state goes with it; a Muon run's state does not (nanoGPT's train.py has no
  Muon to resume it with): its ckpt.pt has the model alone."""
  torch = _torch()
  if not path or path.endswith(os.sep):  # pathlib would drop the trailing '/' and write a file named so
    raise JaxGPTError(f'{path!r} names a folder: name the file to write, e.g. {os.path.join(path, "ckpt.pt")}')
  ckpt_path = pathlib.Path(path)
  check_export_path(ckpt_path, overwrite)
  with Checkpoints(out_dir, read_only=True) as checkpoints:
    def read(step: int):
      meta = checkpoints.meta(step)
      c = base_config()
      c.update(meta['config'])
      _, like = abstract_params(GPTConfig(**meta['model_args']))  # shapes only: the checkpoint fills them
      return step, meta, c, checkpoints.state(step, like, jax.eval_shape(make_optimizer(c).init, like))
    step, meta, c, (params, opt_state) = checkpoints.read(which, read)
  state_dict = {name: torch.from_numpy(np.array(array)) for name, array in nanogpt.to_nanogpt(params).items()}
  state_dict['lm_head.weight'] = state_dict['transformer.wte.weight']  # tied: the same tensor, as nanoGPT saves it
  check_space(ckpt_path.parent, (params, opt_state))
  optimizer = {'optimizer': torch_adamw_state(opt_state, state_dict, c, meta['iter_num'])} \
      if c.optimizer == 'adamw' else {}
  save_atomically({
      'model': state_dict,
      **optimizer,
      'model_args': {k: meta['model_args'][k] for k in MODEL_ARGS},
      'iter_num': meta['iter_num'],
      'best_val_loss': meta['best_val_loss'],
      'config': meta['config'],
  }, ckpt_path)
  return Exported(step, c.optimizer)


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(prog='python -m jaxgpt.ckpt_pt', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  commands = parser.add_subparsers(dest='command', required=True)
  importer = commands.add_parser('import', help='nanoGPT ckpt.pt -> jaxgpt checkpoint in --out_dir')
  importer.add_argument('ckpt_pt')
  importer.add_argument('--out_dir', required=True)
  importer.add_argument('--meta', help="the vocabulary: nanoGPT's data/<dataset>/meta.pkl (or a meta.json); "
                        'default: looked for in data/<dataset>/ here, then in the nanoGPT checkout of ckpt_pt, '
                        'else shakespeare_char prepared here')
  exporter = commands.add_parser('export', help='jaxgpt checkpoint in --out_dir -> nanoGPT ckpt.pt')
  exporter.add_argument('ckpt_pt')
  exporter.add_argument('--out_dir', required=True)
  exporter.add_argument('--checkpoint', choices=CHOICES, default='best')
  exporter.add_argument('--overwrite', action='store_true', help='replace ckpt_pt if it exists')
  args = parser.parse_args(argv[1:])

  def convert() -> None:
    if args.command == 'import':
      step = import_ckpt(args.ckpt_pt, args.out_dir, args.meta)
      print(f'imported {args.ckpt_pt} (iteration {step}) into {args.out_dir}')
    else:
      exported = export_ckpt(args.out_dir, args.ckpt_pt, args.checkpoint, args.overwrite)
      print('\n'.join(exported.lines(args.out_dir, args.ckpt_pt)))

  return entry.run(convert, f'interrupted: no checkpoint was imported into {args.out_dir}'
                   if args.command == 'import' else f'interrupted: {args.ckpt_pt} is as it was')


if __name__ == '__main__':
  sys.exit(main(sys.argv))
