"""The CPU speedrun: the fastest way found to a model as good as nanoGPT's seed
command trains (its full val split's loss at a context of 64 tokens), on the
same data and the same architecture, so that `ckpt_pt export` and nanoGPT's
own sample.py still load it:

  python train.py --config=configs/shakespeare_char_speedrun.py

It stops at the first evaluation whose loss over the whole val split
(windows of 64 tokens) reaches target_val_loss, or at time_limit, keeping the
best checkpoint. The records, their commands and the levers measured are in
the README and docs/performance.md.
"""

from jaxgpt.config import base_config

# nanoGPT's seed command's model, evaluated by `python -m jaxgpt.evaluate` on its ckpt.pt
NANOGPT_SEED_VAL_LOSS = 1.8983


def get_config():
  config = base_config()
  config.out_dir = 'out-shakespeare-char-speedrun'
  config.dataset = 'shakespeare_char'
  config.wandb_project = 'shakespeare-char'
  config.wandb_run_name = 'speedrun'

  # the seed command's model: 4 layers, 4 heads, 128 wide, a context of 64
  config.n_layer = 4
  config.n_head = 4
  config.n_embd = 128
  config.block_size = 64
  config.dropout = 0.0
  config.remat = False  # small activations: recomputing them would cost time

  # bfloat16 matmuls: the faster step, the same losses to ~1e-3
  config.dtype = 'bfloat16'
  # Muon for the blocks' matrices: fewer steps to the same loss than AdamW
  config.optimizer = 'muon'
  config.muon_learning_rate = 0.04  # 0.02 and 0.06 ended higher (docs/performance.md)
  config.learning_rate = 3e-3  # AdamW's, for the embeddings and LayerNorm weights
  config.min_lr = 3e-4
  config.beta2 = 0.99
  config.weight_decay = 0.1
  # batch 32 reaches the target in fewer seconds than 12, 16 or 24: its step
  # splits over the cores, and Muon's cost a step is the same at any batch
  config.batch_size = 32
  config.gradient_accumulation_steps = 1
  config.warmup_iters = 10  # Muon needs little warm-up: 10 ended lower than 20 or 50
  # every seed tried ends ~0.04 below the target; 250 came within 0.01 of it, or above
  config.max_iters = 280
  config.lr_decay_iters = 280

  # one evaluation, of the whole val split, at the end: it costs ~0.7 s, and
  # before the learning rate has decayed the loss is far above the target
  config.full_val_context = 64
  config.target_val_loss = NANOGPT_SEED_VAL_LOSS
  config.eval_interval = 280
  config.eval_start = 280
  config.eval_iters = 5  # the train loss's estimate
  config.log_interval = 50
  config.always_save_checkpoint = False
  config.time_limit = 120.0  # seconds from the start: a machine slower than expected still ends
  return config
