"""Data parallelism, nanoGPT's DDP the JAX way: one jitted train step over a
device Mesh, with only the shardings telling XLA how to split it.

The Mesh has one axis, `data`, over every device. Batches are sharded along
it (each device holds batch_size rows of every micro-batch); params and the
optimizer state are replicated, or with fsdp=True split along the same axis
(each device holds a slice of every large array, gathered when used). XLA
inserts the gradient all-reduce (or reduce-scatter) itself.
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxgpt.config import ConfigError

DATA = 'data'


def make_mesh(devices: list | None = None) -> Mesh:
  return Mesh(np.array(jax.devices() if devices is None else devices), (DATA,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Of a stack of micro-batches (steps, batch, T): the batch split across devices."""
  return NamedSharding(mesh, PartitionSpec(None, DATA))


def state_sharding(mesh: Mesh, array, fsdp: bool) -> NamedSharding:
  """Replicated; with fsdp, split along the first dimension the device count
  divides (arrays with none, such as scalars, stay replicated)."""
  if fsdp:
    for dim, size in enumerate(np.shape(array)):
      if size % mesh.size == 0:
        return NamedSharding(mesh, PartitionSpec(*([None] * dim + [DATA])))
  return NamedSharding(mesh, PartitionSpec())


def place_state(mesh: Mesh, tree, fsdp: bool):
  """tree (params, or optimizer state) on the mesh's devices, sharded as state_sharding says."""
  return jax.tree.map(lambda a: jax.device_put(a, state_sharding(mesh, a, fsdp)), tree)


def micro_steps(gradient_accumulation_steps: int, mesh: Mesh) -> int:
  """How many micro-batches each device runs per iteration: nanoGPT's
  gradient_accumulation_steps counts the whole world's, so it must divide
  by the number of devices."""
  if gradient_accumulation_steps % mesh.size:
    raise ConfigError(f'gradient_accumulation_steps={gradient_accumulation_steps} is not divisible by the '
                      f'{mesh.size} devices training together: make it a multiple of {mesh.size}, '
                      f'as nanoGPT requires of its world size')
  return gradient_accumulation_steps // mesh.size
