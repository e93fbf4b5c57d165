"""A baby GPT on tiny Shakespeare, characters as tokens, sized for a CPU:
nanoGPT's advice for a laptop (its README's CPU run, the seed command). It
trains in about two minutes on 2 cores, to a val loss near 1.89:

  python train.py --config=configs/shakespeare_char.py --config.device=cpu

configs/shakespeare_char_gpu.py is nanoGPT's GPU recipe on the same data.
"""

from jaxgpt.config import base_config


def get_config():
  config = base_config()
  config.out_dir = 'out-shakespeare-char'
  # evaluate often: a small model on a small data set overfits
  config.eval_interval = 250
  config.eval_iters = 20  # 200 batches an evaluation would cost more than the 250 iterations between
  # an iteration takes milliseconds: a line every 10 is a few a second (a
  # terminal also shows a progress bar); nanoGPT's seed command logs every one
  config.log_interval = 10
  # only save when val improves
  config.always_save_checkpoint = False
  # one XLA program a step, its buffers donated: the fastest step, with the
  # same losses as compile=False (two programs)
  config.compile = True
  # the step's activations are small beside the process's memory: recomputing
  # them in backward would cost time and save little (docs/performance.md)
  config.remat = False

  config.wandb_project = 'shakespeare-char'
  config.wandb_run_name = 'mini-gpt'

  config.dataset = 'shakespeare_char'
  config.gradient_accumulation_steps = 1
  config.batch_size = 12
  config.block_size = 64  # context of up to 64 previous characters

  # a baby GPT, smaller still
  config.n_layer = 4
  config.n_head = 4
  config.n_embd = 128
  config.dropout = 0.0  # 2000 iterations are too few to overfit

  config.learning_rate = 1e-3  # a baby network can take a larger step
  config.max_iters = 2000
  config.lr_decay_iters = 2000  # usually == max_iters
  config.min_lr = 1e-4  # learning_rate / 10
  config.beta2 = 0.99  # a little larger: few tokens per iteration

  config.warmup_iters = 100
  return config
