"""The optimizer: nanoGPT's configure_optimizers and get_lr, as an optax chain,
and Muon (optimizer='muon'), which takes fewer steps to a given loss.

Muon (Keller Jordan, 2024: modded-nanogpt's speedrun optimizer) moves each
weight matrix of the blocks by its momentum orthogonalized: the momentum's
singular values pushed toward 1 by a few Newton-Schulz iterations, so that
every direction of the matrix learns at the same rate. The embeddings (wte
is the lm_head too), LayerNorm weights and biases are AdamW's, as in
modded-nanogpt.
"""

import jax
import jax.numpy as jnp
import ml_collections
import optax


def lr_schedule(c: ml_collections.ConfigDict) -> optax.Schedule:
  """nanoGPT's get_lr: lr * (it + 1) / (warmup_iters + 1) while warming up,
  then cosine from learning_rate down to min_lr at lr_decay_iters, then min_lr.
  As nanoGPT: with lr_decay_iters before the end of warmup there is no cosine
  (the warmup, then min_lr), and a min_lr above learning_rate makes the cosine
  rise. (lr_decay_iters == warmup_iters, where nanoGPT divides by zero at
  warmup_iters, is refused by config.validate when the run gets there.)

  Not optax.warmup_cosine_decay_schedule: that one warms up from 0 to lr at
  warmup_iters, one step behind nanoGPT's.
  """
  if not c.decay_lr:
    return optax.constant_schedule(c.learning_rate)
  # written out rather than optax.linear_schedule, whose init + (end - init) * t
  # cancels in float32 at the first steps (1.7e-6 relative error vs nanoGPT)
  lr, warmup_iters = c.learning_rate, c.warmup_iters

  def warmup(it):
    return lr * (it + 1) / (warmup_iters + 1)

  if c.lr_decay_iters <= c.warmup_iters:  # nanoGPT: past lr_decay_iters as soon as warmup ends (equal: see validate)
    return optax.join_schedules([warmup, optax.constant_schedule(c.min_lr)], boundaries=[c.warmup_iters])
  # lr * ((1 - alpha) * coeff + alpha) is nanoGPT's min_lr + coeff * (lr - min_lr), for any alpha
  cosine = optax.cosine_decay_schedule(
      init_value=c.learning_rate,
      decay_steps=c.lr_decay_iters - c.warmup_iters,
      alpha=c.min_lr / c.learning_rate)  # cosine ends at min_lr, and stays there
  return optax.join_schedules([warmup, cosine], boundaries=[c.warmup_iters])


def decay_mask(params):
  """Weight decay on matrices and embeddings only (tensors of 2+ dims), not on
  biases and LayerNorm weights, as nanoGPT's configure_optimizers does."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


# Newton-Schulz's quintic coefficients, tuned for the fewest iterations (Keller Jordan's, optax.contrib.muon's default)
NEWTON_SCHULZ_COEFFS = (3.4445, -4.7750, 2.0315)
NEWTON_SCHULZ_STEPS = 5


def orthogonalized(g: jax.Array) -> jax.Array:
  """g (out, in) with its singular values brought near 1 (those not tiny to
  ~0.7-1.2: enough for Muon), by Newton-Schulz iterations on the wide
  orientation of g, scaled by sqrt(max(1, out / in)) as Muon's reference
  scales its updates.

  optax.contrib.muon computes the same, but vmapped over a batch of one
  matrix, which XLA:CPU runs on slower dots: its whole update takes 1.7x as
  long as this one's (docs/performance.md)."""
  a, b, c = NEWTON_SCHULZ_COEFFS
  x = g / (jnp.linalg.norm(g) + 1e-7)  # singular values at most 1, where the iteration converges
  wide = x.T if x.shape[0] > x.shape[1] else x  # x x^T is then the smaller square
  for _ in range(NEWTON_SCHULZ_STEPS):
    gram = wide @ wide.T
    wide = a * wide + (b * gram + c * gram @ gram) @ wide
  x = wide.T if x.shape[0] > x.shape[1] else wide
  return x * jnp.sqrt(max(1.0, g.shape[0] / g.shape[1]))


def muon_labels(params):
  """'muon' for the blocks' weight matrices, 'adamw' for the rest: the
  embeddings, and the vectors (LayerNorm weights, biases), which Muon's
  orthogonalization does not apply to."""
  def label(path, p) -> str:
    return 'muon' if p.ndim == 2 and path[0].key == 'h' else 'adamw'
  return jax.tree_util.tree_map_with_path(label, params)


def muon(c: ml_collections.ConfigDict, schedule: optax.Schedule) -> optax.GradientTransformation:
  """Muon for the blocks' matrices, at muon_learning_rate on the schedule's
  shape, without weight decay (as Muon's reference); AdamW for the rest,
  as nanoGPT's."""
  muon_schedule = lambda it: schedule(it) * (c.muon_learning_rate / c.learning_rate)
  matrices = optax.chain(
      optax.trace(decay=c.muon_momentum, nesterov=True),
      optax.stateless_with_tree_map(lambda g, _: orthogonalized(g)),
      optax.scale_by_learning_rate(muon_schedule))
  rest = optax.adamw(schedule, b1=c.beta1, b2=c.beta2, eps=1e-8, weight_decay=c.weight_decay, mask=decay_mask)
  return optax.partition({'muon': matrices, 'adamw': rest}, muon_labels)


def make_optimizer(c: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Global-norm clip (none when grad_clip is 0), then AdamW with nanoGPT's
  schedule, betas, eps and decay mask, or Muon (optimizer='muon')."""
  schedule = lr_schedule(c)
  if c.optimizer == 'muon':
    update = muon(c, schedule)
  else:
    update = optax.adamw(schedule, b1=c.beta1, b2=c.beta2, eps=1e-8, weight_decay=c.weight_decay, mask=decay_mask)
  if c.grad_clip == 0:
    return update
  return optax.chain(optax.clip_by_global_norm(c.grad_clip), update)
