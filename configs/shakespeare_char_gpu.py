"""A baby GPT on tiny Shakespeare, characters as tokens: nanoGPT's
config/train_shakespeare_char.py, value for value, the recipe for a GPU:

  python train.py --config=configs/shakespeare_char_gpu.py --config.device=gpu

On a CPU it runs too, but its 5000 iterations of a 6 x 384 model on 256
tokens take most of a day (docs/performance.md): configs/shakespeare_char.py
is the CPU recipe.
"""

from jaxgpt.config import base_config


def get_config():
  config = base_config()
  config.out_dir = 'out-shakespeare-char'
  # evaluate often: a small model on a small data set overfits
  config.eval_interval = 250
  config.eval_iters = 200
  config.log_interval = 10
  # only save when val improves
  config.always_save_checkpoint = False

  config.wandb_project = 'shakespeare-char'
  config.wandb_run_name = 'mini-gpt'

  config.dataset = 'shakespeare_char'
  config.gradient_accumulation_steps = 1
  config.batch_size = 64
  config.block_size = 256  # context of up to 256 previous characters

  # baby GPT
  config.n_layer = 6
  config.n_head = 6
  config.n_embd = 384
  config.dropout = 0.2

  config.learning_rate = 1e-3  # a baby network can take a larger step
  config.max_iters = 5000
  config.lr_decay_iters = 5000  # usually == max_iters
  config.min_lr = 1e-4  # learning_rate / 10
  config.beta2 = 0.99  # a little larger: few tokens per iteration

  config.warmup_iters = 100
  return config
