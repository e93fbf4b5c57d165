"""nanoGPT <-> jaxgpt parameter names.

jaxgpt's param paths are nanoGPT's state_dict names without the
`transformer.` prefix (`h/0/attn/c_attn/weight` for
`transformer.h.0.attn.c_attn.weight`), in the same layouts, except that the
embeddings' `weight` is nnx.Embed's `embedding`. `lm_head.weight` is the
token embedding itself (weight tying).
"""

from typing import Mapping

import numpy as np
from flax import traverse_util

_TIED = 'lm_head.weight'
_EMBEDDINGS = ('wte', 'wpe')

Path = tuple[str | int, ...]


def _path(name: str) -> Path:
  """nanoGPT name -> jaxgpt path."""
  *modules, leaf = name.removeprefix('transformer.').split('.')
  if modules[-1] in _EMBEDDINGS:
    leaf = 'embedding'
  return tuple(int(m) if m.isdigit() else m for m in modules) + (leaf,)


def _name(path: Path) -> str:
  """jaxgpt path -> nanoGPT name."""
  *modules, leaf = (str(p) for p in path)
  return 'transformer.' + '.'.join(modules + ['weight' if leaf == 'embedding' else leaf])


def from_nanogpt(state_dict: Mapping[str, np.ndarray], params: dict) -> dict:
  """New params holding the arrays of a nanoGPT state_dict; `params` gives
  the structure and the expected shapes. Raises ValueError naming a missing
  or extra name or a shape mismatch."""
  state_dict = {k.removeprefix('_orig_mod.'): v for k, v in state_dict.items()}  # torch.compile's prefix
  expected = {_name(path): array for path, array in traverse_util.flatten_dict(params).items()}
  given = set(state_dict) - {_TIED}
  if given != set(expected):
    raise ValueError(f'state_dict does not match the model: missing {sorted(set(expected) - given)}, '
                     f'unexpected {sorted(given - set(expected))}')
  flat = {}
  for name in given:
    array = np.asarray(state_dict[name], dtype=np.float32)
    if array.shape != expected[name].shape:
      raise ValueError(f'{name}: shape {array.shape} does not match the model\'s {expected[name].shape}')
    flat[_path(name)] = array
  return traverse_util.unflatten_dict(flat)


def to_nanogpt(params: dict) -> dict[str, np.ndarray]:
  """nanoGPT's state_dict (as numpy arrays) of these params, lm_head included."""
  state_dict = {}
  for path, array in traverse_util.flatten_dict(params).items():
    state_dict[_name(path)] = np.asarray(array)
  state_dict[_TIED] = state_dict['transformer.wte.weight']
  return state_dict
