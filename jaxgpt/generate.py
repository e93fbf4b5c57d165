"""Autoregressive generation, as nanoGPT's GPT.generate, with a key/value cache.

While the sequence fits in block_size, each new token is one position through
the model, the keys and values of earlier positions read from the cache
(`GPT.init_cache`). Beyond block_size the context is cropped to the last
block_size tokens as nanoGPT does, which moves every token's position, so
each further token recomputes the whole window without a cache, as nanoGPT
does for every token. All model calls are jitted once per shape;
`Generator.compile` builds a generation's programs ahead of its first token,
so that the generation itself can be timed alone.

`Generator.stream` hands out the tokens after each new one, so a caller
stopped midway (Ctrl-C) keeps what was drawn; `generation_bytes` is what a
generation holds beyond the weights, known before anything is allocated.
"""

import contextlib
import functools
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
import rich
from flax import nnx
from rich.progress import track

from jaxgpt.model import GPTConfig


def sample_next(logits: jax.Array, key: jax.Array, temperature: float, top_k: int | None) -> jax.Array:
  """One token per row of logits (B, vocab): scaled by 1/temperature, cut to
  the top_k most likely, then drawn from the softmax. Temperature 0 is the
  limit of a colder and colder softmax: the most likely token (greedy)."""
  if temperature == 0:  # nanoGPT would divide by zero
    return logits.argmax(axis=-1)
  # the softmax is the same after subtracting the max; without it a tiny
  # temperature makes every positive logit +inf, and the draw loses the argmax
  logits = (logits - logits.max(axis=-1, keepdims=True)) / temperature
  if top_k is not None:
    kth_largest = jax.lax.top_k(logits, min(top_k, logits.shape[-1]))[0][:, -1:]
    logits = jnp.where(logits < kth_largest, -jnp.inf, logits)
  return jax.random.categorical(key, logits, axis=-1)


class Generator:
  """Draws tokens from a model's weights, as nanoGPT's GPT.generate: its
  jitted programs (the prompt into the cache, one token through the cache, a
  whole window without it) are built once and kept across calls."""

  def __init__(self, graphdef: nnx.GraphDef, params, config: GPTConfig, *,
               temperature: float = 1.0, top_k: int | None = None):
    self.params = params
    self.block_size = config.block_size
    self._committed = any(getattr(leaf, 'committed', False) for leaf in jax.tree.leaves(params))
    def prefill(p, idx):
      model = nnx.merge(graphdef, p)
      return model(idx, cache=model.init_cache(idx.shape[0]), index=idx.shape[1] - 1)

    self._prefill = jax.jit(prefill)
    self._decode = jax.jit(lambda p, idx, cache: nnx.merge(graphdef, p)(idx, cache=cache, index=0))
    self._window = jax.jit(lambda p, idx, index: nnx.merge(graphdef, p)(idx, index=index)[0])
    self._sample = jax.jit(functools.partial(sample_next, temperature=temperature, top_k=top_k))

  def __call__(self, prompt: np.ndarray, max_new_tokens: int, seed: int, *,
               use_cache: bool = True, progress: bool = False) -> np.ndarray:
    """prompt (B, T) token ids -> (B, T + max_new_tokens). The same seed gives
    the same tokens, with or without the cache. progress: a progress bar
    (rich) while it runs, gone when done."""
    tokens = prompt
    for tokens in self.stream(prompt, max_new_tokens, seed, use_cache=use_cache, progress=progress):
      pass
    return tokens

  def compile(self, prompt: np.ndarray, max_new_tokens: int, *, use_cache: bool = True,
              progress: bool = False) -> None:
    """Compiles the programs that stream(prompt, max_new_tokens, use_cache)
    calls, before it runs: it then compiles nothing, and its time is the
    generation's alone (jax keeps a program compiled ahead for its jitted
    function's calls of the same shapes). progress: a spinner saying
    'compiling' while it runs, gone when done."""
    batch, length = prompt.shape
    last = length + max_new_tokens - 1  # the longest context a token is drawn from
    with rich.get_console().status('compiling') if progress else contextlib.nullcontext():
      if self._cached(length, use_cache):
        logits, cache = self._outputs(self._prefill.lower(self.params, prompt).compile())
        if max_new_tokens > 1 and self._cached(length + 1, use_cache):
          self._decode.lower(self.params, prompt[:, :1], cache).compile()
      if not self._cached(last, use_cache):
        window = np.zeros((batch, self.block_size), np.int32)
        logits = self._outputs(self._window.lower(self.params, window, 0).compile())
      self._sample.lower(logits, jax.random.fold_in(jax.random.key(0), 0)).compile()  # the key made as stream's

  def _outputs(self, program: jax.stages.Compiled):
    """The types of a compiled program's outputs as its arrays will have
    them: the next program's inputs. jax commits outputs to their devices
    when an input is committed (weights read from a checkpoint sit on its
    mesh), and then their placement is part of their type."""
    def output_type(info: jax.ShapeDtypeStruct, sharding: jax.sharding.Sharding) -> jax.ShapeDtypeStruct:
      return jax.ShapeDtypeStruct(info.shape, info.dtype, sharding=sharding if self._committed else None)
    return jax.tree.map(output_type, program.out_info, program.output_shardings)

  def _cached(self, length: int, use_cache: bool) -> bool:
    """Whether the token after `length` tokens is drawn through the cache (else from a whole window)."""
    return use_cache and length <= self.block_size

  def stream(self, prompt: np.ndarray, max_new_tokens: int, seed: int, *,
             use_cache: bool = True, progress: bool = False) -> Iterator[np.ndarray]:
    """As __call__, yielding (B, T + n) after the n-th new token: views of one
    buffer, each whole when handed out, so a caller interrupted midway holds
    every token drawn before."""
    batch, length = prompt.shape
    tokens = np.zeros((batch, length + max_new_tokens), np.int32)
    tokens[:, :length] = prompt
    key = jax.random.key(seed)
    cache = None
    for i in track(range(max_new_tokens), description='sampling', transient=True, disable=not progress):
      if self._cached(length, use_cache):
        if cache is None:
          logits, cache = self._prefill(self.params, tokens[:, :length])
        else:
          logits, cache = self._decode(self.params, tokens[:, length - 1:length], cache)
      else:
        start = max(0, length - self.block_size)
        window = np.zeros((batch, self.block_size), np.int32)  # zeros past the context are ignored
        window[:, :length - start] = tokens[:, start:length]
        logits = self._window(self.params, window, length - start - 1)
      tokens[:, length] = np.asarray(self._sample(logits, jax.random.fold_in(key, i)))
      length += 1
      yield tokens[:, :length]


def generation_bytes(config: GPTConfig, batch: int, length: int) -> int:
  """The memory a Generator holds beyond the weights, generating `batch` rows
  of `length` tokens (prompt included): the int32 token buffer, every layer's
  keys and values, and one forward of a whole window (the largest call): a
  layer's attention scores, the MLP's hidden layer and the logits."""
  itemsize = jnp.dtype(config.dtype).itemsize
  token_buffer = batch * length * 4
  cache = config.n_layer * 2 * batch * config.block_size * config.n_embd * itemsize
  scores = batch * config.n_head * config.block_size ** 2 * 4  # float32 softmax
  mlp = batch * config.block_size * 4 * config.n_embd * 4
  logits = batch * config.vocab_size * 4
  return token_buffer + cache + scores + mlp + logits
