"""nanoGPT <-> jaxgpt parameter names.

nanoGPT's state_dict names (`transformer.h.0.attn.c_attn.weight`) and jaxgpt's
NNX paths (`h/0/attn/c_attn/kernel`) differ only in the prefix, the leaf name
and the Linear layout: torch stores (out, in), Flax (in, out). `lm_head.weight`
is the token embedding itself (weight tying).
"""

from typing import Mapping

import numpy as np
from flax import nnx

_TIED = 'lm_head.weight'
_LINEARS = ('c_attn', 'c_fc', 'c_proj')


def _path(name: str) -> tuple[tuple[str | int, ...], bool]:
  """nanoGPT name -> (NNX path, whether the array is a transposed Linear weight)."""
  *modules, leaf = name.removeprefix('transformer.').split('.')
  path = tuple(int(m) if m.isdigit() else m for m in modules)
  owner = modules[-1]
  if leaf == 'bias':
    return path + ('bias',), False
  if owner in ('wte', 'wpe'):
    return path + ('embedding',), False
  if owner in _LINEARS:
    return path + ('kernel',), True
  return path + ('scale',), False  # LayerNorm weight


def _name(path: tuple[str | int, ...]) -> str:
  *modules, leaf = (str(p) for p in path)
  leaf = 'bias' if leaf == 'bias' else 'weight'
  return 'transformer.' + '.'.join(modules + [leaf])


def from_nanogpt(state_dict: Mapping[str, np.ndarray], params: nnx.State) -> nnx.State:
  """Params with every array taken from a nanoGPT state_dict; `params` gives
  the structure and the expected shapes. Raises ValueError on a missing or
  extra name or a shape mismatch."""
  state_dict = {k.removeprefix('_orig_mod.'): v for k, v in state_dict.items()}  # torch.compile's prefix
  pure = params.to_pure_dict()
  expected = {_name(path) for path, _ in nnx.to_flat_state(params)}
  given = set(state_dict) - {_TIED}
  if given != expected:
    raise ValueError(f'state_dict does not match the model: missing {sorted(expected - given)}, '
                     f'unexpected {sorted(given - expected)}')
  for name in given:
    path, transpose = _path(name)
    array = np.asarray(state_dict[name], dtype=np.float32)
    array = array.T if transpose else array
    node = pure
    for key in path[:-1]:
      node = node[key]
    if node[path[-1]].shape != array.shape:
      raise ValueError(f'{name}: shape {array.shape} does not match the model\'s {node[path[-1]].shape}')
    node[path[-1]] = array
  nnx.replace_by_pure_dict(params, pure)
  return params


def to_nanogpt(params: nnx.State) -> dict[str, np.ndarray]:
  """nanoGPT's state_dict (as numpy arrays) of these params, lm_head included."""
  state_dict = {}
  for path, variable in nnx.to_flat_state(params):
    name = _name(path)
    array = np.asarray(variable.value)
    state_dict[name] = array.T if _path(name)[1] else array
  state_dict[_TIED] = state_dict['transformer.wte.weight']
  return state_dict
