"""The GPT model: size, causality, loss, init, jit, the key/value cache, and
the nanoGPT name map."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import TINY, flat_params, load_trace
from jaxgpt import nanogpt
from jaxgpt.model import GPTConfig
from jaxgpt.model import GPT, bf16_einsum, cross_entropy, gelu
from jaxgpt.step import init_model

# the seed command's model: 4 layers, 4 heads, 128 wide, block 64, 65 characters
SEED = GPTConfig(block_size=64, vocab_size=65, n_layer=4, n_head=4, n_embd=128, dropout=0.0, bias=True)


def hand_count(c: GPTConfig) -> int:
  """nanoGPT's get_num_params(): every parameter but the position embedding."""
  C, b = c.n_embd, int(c.bias)
  layer_norm = C + b * C
  attn = (C * 3 * C + b * 3 * C) + (C * C + b * C)  # c_attn, c_proj
  mlp = (C * 4 * C + b * 4 * C) + (4 * C * C + b * C)  # c_fc, c_proj
  block = 2 * layer_norm + attn + mlp
  return c.vocab_size * C + c.n_layer * block + layer_norm  # wte (also lm_head), blocks, ln_f


@pytest.fixture(scope='module')
def tokens():
  rng = np.random.default_rng(0)
  return jnp.asarray(rng.integers(0, TINY.vocab_size, (2, TINY.block_size)), jnp.int32)


@pytest.fixture(scope='module')
def targets():
  rng = np.random.default_rng(1)
  return jnp.asarray(rng.integers(0, TINY.vocab_size, (2, TINY.block_size)), jnp.int32)


@pytest.fixture(scope='module')
def split(tiny_model):
  return nnx.split(tiny_model)


def logits_and_loss(graphdef, state, x, y):
  logits, _ = nnx.merge(graphdef, state)(x)
  return logits, cross_entropy(logits, y)


@pytest.fixture(scope='module')
def forward(split):
  """(state, idx, targets) -> (logits, loss), jitted once for the module."""
  return jax.jit(lambda state, x, y: logits_and_loss(split[0], state, x, y))


@pytest.mark.parametrize('bias, count', [(True, 801_664), (False, 795_904)])
def test_seed_model_parameter_count(bias, count):
  c = dataclasses.replace(SEED, bias=bias)  # nanoGPT's seed run: bias=False; the seed trace: True
  model = GPT(c, rngs=nnx.Rngs(0))
  assert hand_count(c) == count
  assert model.num_params() == count
  assert model.num_params(non_embedding=False) == count + c.block_size * c.n_embd
  assert f'{model.num_params() / 1e6:.2f}M' == '0.80M'  # train.py's "number of parameters" line


def test_parameter_count_matches_nanogpt_tensors():
  trace = load_trace('seed_model.npz')
  sizes = {k.removeprefix('init/'): trace[k].size for k in trace if k.startswith('init/')}
  # lm_head.weight is wte itself, and nanoGPT leaves wpe out of its count
  expected = sum(sizes.values()) - sizes['lm_head.weight'] - sizes['transformer.wpe.weight']
  assert hand_count(SEED) == expected == 801_664


def test_future_tokens_do_not_change_past_logits(split, forward, tokens, targets):
  t = 6
  changed = tokens.at[:, t + 1:].set((tokens[:, t + 1:] + 1) % TINY.vocab_size)
  logits, _ = forward(split[1], tokens, targets)
  logits_changed, _ = forward(split[1], changed, targets)
  np.testing.assert_allclose(logits_changed[:, :t + 1], logits[:, :t + 1], rtol=0, atol=1e-6)
  assert np.abs(logits_changed[:, t + 1:] - logits[:, t + 1:]).max() > 1e-3  # the change did reach later positions


@pytest.fixture(scope='module')
def grad(split):
  """(state, idx, targets) -> gradient of the loss, jitted once for the module."""
  return jax.jit(jax.grad(lambda state, x, y: logits_and_loss(split[0], state, x, y)[1]))


@pytest.mark.parametrize('t', [0, 9])
def test_loss_at_t_has_no_gradient_from_later_positions(split, grad, tokens, targets, t):
  only_t = jnp.full_like(targets, -1).at[:, t].set(targets[:, t])  # the loss of position t alone
  wpe = np.asarray(nnx.to_pure_dict(grad(split[1], tokens, only_t))['wpe']['embedding'])  # row s: position s
  assert wpe.shape == (TINY.block_size, TINY.n_embd)
  assert np.all(wpe[t + 1:] == 0.0)
  assert np.all(np.abs(wpe[:t + 1]).max(axis=-1) > 0.0)


def test_index_gives_that_positions_logits_alone(split, forward, tokens, targets):
  graphdef, state = split
  at_index = jax.jit(lambda state, x, index: nnx.merge(graphdef, state)(x, index=index))
  full, _ = forward(state, tokens, targets)
  assert full.shape == (2, TINY.block_size, TINY.vocab_size)
  for index in (0, 7, TINY.block_size - 1):
    logits, cache = at_index(state, tokens, index)
    assert cache is None  # none was given
    assert logits.shape == (2, TINY.vocab_size) and logits.dtype == jnp.float32
    np.testing.assert_allclose(logits, full[:, index], rtol=0, atol=1e-6, err_msg=f'index {index}')
  assert np.abs(full[:, 7] - full[:, 6]).max() > 1e-3  # positions do differ


@pytest.mark.parametrize('dtype, remat', [('float32', False), ('bfloat16', False), ('float32', True)])
def test_the_cache_gives_the_logits_of_the_whole_sequence(tokens, dtype, remat):
  """The prompt at once, then one token at a time through the cache: the same
  logits as the whole sequence without it, and the cache counts the tokens."""
  config = dataclasses.replace(TINY, dtype=dtype, remat=remat)
  model, graphdef, params = init_model(config, seed=0)
  forward = jax.jit(lambda p, x, cache: nnx.merge(graphdef, p)(x, cache=cache))
  full, no_cache = forward(params, tokens, None)
  assert no_cache is None
  prompt = 5
  logits, cache = forward(params, tokens[:, :prompt], model.init_cache(2))
  got = [logits]
  for pos in range(prompt, TINY.block_size):
    assert int(cache.length) == pos
    logits, cache = forward(params, tokens[:, pos:pos + 1], cache)
    got.append(logits)
  assert int(cache.length) == TINY.block_size
  assert all(layer.k.dtype == layer.v.dtype == jnp.dtype(dtype) for layer in cache.layers)
  np.testing.assert_allclose(np.concatenate(got, axis=1), full, rtol=0, atol=1e-5)


def test_loss_ignores_targets_of_minus_one(split, forward, tokens, targets):
  ignored = np.asarray(targets).copy()
  ignored[0, :5] = -1
  ignored[1, 10:] = -1
  logits, loss = forward(split[1], tokens, jnp.asarray(ignored))
  logits = np.asarray(logits, np.float64)
  log_probs = logits - logits.max(-1, keepdims=True)
  log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
  valid = ignored != -1
  picked = np.take_along_axis(log_probs, np.where(valid, ignored, 0)[..., None], -1)[..., 0]
  assert valid.sum() == 21
  assert float(loss) == pytest.approx(-picked[valid].mean(), rel=1e-5)  # the mean over 21 positions, not 32
  all_valid = -np.take_along_axis(log_probs, np.asarray(targets)[..., None], -1).mean()
  assert abs(float(loss) - all_valid) > 1e-4  # the ignored positions would have moved it


def test_initial_loss_is_a_uniform_guess(split, forward, tokens, targets):
  # GPT-2 init: logits near 0, so the loss of random targets is about ln(65) = 4.174
  _, loss = forward(split[1], tokens, targets)
  assert float(loss) == pytest.approx(np.log(TINY.vocab_size), abs=0.05)


def test_sequence_longer_than_block_size_raises(tiny_model):
  with pytest.raises(ValueError, match='cannot forward a sequence of length 17: block_size is 16'):
    tiny_model(jnp.zeros((1, TINY.block_size + 1), jnp.int32))


def test_init_scales():
  # 8 layers: residual projections at 0.02 / sqrt(2 * 8) = 0.005, not 0.02 / sqrt(8) = 0.0071
  c = GPTConfig(block_size=32, vocab_size=512, n_layer=8, n_head=4, n_embd=256, bias=True)
  params = flat_params(nnx.state(GPT(c, rngs=nnx.Rngs(0)), nnx.Param))

  def pooled(module):
    return np.concatenate([p.ravel() for name, p in params.items()
                           if name.split('/')[-2] == module and not name.endswith('/bias')])

  c_proj = pooled('c_proj')  # attn.c_proj and mlp.c_proj of every layer: 2.6M samples
  assert c_proj.size == 8 * (256 * 256 + 1024 * 256)
  assert np.std(c_proj) == pytest.approx(0.005, rel=0.01)
  assert abs(np.mean(c_proj)) < 1e-4
  for module in ('c_attn', 'c_fc', 'wte', 'wpe'):
    assert np.std(pooled(module)) == pytest.approx(0.02, rel=0.01), module
  for name, p in params.items():
    if name.endswith('/bias'):
      assert np.all(p == 0.0), name
    elif name.split('/')[-2].startswith('ln_'):
      assert np.all(p == 1.0), name


def test_gelu_is_exact_erf():
  # torch's nn.GELU(): x * Phi(x). The tanh approximation is off by 1e-4 near |x| = 2,
  # too little for the tiny trace to see, so it is held here directly
  xs = np.array([-3.0, -2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 3.0], np.float32)
  exact = [0.5 * x * (1.0 + math.erf(x / math.sqrt(2.0))) for x in xs.astype(np.float64)]
  np.testing.assert_allclose(gelu(jnp.asarray(xs)), exact, rtol=0, atol=1e-6)


def test_residual_barriers_only_where_there_is_a_backward_pass(split, tokens, targets):
  """Training keeps XLA from fusing across them, forward and backward;
  a forward alone (evaluation, sampling) has nothing to recompute."""
  graphdef, state = split
  backward = jax.jit(jax.grad(lambda s: logits_and_loss(graphdef, s, tokens, targets)[1])).lower(state)
  forward = jax.jit(lambda s: nnx.merge(graphdef, s)(tokens)[0]).lower(state)
  per_pass = 3 * TINY.n_layer + 1  # each block's two residuals and MLP hidden, and the last residual
  assert backward.as_text().count('stablehlo.optimization_barrier') == 2 * per_pass
  assert forward.as_text().count('stablehlo.optimization_barrier') == 0


def test_jit_equals_no_jit(tiny_model, split, forward, tokens, targets):
  eager = cross_entropy(tiny_model(tokens)[0], targets)
  assert float(forward(split[1], tokens, targets)[1]) == pytest.approx(float(eager), rel=1e-6)


# -- nanoGPT names -------------------------------------------------------------


@pytest.fixture(scope='module')
def tiny_params():
  return init_model(TINY, seed=0)[2]


def test_names_and_layouts_are_nanogpt(tiny_params, tiny_trace):
  state_dict = nanogpt.to_nanogpt(tiny_params)
  reference = {k.removeprefix('init/'): v for k, v in tiny_trace.items() if k.startswith('init/')}
  assert set(state_dict) == set(reference)
  for name, array in state_dict.items():
    assert array.shape == reference[name].shape, name  # torch's (out, in) Linear layout
  assert state_dict['transformer.h.0.attn.c_attn.weight'].shape == (3 * 32, 32)
  params = flat_params(tiny_params)
  for name, path in [('transformer.wte.weight', 'wte/embedding'), ('transformer.wpe.weight', 'wpe/embedding'),
                     ('transformer.h.1.mlp.c_fc.weight', 'h/1/mlp/c_fc/weight'),
                     ('transformer.h.0.attn.c_proj.bias', 'h/0/attn/c_proj/bias'),
                     ('transformer.ln_f.weight', 'ln_f/weight'),
                     ('lm_head.weight', 'wte/embedding')]:  # tied: the lm_head is the token embedding
    np.testing.assert_array_equal(state_dict[name], params[path], err_msg=name)


def test_round_trip(tiny_params):
  other = init_model(TINY, seed=1)[2]
  restored = nanogpt.from_nanogpt(nanogpt.to_nanogpt(tiny_params), other)
  expected, got = flat_params(tiny_params), flat_params(restored)
  assert set(got) == set(expected)
  for name in expected:
    np.testing.assert_array_equal(got[name], expected[name], err_msg=name)


def test_loads_nanogpt_weights(tiny_trace):
  init = {k.removeprefix('init/'): v for k, v in tiny_trace.items() if k.startswith('init/')}
  params = nanogpt.from_nanogpt(init, init_model(TINY, seed=0)[2])
  for name, array in nanogpt.to_nanogpt(params).items():
    np.testing.assert_array_equal(array, init[name], err_msg=name)


def test_accepts_torch_compile_prefix(tiny_params):
  state_dict = {f'_orig_mod.{k}': v for k, v in nanogpt.to_nanogpt(tiny_params).items()}
  restored = nanogpt.from_nanogpt(state_dict, init_model(TINY, seed=1)[2])
  np.testing.assert_array_equal(flat_params(restored)['ln_f/bias'], flat_params(tiny_params)['ln_f/bias'])


def test_wrong_shape_names_the_tensor(tiny_params):
  state_dict = nanogpt.to_nanogpt(tiny_params)
  state_dict['transformer.h.1.mlp.c_fc.weight'] = state_dict['transformer.h.1.mlp.c_fc.weight'].T
  with pytest.raises(ValueError, match=r'transformer\.h\.1\.mlp\.c_fc\.weight: shape \(32, 128\)'):
    nanogpt.from_nanogpt(state_dict, init_model(TINY, seed=1)[2])


def test_missing_name_is_named(tiny_params):
  state_dict = nanogpt.to_nanogpt(tiny_params)
  del state_dict['transformer.h.0.ln_2.bias']
  with pytest.raises(ValueError, match=r"missing \['transformer\.h\.0\.ln_2\.bias'\], unexpected \[\]"):
    nanogpt.from_nanogpt(state_dict, init_model(TINY, seed=1)[2])


def test_extra_name_is_named(tiny_params):
  state_dict = nanogpt.to_nanogpt(tiny_params)
  state_dict['transformer.h.2.ln_1.weight'] = np.ones(32, np.float32)  # a third layer
  with pytest.raises(ValueError, match=r"missing \[\], unexpected \['transformer\.h\.2\.ln_1\.weight'\]"):
    nanogpt.from_nanogpt(state_dict, init_model(TINY, seed=1)[2])


# -- dtype=bfloat16 --------------------------------------------------------------


def bf16_rounded(x) -> jax.Array:
  return jnp.asarray(x, jnp.float32).astype(jnp.bfloat16).astype(jnp.float32)


@pytest.mark.parametrize('spec, a_shape, b_shape', [
    ('...i,oi->...o', (2, 5, 8), (6, 8)),  # Linear
    ('bhqd,bhkd->bhqk', (2, 3, 5, 4), (2, 3, 5, 4)),  # attention scores
    ('bhqk,bhkd->bhqd', (2, 3, 5, 5), (2, 3, 5, 4)),  # attention-weighted values
    ('...c,vc->...v', (2, 5, 8), (65, 8)),  # the tied lm_head
])
def test_bf16_einsum_is_the_float32_product_of_rounded_operands(spec, a_shape, b_shape):
  """Products of bfloat16 numbers are exact in float32: the forward and both
  gradients equal those of a float32 einsum (jax.vjp's) of the
  bfloat16-rounded operands and cotangent, up to the order of the sums."""
  rng = np.random.default_rng(0)
  a, b = (jnp.asarray(rng.standard_normal(shape), jnp.float32) for shape in (a_shape, b_shape))
  y, vjp = jax.vjp(lambda a, b: bf16_einsum(spec, a, b), a, b)
  g = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
  da, db = vjp(g)
  assert y.dtype == da.dtype == db.dtype == jnp.float32
  expected_y, expected_vjp = jax.vjp(lambda a, b: jnp.einsum(spec, a, b), bf16_rounded(a), bf16_rounded(b))
  expected_da, expected_db = expected_vjp(bf16_rounded(g))
  assert da.shape == a.shape and db.shape == b.shape
  np.testing.assert_allclose(y, expected_y, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(da, expected_da, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(db, expected_db, rtol=1e-5, atol=1e-5)
  # and the rounding is real: the float32 product differs
  assert np.abs(np.asarray(y) - np.asarray(jnp.einsum(spec, a, b))).max() > 1e-3


def test_bf16_model_is_the_float32_model_within_bf16_rounding(tokens, targets):
  """Same params, dtype bfloat16 against float32: logits, loss and gradients
  agree to bfloat16's precision, and everything stays float32 outside the
  matmuls (params, logits, loss, gradients)."""
  bf16 = dataclasses.replace(TINY, dtype='bfloat16')
  graphdef32, params = init_model(TINY, seed=0)[1:]
  graphdef16 = init_model(bf16, seed=0)[1]

  def loss_and_grads(graphdef):
    return jax.jit(jax.value_and_grad(lambda p: logits_and_loss(graphdef, p, tokens, targets)[1]))(params)

  (loss32, grads32), (loss16, grads16) = loss_and_grads(graphdef32), loss_and_grads(graphdef16)
  logits32 = jax.jit(lambda p: nnx.merge(graphdef32, p)(tokens)[0])(params)
  logits16 = jax.jit(lambda p: nnx.merge(graphdef16, p)(tokens)[0])(params)
  assert logits16.dtype == loss16.dtype == jnp.float32
  np.testing.assert_allclose(logits16, logits32, rtol=0, atol=2e-2)
  assert float(loss16) == pytest.approx(float(loss32), abs=1e-2)
  for path, g32 in flat_params(grads32).items():
    g16 = flat_params(grads16)[path]
    assert g16.dtype == np.float32, path
    scale = np.abs(g32).max()
    assert np.abs(g16 - g32).max() <= 0.05 * scale + 1e-6, path
  assert np.abs(np.asarray(logits16) - np.asarray(logits32)).max() > 1e-5  # the matmuls did round
