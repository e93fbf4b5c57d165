"""The train step: gradient accumulation, fused vs staged vs sharded over threads, dropout keys, matmul library."""

import dataclasses
import os
import platform
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import TINY, max_diff, x86_64_linux_only
from jaxgpt import parallel, runtime
from jaxgpt.config import base_config
from jaxgpt.optim import make_optimizer
from jaxgpt.step import (ShardedTrainStep, TrainStep, _loss, _loss_and_grads, eval_batches_per_call, eval_calls,
                         init_model, make_eval_losses)


def options_for(config) -> dict:
  """XLA's options for the model's matmuls, as train.py passes them."""
  return runtime.compiler_options(config.dtype, config.n_embd)


def run_config(**overrides) -> ml_collections.ConfigDict:
  c = base_config()
  c.update(dict(learning_rate=1e-3, min_lr=1e-4, warmup_iters=2, lr_decay_iters=10, beta2=0.99) | overrides)
  return c


@pytest.fixture(scope='module')
def batch():
  rng = np.random.default_rng(0)
  xs = rng.integers(0, TINY.vocab_size, (3, 8, TINY.block_size), dtype=np.int32)
  return xs, np.roll(xs, -1, axis=-1)


def test_accumulated_micro_batches_average_like_one_batch(batch):
  # nanoGPT: loss / accum per micro-batch, gradients summed by backward(); with
  # equal micro-batches that is the gradient of the whole batch's mean loss
  _, graphdef, params = init_model(TINY, seed=0)
  xs, ys = batch
  two_loss, two_grads = _loss_and_grads(graphdef, params, xs[0].reshape(2, 4, -1), ys[0].reshape(2, 4, -1), None)
  one_loss, one_grads = _loss_and_grads(graphdef, params, xs[:1], ys[:1], None)
  assert abs(float(two_loss) - float(one_loss)) < 1e-6
  assert max_diff(two_grads, one_grads) < 1e-6
  assert max_diff(one_grads, jax.tree.map(np.zeros_like, one_grads)) > 1e-3  # gradients are not all zero


@pytest.mark.slow  # trains several steps in process
def test_staged_step_equals_fused_step(batch):
  # compile=False (two programs) and compile=True (one): the same numbers, to float32 rounding
  c = run_config()
  tx = make_optimizer(c)
  results = []
  for fused in (True, False):
    _, graphdef, params = init_model(TINY, seed=0)
    opt_state = tx.init(params)
    step = TrainStep(graphdef, tx, dropout=False, seed=0, fused=fused, compiler_options=options_for(TINY))
    losses = []
    for i in range(3):
      params, opt_state, metrics = step(params, opt_state, batch[0][i:i + 1], batch[1][i:i + 1], i)
      losses.append(float(metrics.loss))
    results.append((losses, params))
  (fused_losses, fused_params), (staged_losses, staged_params) = results
  np.testing.assert_allclose(staged_losses, fused_losses, atol=1e-6)
  assert max_diff(staged_params, fused_params) < 1e-6


@pytest.mark.slow  # trains several steps in process
def test_dropout_keys_follow_the_iteration(batch):
  # the dropout key of a step comes from (seed, iter_num): the same iteration
  # draws the same masks (what exact resume needs), another iteration others
  config = dataclasses.replace(TINY, dropout=0.5)
  tx = make_optimizer(run_config())
  _, graphdef, params = init_model(config, seed=0)
  step = TrainStep(graphdef, tx, dropout=True, seed=0, fused=True, compiler_options=options_for(config))
  losses = {}
  for name, iter_num in (('a', 7), ('b', 7), ('c', 8)):
    params_copy = jax.tree.map(np.array, params)
    _, _, metrics = step(params_copy, tx.init(params_copy), batch[0][:1], batch[1][:1], iter_num)
    losses[name] = float(metrics.loss)
  assert losses['a'] == losses['b']
  assert losses['a'] != losses['c']


def train_steps(step, config, batches, iters, params=None, opt_state=None):
  """Runs step over iterations `iters` of batches (steps, accum, B, T); returns
  (losses, grad norms, params, opt_state)."""
  tx = make_optimizer(run_config())
  if params is None:
    params = init_model(config, seed=0)[2]
    opt_state = tx.init(params)
  losses, norms = [], []
  for i in iters:
    params, opt_state, metrics = step(params, opt_state, batches[0][i], batches[1][i], i)
    losses.append(float(metrics.loss))
    norms.append(float(metrics.grad_norm))
  return losses, norms, params, opt_state


def sharded_step(config, shards, dropout=False):
  graphdef = init_model(config, seed=0)[1]
  return ShardedTrainStep(graphdef, make_optimizer(run_config()), mesh=parallel.make_mesh(), shards=shards,
                          dropout=dropout, seed=0, compiler_options={})


@pytest.mark.slow  # trains several steps in process
@pytest.mark.parametrize('shards, accum', [(1, 1), (2, 1), (4, 1), (8, 1), (2, 2), (4, 2)])
def test_sharded_step_equals_fused_step(batch, shards, accum):
  """The rows of each micro-batch split over threads: the same losses, norms
  and weights as one program on the whole batch, to float32 rounding (AdamW
  divides by sqrt(v), so weights whose gradient is near 0 move by a few 1e-6)."""
  xs, ys = (a.reshape(3, accum, 8 // accum, -1) for a in batch)
  graphdef = init_model(TINY, seed=0)[1]
  fused = TrainStep(graphdef, make_optimizer(run_config()), dropout=False, seed=0, fused=True,
                    compiler_options=options_for(TINY))
  want = train_steps(fused, TINY, (xs, ys), range(3))
  got = train_steps(sharded_step(TINY, shards), TINY, (xs, ys), range(3))
  np.testing.assert_allclose(got[0], want[0], atol=1e-6)
  np.testing.assert_allclose(got[1], want[1], rtol=1e-5)
  assert max_diff(got[2], want[2]) < 1e-5
  assert len(set(got[0])) == 3  # it trained


@pytest.mark.slow  # trains several steps in process
def test_sharded_dropout_is_fixed_by_seed_iteration_and_shard(batch):
  config = dataclasses.replace(TINY, dropout=0.5)
  xs, ys = (a[:, None] for a in batch)  # (steps, accum 1, 8, T)
  # shard 0 of 1 draws the fused step's masks: (seed, iteration, shard 0) is one key
  graphdef = init_model(config, seed=0)[1]
  fused = TrainStep(graphdef, make_optimizer(run_config()), dropout=True, seed=0, fused=True,
                    compiler_options=options_for(config))
  one_shard = train_steps(sharded_step(config, 1, dropout=True), config, (xs, ys), range(2))
  assert one_shard[0] == pytest.approx(train_steps(fused, config, (xs, ys), range(2))[0], abs=1e-6)
  # two shards draw masks of their own: not the one-shard run's
  straight = train_steps(sharded_step(config, 2, dropout=True), config, (xs, ys), range(3))
  assert abs(straight[0][1] - one_shard[0][1]) > 1e-4
  # and the same ones again in a fresh step resuming at iteration 1: exact resume
  first = train_steps(sharded_step(config, 2, dropout=True), config, (xs, ys), range(1))
  resumed = train_steps(sharded_step(config, 2, dropout=True), config, (xs, ys), range(1, 3), *first[2:])
  assert first[0] + resumed[0] == straight[0]
  assert max_diff(resumed[2], straight[2]) == 0


def test_sharded_step_carries_the_stop_flag(batch):
  xs, ys = (a[:, None] for a in batch)
  step = sharded_step(TINY, 2)
  params = init_model(TINY, seed=0)[2]
  tx = make_optimizer(run_config())
  for stop in (False, True):
    metrics = step(jax.tree.map(jnp.copy, params), tx.init(params), xs[0], ys[0], 0, stop=stop)[2]
    assert bool(metrics.stop) is stop


def test_sharded_step_compiles_one_shard_program_run_by_every_thread(batch):
  xs, ys = (a[:, None] for a in batch)
  params = init_model(TINY, seed=0)[2]
  tx = make_optimizer(run_config())
  [(shard_program, copies), (update_program, once)] = sharded_step(TINY, 4).compile(
      params, tx.init(params), xs[0], ys[0], 0)
  assert (copies, once) == (4, 1)
  n_params = sum(a.size for a in jax.tree.leaves(params))
  assert shard_program.out_info.shape == (1, n_params + 2)  # gradients, loss, stop: one flat row
  assert 'all-reduce' not in update_program.as_text()  # one device: nothing to exchange


@x86_64_linux_only("jaxlib's oneDNN and YNNPACK matmul fusions (__onednn_fusion, __ynn_fusion)")
@pytest.mark.parametrize('dtype, n_embd', [('float32', 32), ('bfloat16', 32), ('float32', 384), ('bfloat16', 384)])
def test_matmuls_run_in_the_faster_library_for_the_dtype(batch, dtype, n_embd):
  # runtime.compiler_options: float32 dots as oneDNN matmuls under jax 0.12,
  # and under jax 0.10.2 from 384 wide; all others left to XLA's default
  # (YNNPACK), where each is faster (docs/performance.md)
  onednn = dtype == 'float32' and (jax.__version_info__ >= (0, 12) or n_embd >= 384)
  library = '__onednn_fusion' if onednn else '__ynn_fusion'
  config = dataclasses.replace(TINY, dtype=dtype, n_embd=n_embd)
  _, graphdef, params = init_model(config, seed=0)
  tx = make_optimizer(run_config())
  step = TrainStep(graphdef, tx, dropout=False, seed=0, fused=True, compiler_options=options_for(config))
  [(train_program, _)] = step.compile(params, tx.init(params), batch[0][:1], batch[1][:1], 0)
  eval_losses = make_eval_losses(graphdef, 2, options_for(config))
  programs = {'train': train_program, 'eval': eval_losses.lower(params, batch[0][:2], batch[1][:2], 0).compile()}
  for name, program in programs.items():
    hlo = program.as_text()
    assert library in hlo, name
    assert ('__onednn_fusion' in hlo) == onednn, name


def test_the_train_step_keeps_the_residual_barriers_without_any_xla_flag(batch):
  # the barriers' compiler option travels with the step's programs: nothing in XLA_FLAGS asks for it
  assert 'cse_barrier_expander' not in os.environ.get('XLA_FLAGS', '')
  _, graphdef, params = init_model(TINY, seed=0)
  tx = make_optimizer(run_config())
  for fused in (True, False):
    step = TrainStep(graphdef, tx, dropout=False, seed=0, fused=fused, compiler_options={})
    grads_program = step.compile(params, tx.init(params), batch[0][:1], batch[1][:1], 0)[0][0]
    assert grads_program.as_text().count('opt-barrier') >= 2 * TINY.n_layer, fused
  sharded = sharded_step(TINY, 2).compile(params, tx.init(params), batch[0][:1], batch[1][:1], 0)
  assert 'opt-barrier' in sharded[0][0].as_text()


@pytest.mark.parametrize('first', [0, 1])
def test_grouped_evaluation_gives_each_batchs_own_loss(batch, first):
  _, graphdef, params = init_model(TINY, seed=0)
  xs, ys = batch
  losses = make_eval_losses(graphdef, 2, {})(params, xs, ys, first)
  alone = jnp.stack([_loss(graphdef, params, xs[i], ys[i], None) for i in (first, first + 1)])
  assert losses.shape == (2,)
  assert max_diff(losses, alone) < 2e-6  # a few float32 ulps: the sums run in another order
  assert abs(float(losses[0]) - float(losses[1])) > 1e-3  # two different batches, not one twice


@pytest.mark.parametrize('eval_iters', range(1, 13))
def test_eval_calls_count_every_batch_once(eval_iters):
  for per_call in range(1, eval_iters + 1):
    counted = [first + i for first, skip in eval_calls(eval_iters, per_call) for i in range(skip, per_call)]
    assert counted == list(range(eval_iters)), (eval_iters, per_call)
    assert all(0 <= first <= eval_iters - per_call for first, _ in eval_calls(eval_iters, per_call))


def test_evaluation_groups_only_small_batches():
  assert eval_batches_per_call(20, 12, 64) == 5  # the seed recipe: 768 tokens a batch
  assert eval_batches_per_call(3, 12, 64) == 3  # no more than an evaluation has
  assert eval_batches_per_call(200, 64, 256) == 1  # the GPU recipe's 16k tokens: one a call, as nanoGPT


def test_the_x86_64_linux_jaxlib_is_found_to_have_onednn():
  assert runtime.has_onednn() == (platform.machine() == 'x86_64' and sys.platform == 'linux')


@x86_64_linux_only("jaxlib's oneDNN and YNNPACK matmul fusions (__onednn_fusion, __ynn_fusion)")
def test_without_onednn_float32_compiles_xlas_own_dots_to_the_same_losses(batch, monkeypatch):
  """A jaxlib without oneDNN (forced here, with oneDNN's float32 matmuls
  preferred as for a wide model): the float32 step leaves the options out,
  compiles, and trains as the oneDNN one does."""
  monkeypatch.setattr(runtime, 'prefers_onednn', lambda n_embd: True)
  _, graphdef, params = init_model(TINY, seed=0)
  tx = make_optimizer(run_config())
  losses = {}
  for has_onednn in (True, False):
    monkeypatch.setattr(runtime, 'has_onednn', lambda: has_onednn)
    step = TrainStep(graphdef, tx, dropout=False, seed=0, fused=True, compiler_options=options_for(TINY))
    [(program, _)] = step.compile(params, tx.init(params), batch[0][:1], batch[1][:1], 0)
    assert ('__onednn_fusion' in program.as_text()) == has_onednn
    state = (jax.tree.map(jnp.copy, params), tx.init(params))
    for i in range(2):
      *state, metrics = step(*state, batch[0][i:i + 1], batch[1][i:i + 1], i)
    losses[has_onednn] = float(metrics.loss)
  assert losses[False] == pytest.approx(losses[True], abs=1e-5)
