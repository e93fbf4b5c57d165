"""OpenAI's GPT-2 in Hugging Face's layout: weights in, weights out.

`--config.init_from=gpt2` (or gpt2-medium, gpt2-large, gpt2-xl) starts from
GPT-2's weights, as nanoGPT's GPT.from_pretrained does. They are read from a
folder in Hugging Face's layout (config.json, model.safetensors, and
vocab.json + merges.txt for the tokenizer): `--config.gpt2_dir=FOLDER`, or
else the Hugging Face hub cache, downloading into it when online. Needs the
`gpt2` extra: pip install -e '.[gpt2]'.

  python -m jaxgpt.gpt2 export --out_dir=out-shakespeare-char FOLDER

writes a jaxgpt checkpoint as such a folder, which transformers'
GPT2LMHeadModel.from_pretrained loads. Its files are written whole (see
jaxgpt/files.py): an export stopped at any point, or failing on a full disk,
leaves the folder as it was (a folder it made, removed).

Hugging Face keeps the four projection weights as Conv1D, (in, out); nanoGPT
and jaxgpt keep them as Linear, (out, in): they are transposed both ways.
GPT-2 was trained with the tanh approximation of GELU ("gelu_new"); nanoGPT
runs its weights with the exact GELU, and so does jaxgpt. The export says
`activation_function: "gelu"`, so transformers computes what jaxgpt does.
"""

import argparse
import json
import pathlib
import shutil
import sys
from typing import Any

import numpy as np

from jaxgpt import entry, files, nanogpt
from jaxgpt.config import GPT2_MODELS
from jaxgpt.model import GPTConfig
from jaxgpt.errors import JaxGPTError, optional_import
from jaxgpt.tokenizer import GPT2Tokenizer

HUB_OWNER = 'openai-community'
WEIGHTS, CONFIG = 'model.safetensors', 'config.json'
TOKENIZER = 'vocab.json'
_CONV1D = ('attn.c_attn.weight', 'attn.c_proj.weight', 'mlp.c_fc.weight', 'mlp.c_proj.weight')
# buffers of old transformers versions, not weights: the causal mask and its fill value
_BUFFERS = ('.attn.bias', '.attn.masked_bias')


class GPT2Error(JaxGPTError):
  pass


def _safetensors_numpy():
  return optional_import('safetensors.numpy', 'reading or writing GPT-2 weights', 'gpt2', error=GPT2Error)


def locate(name: str, gpt2_dir: str = '', files: tuple[str, ...] = (CONFIG, WEIGHTS)) -> pathlib.Path:
  """The folder holding `files` of GPT-2 `name`: gpt2_dir when given, else
  the hub cache's snapshot (downloaded when online and not there yet)."""
  if gpt2_dir:
    folder = pathlib.Path(gpt2_dir)
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
      raise GPT2Error(f'gpt2_dir {folder} lacks {", ".join(missing)}: point it at a GPT-2 folder in '
                      f'Hugging Face\'s layout (`hf download {HUB_OWNER}/{name}` or save_pretrained write one)')
    return folder
  if name not in GPT2_MODELS:
    raise GPT2Error(f'{name!r} is not a GPT-2 model: choose one of {", ".join(GPT2_MODELS)}')
  huggingface_hub = optional_import('huggingface_hub', 'finding GPT-2 in the Hugging Face cache', 'gpt2',
                                    instead='pass --config.gpt2_dir=FOLDER', error=GPT2Error)
  repo = f'{HUB_OWNER}/{name}'
  try:
    return pathlib.Path(huggingface_hub.snapshot_download(repo, allow_patterns=list(files)))
  except Exception as e:  # offline and not cached, hub errors, a broken cache, ...
    reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
    raise GPT2Error(f'{name} is not in the Hugging Face cache and could not be downloaded ({reason}): '
                    f'run `hf download {repo}` where you are online, or pass --config.gpt2_dir=FOLDER '
                    'with its config.json and model.safetensors') from None


def tokenizer(gpt2_dir: str = '', name: str = 'gpt2') -> GPT2Tokenizer:
  """GPT-2's BPE tokenizer (one for every size), from gpt2_dir or the hub cache."""
  return GPT2Tokenizer(locate(name, gpt2_dir, (TOKENIZER,)))


def pretrained_config(folder: pathlib.Path, dropout: float = 0.0) -> GPTConfig:
  """The model shape of the GPT-2 in folder (its config.json)."""
  try:
    hf = json.loads((folder / CONFIG).read_text())
    n_embd = hf['n_embd']
    if hf.get('n_inner') not in (None, 4 * n_embd):
      raise ValueError(f'n_inner={hf["n_inner"]}, where nanoGPT\'s MLP is 4 * n_embd = {4 * n_embd} wide')
    return GPTConfig(block_size=hf['n_positions'], vocab_size=hf['vocab_size'], n_layer=hf['n_layer'],
                     n_head=hf['n_head'], n_embd=n_embd, dropout=dropout, bias=True)
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise GPT2Error(f'{folder / CONFIG} is not a GPT-2 config ({type(e).__name__}: {e})') from None


def load_params(folder: pathlib.Path, config: GPTConfig, like) -> dict:
  """The params of the GPT-2 in folder; like (arrays or shapes) gives their
  structure. A block_size below GPT-2's 1024 keeps the first positions'
  embeddings, as nanoGPT's crop_block_size does."""
  try:
    tensors = _safetensors_numpy().load_file(folder / WEIGHTS)
  except Exception as e:  # safetensors raises its own errors for truncated or foreign files
    raise GPT2Error(f'{folder / WEIGHTS} cannot be read ({type(e).__name__}: {e})') from None
  state_dict = {}
  for name, array in tensors.items():
    name = name.removeprefix('transformer.')  # the hub's files have no prefix, save_pretrained's do
    if name.endswith(_BUFFERS):
      continue
    if name.endswith(_CONV1D):
      array = array.T
    state_dict['transformer.' + name if name != 'lm_head.weight' else name] = array
  wpe = state_dict.get('transformer.wpe.weight')
  if wpe is not None and config.block_size < wpe.shape[0]:
    state_dict['transformer.wpe.weight'] = wpe[:config.block_size]
  try:
    return nanogpt.from_nanogpt(state_dict, like)
  except ValueError as e:
    raise GPT2Error(f'{folder / WEIGHTS}: {e}') from None


def save_pretrained(folder: pathlib.Path, config: GPTConfig, params) -> None:
  """Writes params as a GPT-2 folder (config.json + model.safetensors) that
  transformers' GPT2LMHeadModel.from_pretrained loads."""
  if not config.bias:
    raise GPT2Error('GPT-2 has biases in every Linear and LayerNorm: a model trained with bias=False '
                    'cannot be written as GPT-2')
  state_dict = nanogpt.to_nanogpt(params)
  del state_dict['lm_head.weight']  # tied to wte; transformers ties it again on loading
  for name in state_dict:
    if name.endswith(_CONV1D):
      state_dict[name] = state_dict[name].T
  hf_config = {
      'architectures': ['GPT2LMHeadModel'], 'model_type': 'gpt2',
      'vocab_size': config.vocab_size, 'n_positions': config.block_size, 'n_ctx': config.block_size,
      'n_embd': config.n_embd, 'n_layer': config.n_layer, 'n_head': config.n_head,
      'activation_function': 'gelu',  # nanoGPT's exact GELU, not GPT-2's tanh approximation
      'layer_norm_epsilon': 1e-5, 'tie_word_embeddings': True,
      'resid_pdrop': config.dropout, 'embd_pdrop': config.dropout, 'attn_pdrop': config.dropout,
  }
  contiguous = {name: np.ascontiguousarray(array, np.float32) for name, array in state_dict.items()}
  missing = [f for f in (folder, *folder.parents) if not f.exists()]  # the folders the export makes
  try:
    with files.replacing(folder / WEIGHTS, folder / CONFIG) as (weights, config_json):
      # serialized here and written into files' temporary file: safetensors' save_file writes a
      # temporary file of its own (mode 0600, a random name a killed export would leave behind)
      weights.write_bytes(_safetensors_numpy().save(contiguous, metadata={'format': 'pt'}))
      config_json.write_text(json.dumps(hf_config, indent=2) + '\n')
  except BaseException as e:
    if missing:
      shutil.rmtree(missing[-1], ignore_errors=True)
    if not isinstance(e, Exception):  # Ctrl-C: the folder is as it was, as entry.run says
      raise
    reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0][:200]
    raise GPT2Error(f'cannot write {folder} ({reason}): free some space or pick another folder; '
                    'nothing was written') from None


def export(out_dir: str, folder: str, which: str = 'best', overwrite: bool = False) -> int:
  """Writes out_dir's best (or latest) checkpoint as a GPT-2 folder; returns
  its step. A folder holding a model is replaced only with overwrite."""
  held = [name for name in (CONFIG, WEIGHTS) if (pathlib.Path(folder) / name).exists()]
  if held and not overwrite:
    raise GPT2Error(f'{folder} holds a model ({", ".join(held)}): export to another folder, or pass --overwrite '
                    'to replace it')
  from jaxgpt.checkpoint import Checkpoints  # orbax and jax: not needed to read GPT-2's weights
  from jaxgpt.step import abstract_params
  with Checkpoints(out_dir, read_only=True) as checkpoints:
    def read(step: int) -> tuple[int, GPTConfig, Any]:
      config = GPTConfig(**checkpoints.meta(step)['model_args'])
      return step, config, checkpoints.params(step, abstract_params(config)[1])
    step, config, params = checkpoints.read(which, read)
  save_pretrained(pathlib.Path(folder), config, params)
  return step


def main(argv: list[str]) -> int:
  from jaxgpt.checkpoint import CHOICES  # orbax: loaded only by the commands that read checkpoints
  parser = argparse.ArgumentParser(prog='python -m jaxgpt.gpt2', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  commands = parser.add_subparsers(dest='command', required=True)
  exporter = commands.add_parser('export', help='jaxgpt checkpoint in --out_dir -> GPT-2 folder')
  exporter.add_argument('folder')
  exporter.add_argument('--out_dir', required=True)
  exporter.add_argument('--checkpoint', choices=CHOICES, default='best')
  exporter.add_argument('--overwrite', action='store_true', help='replace the model FOLDER holds')
  args = parser.parse_args(argv[1:])

  def export_folder() -> None:
    step = export(args.out_dir, args.folder, args.checkpoint, args.overwrite)
    print(f'exported step {step} of {args.out_dir} to {args.folder}')

  return entry.run(export_folder, f'interrupted: {args.folder} is as it was')


if __name__ == '__main__':
  sys.exit(main(sys.argv))
