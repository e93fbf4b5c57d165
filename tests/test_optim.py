"""The optimizer against nanoGPT's get_lr and configure_optimizers."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import TINY, flat_params, nanogpt_get_lr
from jaxgpt import cli
from jaxgpt.config import ConfigError, base_config, validate
from jaxgpt.optim import decay_mask, lr_schedule, make_optimizer, muon_labels, orthogonalized
from jaxgpt.step import init_model


def config(**overrides):
  c = base_config()
  c.update(dict(learning_rate=1e-3, min_lr=1e-4, warmup_iters=100, lr_decay_iters=5000) | overrides)
  return c


@pytest.mark.parametrize('it', [0, 1, 99, 100, 101, 2550, 4999, 5000, 5100, 100_000])
def test_schedule_is_nanogpt_get_lr(it):
  c = config()
  expected = nanogpt_get_lr(it, 1e-3, 100, 5000, 1e-4)
  assert float(lr_schedule(c)(it)) == pytest.approx(expected, rel=1e-6)


def test_schedule_landmarks():
  schedule = lr_schedule(config())
  assert float(schedule(0)) == pytest.approx(1e-3 / 101, rel=1e-6)  # not 0: nanoGPT warms up from lr/(warmup+1)
  assert float(schedule(99)) == pytest.approx(1e-3 * 100 / 101, rel=1e-6)
  assert float(schedule(100)) == pytest.approx(1e-3, rel=1e-6)  # the peak, at warmup_iters
  assert float(schedule(2550)) == pytest.approx(5.5e-4, rel=1e-6)  # halfway down the cosine
  assert float(schedule(5000)) == pytest.approx(1e-4, rel=1e-6)
  assert float(schedule(5100)) == pytest.approx(1e-4, rel=1e-6)  # min_lr held after lr_decay_iters


def test_schedule_of_the_tiny_trace(tiny_trace):
  # the lr column nanoGPT recorded: warmup 5 into a cosine ending at 30
  c = config(warmup_iters=5, lr_decay_iters=30)
  lrs = [float(lr_schedule(c)(i)) for i in range(len(tiny_trace['lr']))]
  np.testing.assert_allclose(lrs, tiny_trace['lr'], rtol=1e-6)


# nanoGPT's combinations: warmup shorter, longer than and equal to the decay
# window (lr_decay_iters < warmup_iters: warm up, then hold min_lr), min_lr
# below, at and above learning_rate (above: the cosine rises), and runs that
# stop before, at and after both.
SWEEP = [dict(warmup_iters=warmup, lr_decay_iters=decay, max_iters=max_iters, min_lr=min_lr)
         for warmup in (0, 1, 10, 100) for decay in (0, 1, 10, 30, 100, 150) for max_iters in (0, 10, 30, 120)
         for min_lr in (0.0, 1e-4, 3e-3)]


@pytest.mark.parametrize('case', SWEEP, ids=lambda case: '-'.join(f'{v:g}' for v in case.values()))
def test_schedule_is_nanogpt_get_lr_over_a_sweep(case):
  c = config(**case)
  try:  # the learning rates nanoGPT's run would use, iterations 0..max_iters
    expected = [nanogpt_get_lr(it, 1e-3, case['warmup_iters'], case['lr_decay_iters'], case['min_lr'])
                for it in range(case['max_iters'] + 1)]
  except ZeroDivisionError:  # nanoGPT divides by zero: refused before the run
    with pytest.raises(ConfigError, match='equals warmup_iters'):
      validate(c)
    return
  validate(c)
  lrs = lr_schedule(c)(jnp.arange(case['max_iters'] + 1))
  # float32 rounds the cosine's terms, of the size of max(lr, min_lr), at ~6e-8 of them: near
  # its end, where it falls to a min_lr of 0, that is more than 1e-6 of the value
  atol = 1e-6 * max(1e-3, case['min_lr'])
  np.testing.assert_allclose(np.broadcast_to(lrs, len(expected)), expected, rtol=1e-6, atol=atol)


def test_decay_ending_before_warmup_holds_min_lr():
  # the short run of the issue: --max_iters=30 --lr_decay_iters=30 with a recipe's warmup of 100
  c = config(max_iters=30, lr_decay_iters=30, warmup_iters=100)
  validate(c)
  schedule = lr_schedule(c)
  assert float(schedule(29)) == pytest.approx(1e-3 * 30 / 101, rel=1e-6)  # still warming up
  assert float(schedule(100)) == pytest.approx(1e-4, rel=1e-6)  # then min_lr, no cosine
  assert float(schedule(1000)) == pytest.approx(1e-4, rel=1e-6)


def test_min_lr_above_learning_rate_rises():
  schedule = lr_schedule(config(min_lr=2e-3))  # nanoGPT's formula, from lr up to min_lr
  assert float(schedule(100)) == pytest.approx(1e-3, rel=1e-6)
  assert float(schedule(2550)) == pytest.approx(1.5e-3, rel=1e-6)
  assert float(schedule(5000)) == pytest.approx(2e-3, rel=1e-6)


def test_constant_lr_without_decay():
  schedule = lr_schedule(config(decay_lr=False))
  for it in (0, 50, 100, 5000, 10_000):
    assert float(schedule(it)) == pytest.approx(1e-3, rel=1e-7)


@pytest.fixture(scope='module')
def model_params():
  return init_model(TINY, seed=0)[2]


def test_decay_mask_on_model_params(model_params):
  mask = flat_params(decay_mask(model_params))
  params = flat_params(model_params)
  assert set(mask) == set(params)
  decayed = {name for name, on in mask.items() if on}
  # embeddings and Linear weights: decayed; Linear biases and LayerNorm weights and biases: not
  matrices = {name for name in params
              if name.split('/')[-2] in ('wte', 'wpe', 'c_attn', 'c_proj', 'c_fc') and not name.endswith('/bias')}
  assert decayed == matrices
  assert decayed == {name for name, p in params.items() if p.ndim >= 2}
  assert {'wte/embedding', 'wpe/embedding'} <= decayed
  assert not any(name.startswith(('h/0/ln_1/', 'h/1/ln_2/', 'ln_f/')) for name in decayed)
  assert not any(name.endswith('/bias') for name in decayed)
  # nanoGPT's count: 2 embeddings + 4 Linear weights per layer
  assert len(decayed) == 2 + 4 * TINY.n_layer


def test_weight_decay_only_on_matrices():
  # zero gradients: Adam's update is 0, so only the decoupled weight decay moves the params
  c = config(weight_decay=0.1)
  params = {'kernel': jnp.full((3, 4), 2.0), 'embedding': jnp.full((5, 3), -1.0),
            'bias': jnp.full((4,), 2.0), 'scale': jnp.ones((3,))}
  tx = make_optimizer(c)
  grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  lr0 = 1e-3 / 101  # the schedule at step 0
  np.testing.assert_allclose(updates['kernel'], -lr0 * 0.1 * 2.0, rtol=1e-6)
  np.testing.assert_allclose(updates['embedding'], -lr0 * 0.1 * -1.0, rtol=1e-6)
  np.testing.assert_array_equal(updates['bias'], 0.0)
  np.testing.assert_array_equal(updates['scale'], 0.0)


def _first_moment_norm(c, grad_value):
  params = {'w': jnp.zeros((2, 2)), 'b': jnp.zeros((2,))}
  grads = jax.tree.map(lambda p: jnp.full_like(p, grad_value), params)  # global norm sqrt(6) * grad_value
  tx = make_optimizer(c)
  _, state = tx.update(grads, tx.init(params), params)
  [mu] = optax.tree_utils.tree_get_all_with_path(state, 'mu')
  return float(optax.tree.norm(mu[1]))  # (1 - beta1) x the gradient Adam saw


def test_grad_clip_clips_the_global_norm():
  # nanoGPT: clip_grad_norm_(model.parameters(), grad_clip) before the step
  norm = _first_moment_norm(config(grad_clip=1.0), 1e6)
  assert norm == pytest.approx(0.1 * 1.0, rel=1e-5)


def test_grad_clip_zero_disables_clipping():
  norm = _first_moment_norm(config(grad_clip=0.0), 1e6)
  assert norm == pytest.approx(0.1 * math.sqrt(6) * 1e6, rel=1e-5)


# -- Muon (optimizer='muon') ----------------------------------------------------------


def muon_scale(shape) -> float:
  return math.sqrt(max(1.0, shape[0] / shape[1]))  # Muon's reference's, for a tall matrix


@pytest.mark.parametrize('seed', range(4))
@pytest.mark.parametrize('shape', [(32, 96), (96, 32), (64, 64), (128, 512), (512, 128)])  # wide, tall, square
def test_orthogonalized_brings_the_singular_values_near_one(shape, seed):
  g = np.asarray(jax.random.normal(jax.random.key(seed), shape), np.float64)
  u, s, vt = np.linalg.svd(g, full_matrices=False)
  o = np.asarray(orthogonalized(jnp.asarray(g, jnp.float32)), np.float64) / muon_scale(shape)
  # Newton-Schulz maps each singular value on its own, keeping the singular vectors: u^T o v is diagonal
  mapped = u.T @ o @ vt.T
  np.testing.assert_allclose(mapped - np.diag(np.diag(mapped)), 0.0, atol=1e-4)
  singular = np.diag(mapped)
  assert np.all(singular <= 1.3)
  # five iterations lift a direction holding at least 1/500 of g's norm into [0.6, 1.3]; a random square matrix
  # may have smaller ones (seed 3: 0.0006 of its norm), which stay small
  lifted = s / np.linalg.norm(g) >= 2e-3
  assert np.mean(lifted) > 0.9 and np.all((0.6 <= singular[lifted]) & (singular[lifted] <= 1.3)), singular


def test_muon_labels_give_muon_to_the_blocks_matrices_only(model_params):
  labels, params = flat_params(muon_labels(model_params)), flat_params(model_params)
  muon = sorted(name for name, label in labels.items() if label == 'muon')
  assert muon == sorted(f'h/{layer}/{module}/weight' for layer in range(TINY.n_layer)
                        for module in ('attn/c_attn', 'attn/c_proj', 'mlp/c_fc', 'mlp/c_proj'))
  assert all(params[name].ndim == 2 for name in muon)
  rest = {str(label) for name, label in labels.items() if name not in muon}
  assert rest == {'adamw'}  # the embeddings, LayerNorm weights and biases


def test_muon_moves_the_matrices_by_their_orthogonalized_gradient_and_the_rest_as_adamw(model_params):
  c = config(optimizer='muon', muon_learning_rate=0.05, decay_lr=False, grad_clip=0.0, weight_decay=0.1)
  leaves, treedef = jax.tree.flatten(model_params)
  grads = jax.tree.unflatten(treedef, [jax.random.normal(jax.random.key(i), p.shape) for i, p in enumerate(leaves)])
  tx = make_optimizer(c)
  updates, _ = tx.update(grads, tx.init(model_params), model_params)  # one step, momentum from zero
  c.optimizer = 'adamw'
  adamw = make_optimizer(c)
  adamw_updates, _ = adamw.update(grads, adamw.init(model_params), model_params)
  labels, updates, adamw_updates, grads = map(flat_params, (muon_labels(model_params), updates, adamw_updates, grads))
  for name, label in labels.items():
    if label == 'adamw':
      np.testing.assert_allclose(updates[name], adamw_updates[name], rtol=1e-6, atol=1e-9, err_msg=name)
      continue
    # Nesterov momentum from zero is (1 + momentum) x the gradient, which orthogonalized normalizes away
    np.testing.assert_allclose(updates[name], -0.05 * orthogonalized(jnp.asarray(grads[name])), rtol=1e-5,
                               atol=1e-7, err_msg=name)
    singular = np.linalg.svd(updates[name], compute_uv=False) / (0.05 * muon_scale(updates[name].shape))
    assert 0.6 <= singular.min() and singular.max() <= 1.3, (name, singular)


@pytest.mark.parametrize('settings, message', [
    (dict(optimizer='sgd'), "optimizer='sgd' is not supported: choose one of adamw, muon"),
    (dict(muon_learning_rate=0.0), 'muon_learning_rate=0.0 must be > 0'),
    (dict(muon_learning_rate=-0.02), 'muon_learning_rate=-0.02 must be > 0'),
    (dict(muon_momentum=1.0), 'muon_momentum=1.0 must be in [0, 1)'),
    (dict(muon_momentum=-0.1), 'muon_momentum=-0.1 must be in [0, 1)'),
])
def test_muon_keys_are_validated_in_one_error_line(settings, message, capsys):
  flags = [f'--config.{key}={value}' for key, value in settings.items()]
  assert cli.main(['train.py', *flags]) == 1  # refused before anything is read or compiled
  assert capsys.readouterr().err == f'error: {message}\n'
