"""nanoGPT in PyTorch beside jaxgpt: its own model.py, imported from a nanoGPT
checkout, and around it the train step and the training loop of its train.py
as jaxgpt measures them. Needs the torch extra.

jaxgpt carries no copy of nanoGPT's code. `checkout()` imports model.py from
the folder named by --nanogpt_dir, else by $JAXGPT_NANOGPT_DIR, else from
../nanoGPT (where `git clone https://github.com/karpathy/nanoGPT` puts it,
run beside this repository). The ckpt.pt tests load into its GPT;
`python -m jaxgpt.bench --nanogpt` times its train step by turns with
jaxgpt's.

  python -m jaxgpt.nanogpt_torch --config=configs/shakespeare_char_gpu.py --config.max_iters=4 \
      --config.eval_iters=1 [--nanogpt_dir=../nanoGPT]

runs nanoGPT's training loop as its train.py does on the CPU (compile=False,
float32): the same recipes and overrides as train.py, the same data set, its
batches, evaluations, AdamW and log lines. It is there to be measured (`python
-m jaxgpt.bench --memory` compares its peak memory with jaxgpt's), not to
train with: it saves no checkpoint and logs to no wandb. It leaves out
jaxgpt's process set-up (jaxgpt/runtime.py: malloc settings among them),
which nanoGPT's train.py has not either.
"""

import argparse
import functools
import importlib.util
import math
import os
import pathlib
import sys
import time
import types

import ml_collections
import numpy as np
import torch

from jaxgpt import cli, data
from jaxgpt.errors import JaxGPTError

NANOGPT_DIR_ENV = 'JAXGPT_NANOGPT_DIR'
NANOGPT_URL = 'https://github.com/karpathy/nanoGPT'


def find_model_py(nanogpt_dir: str | os.PathLike | None = None) -> pathlib.Path:
  """model.py of the nanoGPT checkout in nanogpt_dir, else in $JAXGPT_NANOGPT_DIR,
  else in ../nanoGPT; a JaxGPTError when it is not there."""
  folder = nanogpt_dir or os.environ.get(NANOGPT_DIR_ENV) or '../nanoGPT'
  path = pathlib.Path(folder).expanduser().resolve() / 'model.py'
  if not path.is_file():
    raise JaxGPTError(f"nanoGPT's model.py not found at {path}: clone {NANOGPT_URL} into {path.parent}, or name "
                      f'a nanoGPT checkout with --nanogpt_dir=PATH or {NANOGPT_DIR_ENV}=PATH')
  return path


def checkout(nanogpt_dir: str | os.PathLike | None = None) -> types.ModuleType:
  """nanoGPT's model.py (GPT, GPTConfig, ...) as a module, from the checkout find_model_py finds."""
  return import_model_py(find_model_py(nanogpt_dir))


@functools.cache  # one module per file: the same GPT class at every call
def import_model_py(path: pathlib.Path) -> types.ModuleType:
  # by its path and under a private name, neither in sys.modules nor with its folder on
  # sys.path: nothing else of the checkout (its train.py, configurator.py) becomes importable
  spec = importlib.util.spec_from_file_location('nanogpt_model', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def model_and_optimizer(nanogpt: types.ModuleType, c: ml_collections.ConfigDict,
                        vocab_size: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
  """nanoGPT's GPT of the run config c, initialised as its __init__ does from
  torch's seed, and its AdamW as train.py sets it up on the CPU (not fused)."""
  model = nanogpt.GPT(nanogpt.GPTConfig(block_size=c.block_size, vocab_size=vocab_size, n_layer=c.n_layer,
                                        n_head=c.n_head, n_embd=c.n_embd, dropout=c.dropout, bias=c.bias))
  return model, model.configure_optimizers(c.weight_decay, c.learning_rate, (c.beta1, c.beta2), 'cpu')


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               grad_clip: float) -> float:
  """One iteration of nanoGPT's train.py (one micro-batch, no scaler): forward,
  backward, clipping, AdamW; returns the loss, as its log line reads it."""
  _, loss = model(x, y)
  loss.backward()
  if grad_clip != 0.0:
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
  optimizer.step()
  optimizer.zero_grad(set_to_none=True)
  return loss.item()


# -- nanoGPT's train.py, for measuring ------------------------------------------


def get_lr(c: ml_collections.ConfigDict, it: int) -> float:
  """nanoGPT's learning rate schedule: linear warmup, then cosine decay to min_lr."""
  if it < c.warmup_iters:
    return c.learning_rate * (it + 1) / (c.warmup_iters + 1)
  if it > c.lr_decay_iters:
    return c.min_lr
  decay_ratio = (it - c.warmup_iters) / (c.lr_decay_iters - c.warmup_iters)
  coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
  return c.min_lr + coeff * (c.learning_rate - c.min_lr)


def train(c: ml_collections.ConfigDict, nanogpt: types.ModuleType) -> None:
  """nanoGPT's training loop with its model.py on the CPU (no DDP, no gradient
  scaler, no checkpoints), iterations 0..max_iters, with its log lines."""
  if c.device != 'cpu':
    raise JaxGPTError(f"nanoGPT's loop here runs on the CPU only: pass --config.device=cpu, not {c.device}")
  folder = data.ensure_prepared(c.dataset, c.gpt2_dir)
  vocab = data.load_vocab(folder)
  torch.manual_seed(1337)
  model, optimizer = model_and_optimizer(nanogpt, c, data.GPT2_VOCAB_SIZE if vocab is None else len(vocab))

  def get_batch(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    # a memmap afresh each call: nanoGPT's guard against a memmap that leaks
    tokens = np.memmap(folder / f'{split}.bin', dtype=np.uint16, mode='r')
    ix = torch.randint(len(tokens) - c.block_size, (c.batch_size,))
    x = torch.stack([torch.from_numpy((tokens[i:i + c.block_size]).astype(np.int64)) for i in ix])
    y = torch.stack([torch.from_numpy((tokens[i + 1:i + 1 + c.block_size]).astype(np.int64)) for i in ix])
    return x, y

  @torch.no_grad()
  def estimate_loss() -> dict[str, float]:
    model.eval()
    out = {}
    for split in ('train', 'val'):
      losses = [model(x, y)[1].item() for x, y in (get_batch(split) for _ in range(c.eval_iters))]
      out[split] = sum(losses) / len(losses)
    model.train()
    return out

  x, y = get_batch('train')
  t0 = time.time()
  iter_num = 0
  while True:
    for group in optimizer.param_groups:
      group['lr'] = get_lr(c, iter_num) if c.decay_lr else c.learning_rate
    if iter_num % c.eval_interval == 0:
      losses = estimate_loss()
      print(f'step {iter_num}: train loss {losses["train"]:.4f}, val loss {losses["val"]:.4f}', flush=True)
    if iter_num == 0 and c.eval_only:
      break
    for _ in range(c.gradient_accumulation_steps):
      loss = model(x, y)[1] / c.gradient_accumulation_steps
      x, y = get_batch('train')  # nanoGPT's prefetch: the next batch, before backward
      loss.backward()
    if c.grad_clip != 0.0:
      torch.nn.utils.clip_grad_norm_(model.parameters(), c.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)  # its memory is free until the next backward
    t1 = time.time()
    dt, t0 = t1 - t0, t1
    if iter_num % c.log_interval == 0:
      print(f'iter {iter_num}: loss {loss.item() * c.gradient_accumulation_steps:.4f}, time {dt * 1000:.2f}ms',
            flush=True)
    iter_num += 1
    if iter_num > c.max_iters:
      break


def main(argv: list[str]) -> int:
  # --nanogpt_dir is this module's own flag; the rest is train.py's command line
  parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
  parser.add_argument('--nanogpt_dir')
  args, config_argv = parser.parse_known_args(argv[1:])
  try:
    train(cli.parse_config(argv[:1] + config_argv), checkout(args.nanogpt_dir))
  except JaxGPTError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv))
