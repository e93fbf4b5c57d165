"""Run configuration: nanoGPT's train.py settings as an ml_collections ConfigDict.

`base_config()` holds every key of nanoGPT's train.py with its default (GPT-2
124M on OpenWebText); the recipes in configs/ override only what differs.
`validate` turns a bad value into one `ConfigError` that names the key and the
fix, and `model_config` freezes the model-shape keys into the typed
`GPTConfig` the model is built from.
"""

import dataclasses

import ml_collections


class JaxGPTError(Exception):
  """A user mistake (bad config, missing data, ...): printed as one line, no traceback."""


class ConfigError(JaxGPTError):
  pass


GPT2_MODELS = ('gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl')  # 124M, 350M, 774M, 1558M


@dataclasses.dataclass(frozen=True)
class GPTConfig:
  block_size: int = 1024
  vocab_size: int = 50304  # GPT-2's 50257 padded up to a multiple of 64
  n_layer: int = 12
  n_head: int = 12
  n_embd: int = 768
  dropout: float = 0.0
  bias: bool = True  # biases in Linear and LayerNorm, like GPT-2
  dtype: str = 'float32'  # compute dtype; parameters stay float32
  remat: bool = False  # recompute in backward all but each block's matmul outputs (model.REMAT_POLICY)


def base_config() -> ml_collections.ConfigDict:
  """nanoGPT's train.py defaults: GPT-2 (124M) on OpenWebText."""
  c = ml_collections.ConfigDict()
  # I/O
  c.out_dir = 'out'
  c.eval_interval = 2000
  c.log_interval = 1
  c.eval_iters = 200
  c.eval_only = False  # evaluate once at step 0, then exit
  c.eval_fixed = False  # True: the same eval batches at every evaluation (curves compare without noise)
  c.always_save_checkpoint = True  # save after every eval, not only when val improves
  c.init_from = 'scratch'  # 'scratch', 'resume' (from out_dir) or a GPT-2: 'gpt2', 'gpt2-medium', ...
  c.gpt2_dir = ''  # a local GPT-2 folder (Hugging Face layout); '' = the Hugging Face cache
  # wandb logging
  c.wandb_log = False
  c.wandb_project = 'owt'
  c.wandb_run_name = 'gpt2'
  # data
  c.dataset = 'openwebtext'
  c.gradient_accumulation_steps = 5 * 8  # micro-batches per optimizer step
  c.batch_size = 12  # micro-batch size
  c.block_size = 1024
  # model
  c.n_layer = 12
  c.n_head = 12
  c.n_embd = 768
  c.dropout = 0.0
  c.bias = False
  # AdamW
  c.learning_rate = 6e-4
  c.max_iters = 600000
  c.weight_decay = 1e-1
  c.beta1 = 0.9
  c.beta2 = 0.95
  c.grad_clip = 1.0  # clip the global gradient norm at this value; 0 disables
  # learning-rate schedule: linear warmup, cosine decay to min_lr
  c.decay_lr = True
  c.warmup_iters = 2000
  c.lr_decay_iters = 600000  # ~= max_iters per Chinchilla
  c.min_lr = 6e-5  # ~= learning_rate / 10 per Chinchilla
  # system
  c.device = 'cpu'  # 'cpu', or 'gpu' / 'cuda' for a GPU
  c.dtype = 'float32'  # 'float32' or 'bfloat16' (compute dtype; weights stay float32)
  c.compile = True  # True: the whole train step is one XLA program
  c.remat = True  # backward recomputes all but the matmul outputs: a third of the memory, as fast (not in nanoGPT)
  c.check_memory = True  # estimate the run's memory before it starts; stop if the machine has less
  c.fsdp = False  # with several devices: split params and optimizer state across them (else replicated)
  # several processes (python -m jaxgpt.launch sets these on one host; on several hosts, set them on each)
  c.coordinator_address = ''  # HOST:PORT of process 0
  c.num_processes = 1
  c.process_id = 0
  c.coordinator_timeout = 300  # seconds to wait for the other processes (jax's default)
  # reproducibility (not in nanoGPT, which seeds torch with 1337)
  c.seed = 1337
  return c


_POSITIVE = ('eval_interval', 'log_interval', 'eval_iters', 'gradient_accumulation_steps',
             'batch_size', 'block_size', 'n_layer', 'n_head', 'n_embd')
_NON_NEGATIVE = ('max_iters', 'weight_decay', 'grad_clip', 'warmup_iters', 'min_lr')
_CHOICES = {
    'init_from': ('scratch', 'resume') + GPT2_MODELS,
    'device': ('cpu', 'gpu', 'cuda'),
    'dtype': ('float32', 'bfloat16'),
}


def validate(c: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first bad key and how to fix it."""
  for key in _POSITIVE:
    if c[key] < 1:
      raise ConfigError(f'{key}={c[key]} must be >= 1: pass --config.{key}=<a positive integer>')
  for key in _NON_NEGATIVE:
    if c[key] < 0:
      raise ConfigError(f'{key}={c[key]} must be >= 0')
  for key, choices in _CHOICES.items():
    if c[key] not in choices:
      raise ConfigError(f'{key}={c[key]!r} is not supported: choose one of {", ".join(choices)}')
  if c.n_embd % c.n_head:
    raise ConfigError(f'n_embd={c.n_embd} is not divisible by n_head={c.n_head}: '
                      f'pick n_embd a multiple of n_head (e.g. --config.n_embd={c.n_head * max(1, c.n_embd // c.n_head)})')
  if not 0.0 <= c.dropout < 1.0:
    raise ConfigError(f'dropout={c.dropout} must be in [0, 1)')
  if not c.learning_rate > 0:
    raise ConfigError(f'learning_rate={c.learning_rate} must be > 0')
  if c.decay_lr and c.min_lr > c.learning_rate:
    raise ConfigError(f'min_lr={c.min_lr} must not exceed learning_rate={c.learning_rate}')
  for key in ('beta1', 'beta2'):
    if not 0.0 <= c[key] < 1.0:
      raise ConfigError(f'{key}={c[key]} must be in [0, 1)')
  if c.decay_lr and c.lr_decay_iters <= c.warmup_iters:
    raise ConfigError(f'lr_decay_iters={c.lr_decay_iters} must be greater than warmup_iters={c.warmup_iters} '
                      '(or pass --config.decay_lr=False for a constant learning rate)')


def check_dataset_name(name: str, flag: str) -> None:
  """A data set is a folder of data/, named plainly: nothing is read or
  written outside data/. flag: how the user gave it (`--config.dataset`)."""
  if name in ('', '.', '..') or '/' in name or '\\' in name:
    raise ConfigError(f'{flag}={name!r} is not a data set name: give the name of a folder in data/, without '
                      f'"/" or "..", e.g. {flag}=shakespeare_char')


def model_config(c: ml_collections.ConfigDict, vocab_size: int) -> GPTConfig:
  return GPTConfig(block_size=c.block_size, vocab_size=vocab_size, n_layer=c.n_layer,
                   n_head=c.n_head, n_embd=c.n_embd, dropout=c.dropout, bias=c.bias,
                   dtype=c.dtype, remat=c.remat)
