"""Finetune GPT-2 XL on tiny Shakespeare in GPT-2 tokens (nanoGPT's
config/finetune_shakespeare.py). Needs the gpt2 extra and GPT-2's weights
(the Hugging Face cache, or --config.gpt2_dir=FOLDER), and a GPU's worth of
compute for gpt2-xl; on a CPU, try --config.init_from=gpt2 --config.block_size=256:

  pip install -e '.[gpt2]'
  python train.py --config=configs/finetune_shakespeare.py
  python sample.py --out_dir=out-shakespeare --start="To be or not"
"""

import time

from jaxgpt.config import base_config


def get_config():
  config = base_config()
  config.out_dir = 'out-shakespeare'
  config.eval_interval = 5
  config.eval_iters = 40
  config.wandb_project = 'shakespeare'
  config.wandb_run_name = f'ft-{time.time()}'

  config.dataset = 'shakespeare'  # prepared on first use, with GPT-2's tokenizer
  config.init_from = 'gpt2-xl'  # the largest GPT-2

  # only save checkpoints if the validation loss improves
  config.always_save_checkpoint = False

  # the number of examples per iter:
  # 1 batch_size * 32 grad_accum * 1024 tokens = 32,768 tokens/iter
  # shakespeare has 301,966 tokens, so 1 epoch ~= 9.2 iters
  config.batch_size = 1
  config.gradient_accumulation_steps = 32
  config.max_iters = 20

  # finetune at constant LR
  config.learning_rate = 3e-5
  config.decay_lr = False
  return config
