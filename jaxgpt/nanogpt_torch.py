"""nanoGPT's model.py (github.com/karpathy/nanoGPT, MIT licence) in PyTorch, and
its train.py's loop: the same modules, names and forward pass, so a state_dict
that loads here with strict=True loads into nanoGPT's GPT. The ckpt.pt tests
load into it; `python -m jaxgpt.bench --nanogpt` times its train step by turns
with jaxgpt's. Needs the torch extra.

  python -m jaxgpt.nanogpt_torch --config=configs/shakespeare_char_gpu.py --config.max_iters=4 --config.eval_iters=1

runs nanoGPT's training loop as its train.py does on the CPU (compile=False,
float32): the same recipes and overrides as train.py, the same data set, its
batches, evaluations, AdamW and log lines. It is there to be measured (`python
-m jaxgpt.bench --memory` compares its peak memory with jaxgpt's), not to
train with: it saves no checkpoint and logs to no wandb. Started this way it
has jaxgpt's malloc settings (importing jaxgpt applies them, jaxgpt/runtime.py),
which nanoGPT has not: the bench starts it without them.
"""

import math
import sys
import time
from dataclasses import dataclass

import ml_collections
import numpy as np
import torch
import torch.nn as nn
from torch.nn import functional as F

from jaxgpt import cli, data
from jaxgpt.errors import JaxGPTError


@dataclass
class GPTConfig:
  block_size: int = 1024
  vocab_size: int = 50304
  n_layer: int = 12
  n_head: int = 12
  n_embd: int = 768
  dropout: float = 0.0
  bias: bool = True


class LayerNorm(nn.Module):

  def __init__(self, ndim, bias):
    super().__init__()
    self.weight = nn.Parameter(torch.ones(ndim))
    self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

  def forward(self, input):
    return F.layer_norm(input, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):

  def __init__(self, config):
    super().__init__()
    self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
    self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
    self.attn_dropout = nn.Dropout(config.dropout)  # nanoGPT's manual attention's, unused with SDPA
    self.resid_dropout = nn.Dropout(config.dropout)
    self.n_head = config.n_head
    self.n_embd = config.n_embd
    self.dropout = config.dropout

  def forward(self, x):
    B, T, C = x.size()
    q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
    k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
    q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
    v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=self.dropout if self.training else 0,
                                       is_causal=True)
    y = y.transpose(1, 2).contiguous().view(B, T, C)
    return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):

  def __init__(self, config):
    super().__init__()
    self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
    self.gelu = nn.GELU()
    self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
    self.dropout = nn.Dropout(config.dropout)

  def forward(self, x):
    return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):

  def __init__(self, config):
    super().__init__()
    self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
    self.attn = CausalSelfAttention(config)
    self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
    self.mlp = MLP(config)

  def forward(self, x):
    x = x + self.attn(self.ln_1(x))
    return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):

  def __init__(self, config):
    super().__init__()
    self.config = config
    self.transformer = nn.ModuleDict(dict(
        wte=nn.Embedding(config.vocab_size, config.n_embd),
        wpe=nn.Embedding(config.block_size, config.n_embd),
        drop=nn.Dropout(config.dropout),
        h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
        ln_f=LayerNorm(config.n_embd, bias=config.bias),
    ))
    self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
    self.transformer.wte.weight = self.lm_head.weight  # weight tying
    self.apply(self._init_weights)
    for pn, p in self.named_parameters():
      if pn.endswith('c_proj.weight'):
        torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

  def _init_weights(self, module):
    if isinstance(module, nn.Linear):
      torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
      if module.bias is not None:
        torch.nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
      torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

  def forward(self, idx):
    t = idx.size(1)
    pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
    x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
    for block in self.transformer.h:
      x = block(x)
    return self.lm_head(self.transformer.ln_f(x))  # logits at every position


def configure_optimizers(model: GPT, weight_decay: float, learning_rate: float,
                         betas: tuple[float, float]) -> torch.optim.AdamW:
  """nanoGPT's GPT.configure_optimizers on the CPU (not fused), but for its prints."""
  param_dict = {pn: p for pn, p in model.named_parameters()}  # the tied lm_head is named once
  param_dict = {pn: p for pn, p in param_dict.items() if p.requires_grad}
  decay_params = [p for n, p in param_dict.items() if p.dim() >= 2]
  nodecay_params = [p for n, p in param_dict.items() if p.dim() < 2]
  optim_groups = [
      {'params': decay_params, 'weight_decay': weight_decay},
      {'params': nodecay_params, 'weight_decay': 0.0}
  ]
  return torch.optim.AdamW(optim_groups, lr=learning_rate, betas=betas)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
  """nanoGPT's loss, as its GPT.forward computes it when given targets."""
  return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)


def train_step(model: GPT, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               grad_clip: float) -> float:
  """One iteration of nanoGPT's train.py (one micro-batch, no scaler): forward,
  backward, clipping, AdamW; returns the loss, as its log line reads it."""
  loss = cross_entropy(model(x), y)
  loss.backward()
  torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
  optimizer.step()
  optimizer.zero_grad(set_to_none=True)
  return loss.item()


# -- nanoGPT's train.py, for measuring ------------------------------------------


def get_lr(c: ml_collections.ConfigDict, it: int) -> float:
  """nanoGPT's get_lr: linear warmup, then cosine decay to min_lr."""
  if it < c.warmup_iters:
    return c.learning_rate * (it + 1) / (c.warmup_iters + 1)
  if it > c.lr_decay_iters:
    return c.min_lr
  decay_ratio = (it - c.warmup_iters) / (c.lr_decay_iters - c.warmup_iters)
  coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
  return c.min_lr + coeff * (c.learning_rate - c.min_lr)


def train(c: ml_collections.ConfigDict) -> None:
  """nanoGPT's training loop on the CPU (no DDP, no gradient scaler, no
  checkpoints), iterations 0..max_iters, with its log lines."""
  if c.device != 'cpu':
    raise JaxGPTError(f"nanoGPT's loop here runs on the CPU only: pass --config.device=cpu, not {c.device}")
  folder = data.ensure_prepared(c.dataset, c.gpt2_dir)
  vocab = data.load_vocab(folder)
  torch.manual_seed(1337)
  model = GPT(GPTConfig(block_size=c.block_size, vocab_size=data.GPT2_VOCAB_SIZE if vocab is None else len(vocab),
                        n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd, dropout=c.dropout, bias=c.bias))
  optimizer = configure_optimizers(model, c.weight_decay, c.learning_rate, (c.beta1, c.beta2))

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
      losses = [cross_entropy(model(x), y).item() for x, y in (get_batch(split) for _ in range(c.eval_iters))]
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
      loss = cross_entropy(model(x), y) / c.gradient_accumulation_steps
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
  try:
    train(cli.parse_config(argv))
  except JaxGPTError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv))
