"""The GPT language model in Flax NNX, computing what nanoGPT's model.py computes.

Module and parameter names and layouts follow nanoGPT (and so GPT-2): `wte`,
`wpe`, `h`, `ln_f`, `c_attn`, `c_proj`, `c_fc`, Linear weights (out, in), so
importing nanoGPT or GPT-2 weights is a name map (jaxgpt/nanogpt.py). One
forward pass serves training, evaluation and generation: `GPT.__call__`
takes an optional key/value cache (`GPT.init_cache`) and returns the logits
and the cache updated.
"""

import dataclasses
import functools
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx


def _fixed_by_weights(default):
  """A GPTConfig field the weights fix: a resumed, imported or pretrained
  model takes it from them, whatever the run config says."""
  return dataclasses.field(default=default, metadata={'fixed_by_weights': True})


@dataclasses.dataclass(frozen=True)
class GPTConfig:
  """The model's hyperparameters, as nanoGPT's GPTConfig, and how it computes."""
  block_size: int = _fixed_by_weights(1024)
  vocab_size: int = _fixed_by_weights(50304)  # GPT-2's 50257 padded up to a multiple of 64
  n_layer: int = _fixed_by_weights(12)
  n_head: int = _fixed_by_weights(12)
  n_embd: int = _fixed_by_weights(768)
  bias: bool = _fixed_by_weights(True)  # biases in Linear and LayerNorm, like GPT-2
  dropout: float = 0.0
  dtype: str = 'float32'  # compute dtype; parameters stay float32
  remat: bool = False  # recompute in backward all but each block's matmul outputs (REMAT_POLICY)

  @classmethod
  def from_run_config(cls, c, vocab_size: int) -> 'GPTConfig':
    """The model a run config (jaxgpt.config.base_config's keys) asks for,
    over a vocabulary of vocab_size (the data set's)."""
    return cls(vocab_size=vocab_size, **{field.name: c[field.name] for field in dataclasses.fields(cls)
                                         if field.name != 'vocab_size'})


# the model's shape: n_layer, n_head, n_embd, block_size, bias and vocab_size
SHAPE_KEYS = tuple(field.name for field in dataclasses.fields(GPTConfig) if field.metadata.get('fixed_by_weights'))

_STD = 0.02  # GPT-2's init scale for every Linear and Embedding weight


@jax.custom_vjp
def residual_barrier(x: jax.Array) -> jax.Array:
  """Identity that XLA may not fuse across, forward or backward, when
  differentiated.

  Without it XLA:CPU fuses the elementwise chain of the whole residual stream
  into the transpose feeding every weight-gradient dot, so the backward pass
  recomputes it once per layer: O(n_layer^2) work, see docs/performance.md.
  A program that differentiates it is compiled with KEEP_RESIDUAL_BARRIERS,
  or XLA drops the barrier. A program with no backward pass (evaluation,
  sampling) has nothing to recompute, and there the barrier only splits
  fusions: a plain identity.
  """
  return x


# XLA compiler options that keep `residual_barrier`: XLA:CPU's pass
# cse_barrier_expander deletes optimization barriers; switched off per program
# (jax.jit's compiler_options), not for the whole process
KEEP_RESIDUAL_BARRIERS = {'xla_disable_hlo_passes': 'cse_barrier_expander'}


def _barrier_fwd(x):
  return jax.lax.optimization_barrier(x), None


def _barrier_bwd(_, g):
  return (jax.lax.optimization_barrier(g),)


residual_barrier.defvjp(_barrier_fwd, _barrier_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def bf16_einsum(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
  """jnp.einsum(spec, a, b) through bfloat16: the operands rounded to
  bfloat16, the products accumulated and returned in float32; the same for
  the two gradient products (dtype=bfloat16's matmuls).

  bfloat16 x bfloat16 -> float32 is the form that runs fast on a CPU with
  AMX. A bfloat16 result, or autodiff's float32 cotangent meeting a bfloat16
  operand, takes slower paths (docs/performance.md): hence the custom
  gradient, which rounds the cotangent too. spec: a product of two operands in
  which every index appears in two of the three terms (a matmul, batched or
  not).
  """
  return _bf16_einsum_fwd(spec, a, b)[0]


def _bf16_einsum_fwd(spec, a, b):
  a, b = a.astype(jnp.bfloat16), b.astype(jnp.bfloat16)
  return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32), (a, b)


def _bf16_einsum_bwd(spec, operands, g):
  a, b = operands
  inputs, out = spec.split('->')
  a_spec, b_spec = inputs.split(',')
  g = g.astype(jnp.bfloat16)
  da = jnp.einsum(f'{out},{b_spec}->{a_spec}', g, b, preferred_element_type=jnp.float32)
  db = jnp.einsum(f'{out},{a_spec}->{b_spec}', g, a, preferred_element_type=jnp.float32)
  return da, db


bf16_einsum.defvjp(_bf16_einsum_fwd, _bf16_einsum_bwd)


Matmul = Callable[[str, jax.Array, jax.Array], jax.Array]


def matmul_for(dtype: str) -> Matmul:
  """The product every matmul of a model computing in dtype goes through:
  einsum(spec, a, b), float32 in and out either way."""
  return bf16_einsum if dtype == 'bfloat16' else jnp.einsum


def gelu(x: jax.Array) -> jax.Array:
  """The exact GELU, x * Phi(x), written as torch's nn.GELU() computes it.

  Not the tanh approximation (Flax's and Hugging Face GPT-2's default);
  jax.nn.gelu(approximate=False) computes the same function through erfc.
  """
  return 0.5 * x * (1.0 + jax.lax.erf(x * (1.0 / math.sqrt(2.0))))


def _c_proj_std(config: GPTConfig) -> float:
  # GPT-2 scales the init of each residual projection by 1/sqrt(2 * n_layer):
  # every block adds two of them to the residual stream
  return _STD / math.sqrt(2 * config.n_layer)


class Linear(nnx.Module):
  """y = x @ weight.T + bias, with weight (out, in) as torch stores it.

  Not nnx.Linear: its (in, out) kernel makes every forward dot contract the
  weight on its first dimension, a form XLA:CPU runs slower (see
  docs/performance.md). The product is the model's matmul (`matmul_for`); x,
  y and the weights stay float32.
  """

  def __init__(self, in_features: int, out_features: int, config: GPTConfig, *,
               rngs: nnx.Rngs, std: float = _STD):
    self.weight = nnx.Param(std * jax.random.normal(rngs.params(), (out_features, in_features)))
    self.bias = nnx.Param(jnp.zeros((out_features,))) if config.bias else None
    self.matmul = matmul_for(config.dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    y = self.matmul('...i,oi->...o', x, self.weight[...])
    return y if self.bias is None else y + self.bias[...]


class LayerNorm(nnx.Module):
  """LayerNorm with an optional bias, eps 1e-5, as nanoGPT's own LayerNorm.

  Not nnx.LayerNorm: that one multiplies the scale into rsqrt(var) before
  normalizing, which makes XLA:CPU materialize the scale broadcast to
  (B, T, C) on the main thread, once per LayerNorm per step.
  """

  def __init__(self, config: GPTConfig):
    self.weight = nnx.Param(jnp.ones((config.n_embd,)))
    self.bias = nnx.Param(jnp.zeros((config.n_embd,))) if config.bias else None

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x - jnp.mean(x, axis=-1, keepdims=True)
    x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + 1e-5)  # torch's eps
    x = x * self.weight[...]
    if self.bias is not None:
      x = x + self.bias[...]
    return x


class LayerCache(NamedTuple):
  """One layer's keys and values, (B, nh, block_size, hs) each."""
  k: jax.Array
  v: jax.Array


class KVCache(NamedTuple):
  """Every layer's keys and values of the tokens generated so far, so that
  each new token costs one position through the model, not the whole context
  (`GPT.init_cache`)."""
  layers: tuple[LayerCache, ...]
  length: jax.Array  # positions written so far: the next token's position


class CausalSelfAttention(nnx.Module):
  """Multi-head self-attention in which each position sees only itself and
  the positions before it.

  So one forward trains the next-token prediction at every position of a
  sequence at once, and a position's keys and values never change once
  computed: generation keeps them in a cache instead of recomputing them.
  """

  def __init__(self, config: GPTConfig, *, rngs: nnx.Rngs):
    self.n_head = config.n_head
    self.matmul = matmul_for(config.dtype)
    self.c_attn = Linear(config.n_embd, 3 * config.n_embd, config, rngs=rngs)  # q, k, v at once
    self.c_proj = Linear(config.n_embd, config.n_embd, config, rngs=rngs, std=_c_proj_std(config))
    self.attn_dropout = nnx.Dropout(config.dropout)
    self.resid_dropout = nnx.Dropout(config.dropout)

  def __call__(self, x: jax.Array, rngs: nnx.Rngs | None, cache: LayerCache | None = None,
               pos: jax.Array | int = 0) -> tuple[jax.Array, LayerCache | None]:
    """Attention of x (B, T, C), the tokens at positions pos..pos+T-1, each to
    itself and the positions before it. With a cache, x's keys and values are
    written into it at pos and the earlier ones read from it; without, x holds
    them all (pos 0)."""
    B, T, C = x.shape
    q, k, v = self._heads(x)  # (B, nh, T, hs)
    if cache is not None:
      k = jax.lax.dynamic_update_slice(cache.k, k.astype(cache.k.dtype), (0, 0, pos, 0))
      v = jax.lax.dynamic_update_slice(cache.v, v.astype(cache.v.dtype), (0, 0, pos, 0))
      cache = LayerCache(k, v)
    att = self.matmul('bhqd,bhkd->bhqk', q, k) * (1.0 / math.sqrt(C // self.n_head))  # (B, nh, T, keys)
    query_pos = pos + jnp.arange(T)[:, None]
    key_pos = jnp.arange(k.shape[2])[None, :]
    att = jnp.where(key_pos <= query_pos, att, -jnp.inf)  # causal: a cache's unwritten slots lie ahead too
    att = jax.nn.softmax(att, axis=-1)
    att = self.attn_dropout(att, deterministic=rngs is None, rngs=rngs)
    y = self.matmul('bhqk,bhkd->bhqd', att, v)  # (B, nh, T, hs)
    y = y.transpose(0, 2, 1, 3).reshape(B, T, C)  # heads side by side again
    return self.resid_dropout(self.c_proj(y), deterministic=rngs is None, rngs=rngs), cache

  def _heads(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Queries, keys and values of x (B, T, C), each (B, nh, T, hs)."""
    B, T, C = x.shape
    return tuple(a.reshape(B, T, self.n_head, C // self.n_head).transpose(0, 2, 1, 3)
                 for a in jnp.split(self.c_attn(x), 3, axis=-1))


class MLP(nnx.Module):
  """Each position on its own through a 4x wider hidden layer and GELU: where
  attention moves information between positions, this computes on it."""

  def __init__(self, config: GPTConfig, *, rngs: nnx.Rngs):
    self.c_fc = Linear(config.n_embd, 4 * config.n_embd, config, rngs=rngs)
    self.c_proj = Linear(4 * config.n_embd, config.n_embd, config, rngs=rngs, std=_c_proj_std(config))
    self.dropout = nnx.Dropout(config.dropout)

  def __call__(self, x: jax.Array, rngs: nnx.Rngs | None) -> jax.Array:
    x = gelu(residual_barrier(self.c_fc(x)))
    return self.dropout(self.c_proj(x), deterministic=rngs is None, rngs=rngs)


# remat=True: what backward keeps of each block. A matmul's output costs a
# matmul to recompute, so it is kept; the rest (LayerNorm, attention's (T, T)
# scores and probabilities, GELU, dropout masks) is recomputed from it. It
# cuts the working memory of nanoGPT's GPU recipe (6 x 384, block 256, batch
# 64) to a third at no cost in speed on a CPU; for the small seed model it
# saves little and costs a little: see docs/performance.md.
REMAT_POLICY = jax.checkpoint_policies.dots_with_no_batch_dims_saveable


class Block(nnx.Module):
  """A transformer block as GPT-2's: attention, then the MLP, each reading a
  LayerNorm of the residual stream x and adding its output to it. The
  additions carry the gradient to the early layers undiminished; the
  LayerNorm before each part, not after, gives it a normalized input however
  the stream grows, which keeps deep stacks trainable.
  """

  def __init__(self, config: GPTConfig, *, rngs: nnx.Rngs):
    self.ln_1 = LayerNorm(config)
    self.attn = CausalSelfAttention(config, rngs=rngs)
    self.ln_2 = LayerNorm(config)
    self.mlp = MLP(config, rngs=rngs)

  def __call__(self, x: jax.Array, rngs: nnx.Rngs | None, cache: LayerCache | None = None,
               pos: jax.Array | int = 0) -> tuple[jax.Array, LayerCache | None]:
    x = residual_barrier(x)
    y, cache = self.attn(self.ln_1(x), rngs, cache, pos)
    x = residual_barrier(x + y)
    return x + self.mlp(self.ln_2(x), rngs), cache


class GPT(nnx.Module):
  """nanoGPT's GPT: token and position embeddings, n_layer blocks, a final
  LayerNorm, and the lm_head, which is the token embedding itself (weight
  tying, as GPT-2: one matrix reads tokens in and writes them out, which
  saves GPT-2 small 38M parameters).

  One forward serves training and generation: given a KVCache it continues
  the tokens the cache holds, reading their keys and values from it, and
  returns it with the new tokens' added, as Flax's Gemma example does.
  """

  def __init__(self, config: GPTConfig, *, rngs: nnx.Rngs):
    self.config = config
    embed_init = nnx.initializers.normal(_STD)
    self.wte = nnx.Embed(config.vocab_size, config.n_embd, embedding_init=embed_init, rngs=rngs)
    self.wpe = nnx.Embed(config.block_size, config.n_embd, embedding_init=embed_init, rngs=rngs)
    self.drop = nnx.Dropout(config.dropout)
    self.h = nnx.List([Block(config, rngs=rngs) for _ in range(config.n_layer)])
    self.ln_f = LayerNorm(config)
    self.matmul = matmul_for(config.dtype)  # for the lm_head, x @ wte.T

  def __call__(self, idx: jax.Array, *, cache: KVCache | None = None, index: int | jax.Array | None = None,
               rngs: nnx.Rngs | None = None) -> tuple[jax.Array, KVCache | None]:
    """Returns (logits, cache): the next-token logits (B, T, vocab) after each
    token of idx (B, T), and the cache with idx's keys and values added.

    cache: idx continues the tokens the cache holds, from position
    cache.length on, and attends to them through it (cache.length + T <=
    block_size); None: idx starts at position 0, and no cache is returned.
    index: the logits after idx[:, index] alone (B, vocab), all that
    generation needs. rngs with a `dropout` stream enables dropout.
    """
    T = idx.shape[1]
    if T > self.config.block_size:
      raise ValueError(f'cannot forward a sequence of length {T}: block_size is {self.config.block_size}')
    pos = 0 if cache is None else cache.length
    x = self.wte(idx) + self.wpe(pos + jnp.arange(T))  # (B, T, C)
    x = self.drop(x, deterministic=rngs is None, rngs=rngs)
    block_call = nnx.remat(Block.__call__, policy=REMAT_POLICY) if self.config.remat else Block.__call__
    layer_caches = (None,) * len(self.h) if cache is None else cache.layers
    layers = []
    for block, layer_cache in zip(self.h, layer_caches):
      x, layer_cache = block_call(block, x, rngs, layer_cache, pos)
      layers.append(layer_cache)
    x = residual_barrier(x)
    if index is not None:
      x = jax.lax.dynamic_index_in_dim(x, index, axis=1, keepdims=False)  # (B, C)
    logits = self.matmul('...c,vc->...v', self.ln_f(x), self.wte.embedding[...])  # the tied lm_head
    return logits, None if cache is None else KVCache(tuple(layers), pos + T)

  def init_cache(self, batch_size: int) -> KVCache:
    """An empty cache for batch_size sequences of up to block_size tokens,
    in the compute dtype (the matmuls that read it round to it anyway)."""
    c = self.config
    shape = (batch_size, c.n_head, c.block_size, c.n_embd // c.n_head)
    return KVCache(tuple(LayerCache(jnp.zeros(shape, c.dtype), jnp.zeros(shape, c.dtype)) for _ in self.h),
                   jnp.zeros((), jnp.int32))

  def num_params(self, non_embedding: bool = True) -> int:
    """Parameter count, as nanoGPT reports it: the position embedding is not
    counted by default; the token embedding is, as it is also the lm_head."""
    params = nnx.state(self, nnx.Param)
    n = sum(p.size for p in jax.tree.leaves(params))
    return n - self.wpe.embedding.size if non_embedding else n


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Mean cross entropy over the targets that are not -1 (torch's ignore_index)."""
  valid = targets != -1
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(valid, targets, 0))
  return jnp.sum(jnp.where(valid, losses, 0.0)) / jnp.maximum(jnp.sum(valid), 1)
