"""The optimizer: nanoGPT's configure_optimizers and get_lr, as an optax chain."""

import jax
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


def make_optimizer(c: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Global-norm clip (none when grad_clip is 0), then AdamW with nanoGPT's
  schedule, betas, eps and decay mask."""
  adamw = optax.adamw(lr_schedule(c), b1=c.beta1, b2=c.beta2, eps=1e-8,
                      weight_decay=c.weight_decay, mask=decay_mask)
  if c.grad_clip == 0:
    return adamw
  return optax.chain(optax.clip_by_global_norm(c.grad_clip), adamw)
