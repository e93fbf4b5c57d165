"""Autoregressive generation, as nanoGPT's GPT.generate, with a key/value cache.

While the sequence fits in block_size, each new token is one position through
the model (`GPT.decode`), the keys and values of earlier positions read from
the cache. Beyond block_size the context is cropped to the last block_size
tokens as nanoGPT does, which moves every token's position, so each further
token recomputes the whole window (`GPT.logits_at`), as nanoGPT does for
every token. All model calls are jitted once per shape.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from rich.progress import track

from jaxgpt.config import GPTConfig


def sample_next(logits: jax.Array, key: jax.Array, temperature: float, top_k: int | None) -> jax.Array:
  """One token per row of logits (B, vocab): scaled by 1/temperature, cut to
  the top_k most likely, then drawn from the softmax."""
  logits = logits / temperature
  if top_k is not None:
    kth_largest = jax.lax.top_k(logits, min(top_k, logits.shape[-1]))[0][:, -1:]
    logits = jnp.where(logits < kth_largest, -jnp.inf, logits)
  return jax.random.categorical(key, logits, axis=-1)


class Generator:

  def __init__(self, graphdef: nnx.GraphDef, params, config: GPTConfig, *,
               temperature: float = 1.0, top_k: int | None = None):
    self.params = params
    self.block_size = config.block_size
    def prefill(p, idx):
      model = nnx.merge(graphdef, p)
      return model.decode(idx, model.init_cache(idx.shape[0]), 0)

    self._prefill = jax.jit(prefill)
    self._decode = jax.jit(lambda p, idx, cache, pos: nnx.merge(graphdef, p).decode(idx, cache, pos))
    self._window = jax.jit(lambda p, idx, index: nnx.merge(graphdef, p).logits_at(idx, index))
    self._sample = jax.jit(functools.partial(sample_next, temperature=temperature, top_k=top_k))

  def __call__(self, prompt: np.ndarray, max_new_tokens: int, seed: int, *,
               use_cache: bool = True, progress: bool = False) -> np.ndarray:
    """prompt (B, T) token ids -> (B, T + max_new_tokens). The same seed gives
    the same tokens, with or without the cache. progress: a progress bar
    (rich) while it runs, gone when done."""
    batch, length = prompt.shape
    tokens = np.zeros((batch, length + max_new_tokens), np.int32)
    tokens[:, :length] = prompt
    key = jax.random.key(seed)
    cache = None
    for i in track(range(max_new_tokens), description='sampling', transient=True, disable=not progress):
      if use_cache and length <= self.block_size:
        if cache is None:
          logits, cache = self._prefill(self.params, tokens[:, :length])
        else:
          logits, cache = self._decode(self.params, tokens[:, length - 1:length], cache, length - 1)
      else:
        start = max(0, length - self.block_size)
        window = np.zeros((batch, self.block_size), np.int32)  # zeros past the context are ignored
        window[:, :length - start] = tokens[:, start:length]
        logits = self._window(self.params, window, length - start - 1)
      tokens[:, length] = np.asarray(self._sample(logits, jax.random.fold_in(key, i)))
      length += 1
    return tokens
