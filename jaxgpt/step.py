"""The train and eval steps: pure functions of (params, optimizer state, batch),
jitted once. train.py, the parity check and the benchmark all build them here.

`TrainStep` runs a step as one program (or two: gradients, then the
update); `ShardedTrainStep` splits its rows over threads, so that a CPU's
cores run them at once, and across processes; `make_train_step` picks one
for a run config.

The model is split once into a static graph definition and its parameters as
a plain nested dict of arrays; each step merges them inside jit. So no NNX
graph traversal and no Variable boxes cross the jit boundary per call (for a
model this small, flattening nnx.State costs more than dispatching a dict:
docs/performance.md).
"""

import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils
from jax.flatten_util import ravel_pytree
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxgpt import parallel
from jaxgpt.model import GPT, KEEP_RESIDUAL_BARRIERS, cross_entropy

Params = dict  # nested {module: {param: array}}, from nnx.to_pure_dict


class StepMetrics(NamedTuple):
  loss: jax.Array  # mean loss over the step's micro-batches, before the update
  grad_norm: jax.Array  # global gradient norm, before clipping
  stop: jax.Array | None = None  # ShardedTrainStep's: whether any process was asked to stop


def _loss(graphdef: nnx.GraphDef, params: Params, x: jax.Array, y: jax.Array,
          dropout_key: jax.Array | None) -> jax.Array:
  model = nnx.merge(graphdef, params)
  rngs = None if dropout_key is None else nnx.Rngs(dropout=dropout_key)
  logits, _ = model(x, rngs=rngs)
  return cross_entropy(logits, y)


def _loss_and_grads(graphdef, params, xs, ys, step_key):
  """Mean loss and gradient over the micro-batches xs, ys: (accum, B, T).

  nanoGPT scales each micro-batch loss by 1/accum and lets backward() sum the
  gradients; that is the mean computed here, inside one XLA program.
  """
  accum = xs.shape[0]
  grad_fn = jax.value_and_grad(lambda p, x, y, k: _loss(graphdef, p, x, y, k))
  micro_key = (lambda i: None) if step_key is None else (lambda i: jax.random.fold_in(step_key, i))
  if accum == 1:  # no loop: keeps the program as lean as a plain step
    return grad_fn(params, xs[0], ys[0], micro_key(0))

  def add_micro_batch(carry, batch):
    loss_sum, grad_sum = carry
    i, x, y = batch
    loss, grads = grad_fn(params, x, y, micro_key(i))
    return (loss_sum + loss, jax.tree.map(jnp.add, grad_sum, grads)), None

  zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
  (loss_sum, grad_sum), _ = jax.lax.scan(add_micro_batch, zeros, (jnp.arange(accum), xs, ys))
  return loss_sum / accum, jax.tree.map(lambda g: g / accum, grad_sum)


def _apply_update(tx: optax.GradientTransformation, params, opt_state, grads):
  updates, opt_state = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state


def dropout_key(base_key: jax.Array, iter_num, shard) -> jax.Array:
  """The dropout key of one shard of an iteration's batch: fixed by (seed,
  iteration, shard), so a resumed run draws what the uninterrupted one did.
  A step with one shard is shard 0."""
  return jax.random.fold_in(jax.random.fold_in(base_key, iter_num), shard)


def train_program_jit(compiler_options: dict) -> Callable:
  """jax.jit for the programs of a train step: compiler_options (XLA's, for the model's matmuls) plus the option
  that keeps the model's residual barriers in a program that differentiates it."""
  return functools.partial(jax.jit, compiler_options=compiler_options | KEEP_RESIDUAL_BARRIERS)


class TrainStep:
  """step(params, opt_state, xs, ys, iter_num) -> (params, opt_state, metrics).

  fused=True (nanoGPT's compile=True): forward, backward, clipping and AdamW
  are one XLA program, params and optimizer state donated. fused=False
  (compile=False): gradients and the update are two jitted programs, the
  closest analogue of uncompiled PyTorch; same numbers. The dropout key of
  each step is derived from (seed, iter_num), so a resumed run draws the same.
  compiler_options: XLA's, for the model's matmuls (`jaxgpt.runtime.compiler_options`).
  """

  def __init__(self, graphdef: nnx.GraphDef, tx: optax.GradientTransformation, *, dropout: bool, seed: int,
               fused: bool, compiler_options: dict):
    jit = train_program_jit(compiler_options)
    base_key = jax.random.key(seed)

    def loss_and_grads(params, xs, ys, iter_num):
      step_key = dropout_key(base_key, iter_num, 0) if dropout else None
      loss, grads = _loss_and_grads(graphdef, params, xs, ys, step_key)
      return StepMetrics(loss, optax.tree.norm(grads)), grads

    def apply_update(params, opt_state, grads):
      return _apply_update(tx, params, opt_state, grads)

    def fused_step(params, opt_state, xs, ys, iter_num):
      metrics, grads = loss_and_grads(params, xs, ys, iter_num)
      params, opt_state = apply_update(params, opt_state, grads)
      return params, opt_state, metrics

    self.fused = fused
    if fused:
      self.fused_step = jit(fused_step, donate_argnums=(0, 1))
    else:
      self.loss_and_grads = jit(loss_and_grads)
      self.apply_update = jit(apply_update, donate_argnums=(0, 1))

  def __call__(self, params, opt_state, xs, ys, iter_num):
    if self.fused:
      return self.fused_step(params, opt_state, xs, ys, iter_num)
    metrics, grads = self.loss_and_grads(params, xs, ys, iter_num)
    params, opt_state = self.apply_update(params, opt_state, grads)
    return params, opt_state, metrics

  def compile(self, params, opt_state, xs, ys, iter_num) -> list[tuple[jax.stages.Compiled, int]]:
    """Compiles the step's programs for these arguments (arrays, or
    jax.ShapeDtypeStructs with their shardings) without running them; later
    calls with arguments like them reuse the programs. Each comes with how
    many copies of it run at once: one."""
    if self.fused:
      return [(self.fused_step.lower(params, opt_state, xs, ys, iter_num).compile(), 1)]
    grads_program = self.loss_and_grads.lower(params, xs, ys, iter_num).compile()
    grads = jax.tree.map(lambda a, sharding: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                         params, grads_program.output_shardings[1])
    return [(grads_program, 1), (self.apply_update.lower(params, opt_state, grads).compile(), 1)]


class ShardedTrainStep:
  """step(params, opt_state, xs, ys, iter_num, stop=False) -> (params,
  opt_state, metrics), as TrainStep's, with the batch's rows split into
  `shards` equal shards whose gradients are computed at once, each by a
  program run on a thread of its own; one more program averages them, clips
  them and applies AdamW.

  XLA:CPU runs a program's forward and backward passes as a chain of ops,
  each dot on one core, so one program leaves most cores idle; programs
  called from threads of their own run side by side (docs/performance.md).
  Each shard takes rows shard * B/shards, ... of every micro-batch: the
  shards together hold one micro-batch's activations, as one program would.
  The average of equal shards' mean losses and gradients is the whole
  batch's.

  Across processes (one device each: python -m jaxgpt.launch, or one per
  host) every process runs its own shards on its own rows, and the update
  program averages across them too. Each shard's gradients, loss and the
  process's `stop` (a stop signal received) travel as one flat buffer: the
  processes exchange one buffer a step, and learn whether any of them is
  stopping from it (metrics.stop) at no further cost.
  """

  def __init__(self, graphdef: nnx.GraphDef, tx: optax.GradientTransformation, *, mesh: Mesh, shards: int,
               dropout: bool, seed: int, compiler_options: dict):
    jit = train_program_jit(compiler_options)
    base_key = jax.random.key(seed)
    first_shard = jax.process_index() * shards  # this process's shards, numbered across processes

    def shard_grads(params, xs, ys, iter_num, shard, stop):
      """One shard's gradients, mean loss and stop flag, as one flat row: (1, params + 2)."""
      rows = xs.shape[1] // shards
      x, y = (jax.lax.dynamic_slice_in_dim(a, shard * rows, rows, axis=1) for a in (xs, ys))
      key = dropout_key(base_key, iter_num, first_shard + shard) if dropout else None
      loss, grads = _loss_and_grads(graphdef, params, x, y, key)
      return jnp.concatenate([ravel_pytree(grads)[0], jnp.stack([loss, stop])])[None]

    def mean_of_rows(*flat_rows):  # inside shard_map: this device's rows, (1, params + 2) each
      return parallel.mean_across_devices((sum(flat_rows) / shards)[0], mesh.size)

    def apply_update(params, opt_state, flat_rows):
      flat = jax.shard_map(mean_of_rows, mesh=mesh, in_specs=PartitionSpec(parallel.DATA),
                           out_specs=PartitionSpec(), check_vma=False)(*flat_rows)
      unravel = ravel_pytree(params)[1]  # the params' tree from the flat buffer's layout
      grads, loss, stop = unravel(flat[:-2]), flat[-2], flat[-1]
      params, opt_state = _apply_update(tx, params, opt_state, grads)
      return params, opt_state, StepMetrics(loss, optax.tree.norm(grads), stop > 0)

    self.shards, self.mesh = shards, mesh
    self.rows_sharding = NamedSharding(mesh, PartitionSpec(parallel.DATA))
    self.shard_grads = jit(shard_grads)
    self.apply_update = jit(apply_update, donate_argnums=(0, 1))
    self.threads = ThreadPoolExecutor(shards, thread_name_prefix='shard')

  def __call__(self, params, opt_state, xs, ys, iter_num, stop: bool = False):
    local_params, xs, ys = (self._local(a) for a in (params, xs, ys))
    shards = [self.threads.submit(self.shard_grads, local_params, xs, ys, iter_num, shard, float(stop and shard == 0))
              for shard in range(self.shards)]
    return self.apply_update(params, opt_state, [self._across_devices(shard.result()) for shard in shards])

  def close(self) -> None:
    """Ends the step's threads."""
    self.threads.shutdown()

  def _local(self, tree):
    """This process's copy of global arrays (replicated params, or its rows
    of a batch): the shard programs run on this process's device alone."""
    if self.mesh.size == 1:
      return tree
    return jax.tree.map(lambda a: a.addressable_data(0), tree)

  def _across_devices(self, row: jax.Array) -> jax.Array:
    """A shard's flat row of this process, as a row of the global (devices,
    params + 2) array the update program reads."""
    if self.mesh.size == 1:
      return row
    return jax.make_array_from_single_device_arrays((self.mesh.size, row.shape[1]), self.rows_sharding, [row])

  def compile(self, params, opt_state, xs, ys, iter_num) -> list[tuple[jax.stages.Compiled, int]]:
    """Compiles the shard and update programs for these arguments (arrays,
    or jax.ShapeDtypeStructs with their shardings) without running them;
    each with how many copies of it run at once."""
    local = self._local if self.mesh.size == 1 else functools.partial(jax.tree.map, _local_struct)
    shard_program = self.shard_grads.lower(local(params), local(xs), local(ys), iter_num, 0, 0.0).compile()
    row = shard_program.out_info
    rows = [jax.ShapeDtypeStruct((self.mesh.size, row.shape[1]), row.dtype, sharding=self.rows_sharding)] * self.shards
    return [(shard_program, self.shards), (self.apply_update.lower(params, opt_state, rows).compile(), 1)]


def _local_struct(a: jax.ShapeDtypeStruct) -> jax.ShapeDtypeStruct:
  """The shape of this process's copy of a global array's."""
  device = next(iter(a.sharding.addressable_devices))
  return jax.ShapeDtypeStruct(a.sharding.shard_shape(a.shape), a.dtype,
                              sharding=jax.sharding.SingleDeviceSharding(device))


def make_train_step(c, graphdef: nnx.GraphDef, tx: optax.GradientTransformation, mesh: Mesh,
                    compiler_options: dict) -> TrainStep | ShardedTrainStep:
  """The train step a run config (`c`) asks for on this mesh: its rows
  split over threads where the process has cores for them
  (parallel.gradient_shards), or across processes on CPUs, where it
  exchanges one flat buffer a step; else one program (compile=True) or
  two. compiler_options: XLA's, for the model's matmuls."""
  shards = parallel.gradient_shards(c.threads, c.batch_size, c.device, c.fsdp)
  if jax.process_count() > 1:  # every process must run the same update program: the fewest shards of any
    shards = int(multihost_utils.process_allgather(np.array(shards)).min())
  if shards > 1 or (jax.process_count() > 1 and parallel.threads_apply(c.device, c.fsdp)):
    return ShardedTrainStep(graphdef, tx, mesh=mesh, shards=shards, dropout=c.dropout > 0, seed=c.seed,
                            compiler_options=compiler_options)
  return TrainStep(graphdef, tx, dropout=c.dropout > 0, seed=c.seed, fused=c.compile,
                   compiler_options=compiler_options)


# Evaluation batches are grouped into calls of about this many tokens: one
# batch of the seed recipe (768 tokens) makes dots too small for XLA:CPU to
# spread over cores, and a call of 5 takes less time a batch
# (docs/performance.md); a larger batch is evaluated alone, as before
EVAL_TOKENS_PER_CALL = 4096


def eval_batches_per_call(eval_iters: int, batch_size: int, block_size: int) -> int:
  """How many of an evaluation's eval_iters batches one eval program call takes."""
  return max(1, min(eval_iters, EVAL_TOKENS_PER_CALL // (batch_size * block_size)))


def eval_calls(eval_iters: int, batches_per_call: int) -> list[tuple[int, int]]:
  """(first, skip) for each eval program call that together take batches
  0, ..., eval_iters - 1 once each: a call evaluates batches first, ...,
  first + batches_per_call - 1, of which the first `skip` were counted by the
  call before (the last call moves back to stay within the batches)."""
  calls = []
  for start in range(0, eval_iters, batches_per_call):
    first = min(start, eval_iters - batches_per_call)
    calls.append((first, start - first))
  return calls


def make_eval_losses(graphdef: nnx.GraphDef, batches_per_call: int,
                     compiler_options: dict) -> Callable[[Params, jax.Array, jax.Array, int], jax.Array]:
  """Returns eval_losses(params, xs, ys, first) -> the losses of micro-batches
  first, ..., first + batches_per_call - 1 of the batches xs, ys: (n, B, T),
  each batch's mean as if evaluated alone, in one jitted program (dropout
  off), compiled with compiler_options. A few batches a call, so a long
  evaluation can stop between calls."""

  @functools.partial(jax.jit, compiler_options=compiler_options)
  def eval_losses(params, xs, ys, first):
    x, y = (jax.lax.dynamic_slice_in_dim(a, first, batches_per_call) for a in (xs, ys))
    logits, _ = nnx.merge(graphdef, params)(x.reshape(-1, x.shape[-1]))
    return jax.vmap(cross_entropy)(logits.reshape(*y.shape, -1), y)
  return eval_losses


def init_model(config, seed: int) -> tuple[GPT, nnx.GraphDef, Params]:
  """A freshly initialised model, its graph definition and its params.

  The weights are drawn by one compiled program: drawn eagerly, each weight
  shape's jax.random.normal compiles a program of its own, seconds of a
  fresh machine's start and megabytes of memory kept for programs that run
  once (docs/performance.md). Compiled without XLA's backend optimisations:
  the program runs once, in milliseconds, and compiles faster that way.
  """
  graphdef, _ = abstract_params(config)

  @functools.partial(jax.jit, compiler_options={'xla_backend_optimization_level': 0})
  def draw_weights() -> Params:
    return nnx.to_pure_dict(nnx.state(GPT(config, rngs=nnx.Rngs(seed))))

  params = draw_weights()
  return nnx.merge(graphdef, params), graphdef, params


def abstract_params(config) -> tuple[nnx.GraphDef, Params]:
  """The graph definition and the params' shapes and dtypes, computing no
  weights: the template that loaded weights (orbax, GPT-2, ckpt.pt) fill."""
  graphdef, state = nnx.split(nnx.eval_shape(lambda: GPT(config, rngs=nnx.Rngs(0))))
  return graphdef, nnx.to_pure_dict(state)
