"""Data parallelism, nanoGPT's DDP the JAX way: the devices a step is split
over (a Mesh), each one's batches, and how many threads split a CPU's share.

The Mesh has one axis, `data`, over every device. Batches are sharded along
it (each device holds batch_size rows of every micro-batch, drawn by
`Batches`); params and the optimizer state are replicated, or with fsdp=True
split along the same axis (each device holds a slice of every large array,
gathered when used), and XLA inserts the gradient all-reduce (or
reduce-scatter) itself. On a CPU, one device a process, a step's rows are
split over threads instead (`gradient_shards`, run by
step.ShardedTrainStep), their gradients averaged across processes in one
exchange (`mean_across_devices`). Processes (`python -m jaxgpt.launch`, or
one per host) join into one set of devices through jax.distributed
(`initialize`).
"""

import os
import socket
import time

import jax
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxgpt import runtime
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


def abstract_state(mesh: Mesh, tree, fsdp: bool):
  """The shapes, dtypes and shardings place_state would give tree (of arrays
  or jax.ShapeDtypeStructs), as jax.ShapeDtypeStructs: what programs are
  compiled for before any weight exists."""
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=state_sharding(mesh, a, fsdp),
                                                     weak_type=a.weak_type), tree)


def init_optimizer_state(mesh: Mesh, tx: optax.GradientTransformation, params, fsdp: bool):
  """tx's state for params (placed by place_state), sharded as the params are.
  Its step counts too go on the mesh, as the train step returns them: left
  where jax.jit(tx.init) puts them, the step would compile again at its second call."""
  return place_state(mesh, jax.jit(tx.init)(params), fsdp)


def micro_steps(gradient_accumulation_steps: int, mesh: Mesh) -> int:
  """How many micro-batches each device runs per iteration: nanoGPT's
  gradient_accumulation_steps counts the whole world's, so it must divide
  by the number of devices."""
  if gradient_accumulation_steps % mesh.size:
    raise ConfigError(f'gradient_accumulation_steps={gradient_accumulation_steps} is not divisible by the '
                      f'{mesh.size} devices training together: make it a multiple of {mesh.size}, '
                      f'as nanoGPT requires of its world size')
  return gradient_accumulation_steps // mesh.size


def threads_apply(device: str, fsdp: bool) -> bool:
  """Whether a step's gradients can be computed by several threads
  (step.ShardedTrainStep): on a CPU, one device a process, params whole."""
  return device == 'cpu' and jax.local_device_count() == 1 and not fsdp


def gradient_shards(threads: int, batch_size: int, device: str, fsdp: bool) -> int:
  """How many shards a step's rows are split into, each computed by a
  thread of its own: `threads`, or with threads=0 one per core this process
  may use, or the most below that which batch_size divides; 1 where threads
  do not apply (threads_apply). The shards are equal, each 1/shards of
  every micro-batch's rows: their mean gradient is then the batch's."""
  if not threads_apply(device, fsdp):
    if threads > 1:
      where = 'with fsdp' if fsdp else f'on {jax.local_device_count()} {device} devices in one process'
      raise ConfigError(f'threads={threads}: a step\'s gradients are split over threads only on a CPU, one '
                        f'device a process, without fsdp; not {where}: pass --config.threads=0 (automatic)')
    return 1
  return threads or automatic_shards(batch_size)  # config.validate: threads divides batch_size


def automatic_shards(batch_size: int) -> int:
  """threads=0: one shard a core this process may use, or the most below that which batch_size divides."""
  return max(k for k in range(1, min(runtime.usable_cores(), batch_size) + 1) if batch_size % k == 0)


def planned_shards(c) -> int:
  """The shards gradient_shards will give the run config c, known before
  jax starts (for runtime.size_thread_pool): 1 where XLA_FLAGS asks for
  several host devices, which gradient_shards learns only from jax."""
  if c.device != 'cpu' or c.fsdp or 'xla_force_host_platform_device_count' in os.environ.get('XLA_FLAGS', ''):
    return 1
  return c.threads or automatic_shards(c.batch_size)


def initialize(coordinator_address: str, num_processes: int, process_id: int, device: str, timeout: int) -> None:
  """Joins a multi-process run, when this is one: num_processes > 1 (what
  `python -m jaxgpt.launch` passes), or JAX_COORDINATOR_ADDRESS set with a
  cluster (SLURM, Open MPI, ...) that tells jax the rest. Before any array
  exists. CPU processes reduce through gloo. timeout: seconds to wait for
  the other processes."""
  if num_processes == 1 and not os.environ.get('JAX_COORDINATOR_ADDRESS'):
    return
  if num_processes > 1 and not coordinator_address and not os.environ.get('JAX_COORDINATOR_ADDRESS'):
    raise ConfigError(f'num_processes={num_processes} needs --config.coordinator_address=HOST:PORT of process 0 '
                      '(python -m jaxgpt.launch sets it on one host)')
  if coordinator_address and process_id > 0:
    wait_for_coordinator(coordinator_address, timeout)
  if device == 'cpu':
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  # jax's preemption service takes SIGTERM for itself, and would swallow one
  # sent before train.py's own handler is in place
  jax.config.update('jax_enable_preemption_service', False)
  if num_processes > 1:
    jax.distributed.initialize(coordinator_address or None, num_processes, process_id, initialization_timeout=timeout)
  else:
    jax.distributed.initialize(initialization_timeout=timeout)


def wait_for_coordinator(address: str, timeout: int) -> None:
  """Waits until process 0 listens at address. jax's own wait ends, when it
  times out, in a fatal C++ abort: a stack trace and no word on the cause."""
  host, port = address.rsplit(':', 1)
  deadline = time.monotonic() + timeout
  while True:
    try:
      socket.create_connection((host, int(port)), timeout=max(deadline - time.monotonic(), 0.1)).close()
      return
    except OSError as e:
      if time.monotonic() >= deadline:
        raise ConfigError(f'could not reach the coordinator at {address} within {timeout} s ({e.strerror or e}): '
                          'start process 0 there, check --config.coordinator_address, or wait longer with '
                          '--config.coordinator_timeout') from None
      time.sleep(0.5)


def mean_across_devices(x: jax.Array, devices: int) -> jax.Array:
  """The mean of x over the mesh's devices, inside shard_map: each device's
  x, and every device gets the same mean.

  Two devices swap their buffers in one collective permute and add: on
  CPUs, gloo's all-reduce as XLA calls it has a fixed cost many times the
  swap's (docs/performance.md, "Data parallel over processes"). x + x' and
  x' + x round alike, so both processes keep identical params."""
  if devices == 1:  # XLA keeps a one-device all-reduce: a copy of x, and a rendezvous
    return x
  if devices == 2:
    return (x + jax.lax.ppermute(x, DATA, [(0, 1), (1, 0)])) / 2
  return jax.lax.pmean(x, DATA)


def all_processes_agree(flag: bool) -> bool:
  """True when any process says so (all processes must call it together)."""
  if jax.process_count() == 1:
    return flag
  return bool(multihost_utils.process_allgather(np.array(flag)).any())


class Batches:
  """The batches of one iteration, from a BatchSampler, as global arrays
  sharded along the mesh's data axis.

  Each device's batch_size rows are drawn afresh from a numpy generator
  seeded with (seed, stream, iteration, device): nanoGPT's ranks each draw
  their own batches from an offset seed, and so do devices here. So the
  batches of an iteration are the same in a fresh or resumed run, and however
  the devices are spread over processes; each process draws only its own
  devices' rows.
  """

  def __init__(self, sampler, mesh: Mesh, seed: int, stream: int):
    self.sampler, self.seed, self.stream = sampler, seed, stream
    self.sharding = batch_sharding(mesh)
    self.devices = [i for i, d in enumerate(mesh.devices.flat) if d.process_index == jax.process_index()]

  def __call__(self, iteration: int, steps: int) -> tuple[jax.Array, jax.Array]:
    parts = [self.sampler(np.random.default_rng([self.seed, self.stream, iteration, d]), steps)
             for d in self.devices]
    return tuple(jax.make_array_from_process_local_data(self.sharding, np.concatenate(p, axis=1))
                 for p in zip(*parts))
