"""Run by test_parallel.py in a subprocess with 4 host devices: the train step
data parallel (and with fsdp) against the single-device step on the same
global batches. Prints JSON: the largest differences, and the shardings seen."""

import dataclasses
import json
import sys

import jax
import numpy as np

from conftest import TINY, max_diff
from jaxgpt import parallel, runtime
from jaxgpt.config import base_config
from jaxgpt.optim import make_optimizer
from jaxgpt.step import init_model, TrainStep

CONFIG = dataclasses.replace(TINY, dropout=float(sys.argv[1]))
STEPS = 3


def train(mesh, fsdp):
  """Losses and final params of STEPS steps on fixed batches; mesh None: one device."""
  c = base_config()
  c.update(learning_rate=1e-3, warmup_iters=1, lr_decay_iters=10, min_lr=1e-4)
  _, graphdef, params = init_model(CONFIG, seed=0)
  tx = make_optimizer(c)
  rng = np.random.default_rng(0)
  xs, ys = (rng.integers(0, 65, (STEPS, 2, 8, 16), dtype=np.int32) for _ in range(2))  # 2 micro-batches of 8
  if mesh is not None:
    params = parallel.place_state(mesh, params, fsdp)
    xs, ys = jax.device_put((xs, ys), jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, None, 'data')))
    opt_state = parallel.init_optimizer_state(mesh, tx, params, fsdp)
  else:
    opt_state = jax.jit(tx.init)(params)
  step = TrainStep(graphdef, tx, dropout=CONFIG.dropout > 0, seed=0, fused=True,
                   compiler_options=runtime.compiler_options(CONFIG.dtype, CONFIG.n_embd))
  losses, after_first = [], None
  for i in range(STEPS):
    params, opt_state, metrics = step(params, opt_state, xs[i], ys[i], i)
    losses.append(float(metrics.loss))
    after_first = after_first or jax.tree.map(np.asarray, params)
  return losses, params, opt_state, after_first


def main():
  assert jax.device_count() == 4, jax.devices()
  mesh = parallel.make_mesh()
  single = train(None, False)
  out = {}
  for name, fsdp in (('replicated', False), ('fsdp', True)):
    losses, params, opt_state, after_first = train(mesh, fsdp)
    out[name] = {
        'loss': max(abs(a - b) for a, b in zip(losses, single[0])),
        'weights_first_step': max_diff(after_first, single[3]),
        'weights': max_diff(params, single[1]),
        'split_params': sum(not leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(params)),
        'split_opt_state': sum(not leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(opt_state)),
        'devices': len(jax.tree.leaves(params)[0].sharding.device_set),
    }
  out['losses'] = single[0]
  print(json.dumps(out))


if __name__ == '__main__':
  main()
