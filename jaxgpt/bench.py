"""Benchmark the train step of the seed command, from the repository root:

  python -m jaxgpt.bench [--steps=300] [--config.compile=True] [--config.dtype=bfloat16]
  python -m jaxgpt.bench --generate   # sampling speed, with and without the key/value cache

The config is the seed command's (configs/shakespeare_char.py with 4 layers,
4 heads, 128 wide, block 64, batch 12, dropout 0), and any further
`--config.key=value` overrides it. The model, optimizer and train step are
built as train.py builds them and fed random token batches. Without
--config.dtype it times float32 and bfloat16 by turns, in one process. Prints
the compile times, the median ms/iter over --steps steps (each waited for),
tokens/s and the peak RSS. With --generate it times sampling instead: one
prompt character, block_size new tokens, 10 samples at once, after a warm-up
run (so compiling is left out). nanoGPT (PyTorch 2.13, eager) runs this step at
34.1 ms/iter on a 2-core AVX-512 machine.
"""

import argparse
import dataclasses
import math
import resource
import sys
import time

import jax
import numpy as np

from jaxgpt import cli
from jaxgpt.config import JaxGPTError, model_config
from jaxgpt.generate import Generator
from jaxgpt.optim import make_optimizer
from jaxgpt.step import init_model, make_train_step
from jaxgpt.train import pin_device

SEED_COMMAND = ['--config=configs/shakespeare_char.py', '--config.device=cpu', '--config.compile=False',
                '--config.eval_iters=20', '--config.log_interval=1', '--config.block_size=64',
                '--config.batch_size=12', '--config.n_layer=4', '--config.n_head=4',
                '--config.n_embd=128', '--config.max_iters=2000', '--config.lr_decay_iters=2000',
                '--config.dropout=0.0']
SHAKESPEARE_VOCAB_SIZE = 65


def bench_generate(graphdef, params, config) -> None:
  """Tokens/s of sampling the seed model, with and without the cache."""
  generate = Generator(graphdef, params, config, temperature=0.8, top_k=200)
  prompt = np.zeros((10, 1), np.int32)
  new_tokens = config.block_size - 1  # the whole context, where the cache applies
  for use_cache in (True, False):
    generate(prompt, new_tokens, seed=0, use_cache=use_cache)  # compiles
    t0 = time.perf_counter()
    generate(prompt, new_tokens, seed=0, use_cache=use_cache)
    seconds = time.perf_counter() - t0
    print(f'{"with" if use_cache else "without"} the key/value cache: '
          f'{prompt.shape[0] * new_tokens / seconds:,.0f} tokens/s '
          f'({prompt.shape[0]} samples x {new_tokens} tokens in {seconds:.2f} s)')


def build_step(c, dtype: str):
  """The seed model's train step in dtype, compiled, with its state and a
  fixed random batch: run(i) does iteration i. Returns (run, compile seconds)."""
  config = model_config(c, SHAKESPEARE_VOCAB_SIZE)
  config = dataclasses.replace(config, dtype=dtype)
  _, graphdef, params = init_model(config, c.seed)
  tx = make_optimizer(c)
  state = [params, tx.init(params)]
  step = make_train_step(graphdef, tx, dropout=c.dropout > 0, seed=c.seed, fused=c.compile)
  rng = np.random.default_rng(0)
  shape = (c.gradient_accumulation_steps, c.batch_size, c.block_size)
  xs, ys = (rng.integers(0, SHAKESPEARE_VOCAB_SIZE, shape, dtype=np.int32) for _ in range(2))

  def run(i: int) -> None:
    state[0], state[1], metrics = step(state[0], state[1], xs, ys, i)
    jax.block_until_ready(metrics)

  t0 = time.perf_counter()
  run(0)
  return run, time.perf_counter() - t0


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--steps', type=int, default=300, help='timed steps per dtype, after 5 warm-up steps')
  parser.add_argument('--generate', action='store_true', help='time sampling instead of training')
  args, overrides = parser.parse_known_args(argv[1:])
  try:
    c = cli.parse_config(['bench'] + SEED_COMMAND + overrides)
  except JaxGPTError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1

  pin_device(c.device)
  if args.generate:
    config = model_config(c, SHAKESPEARE_VOCAB_SIZE)
    _, graphdef, params = init_model(config, c.seed)
    bench_generate(graphdef, params, config)
    return 0
  dtypes = [c.dtype] if 'dtype' in cli.overridden_keys(argv) else ['float32', 'bfloat16']
  steps = {}
  for dtype in dtypes:
    steps[dtype], compile_s = build_step(c, dtype)
    print(f'{dtype}: compile + first step {compile_s:.2f} s')
  # the dtypes take turns, 25 steps at a time: this VM's speed drifts from
  # minute to minute, and turns expose both to the same drift
  times = {dtype: [] for dtype in dtypes}
  for turn in range(math.ceil(args.steps / 25)):
    for dtype, run in steps.items():
      for i in range(5 if turn == 0 else 1):  # warm-up (caches, allocator) before the first turn's timings
        run(i + 1)
      for i in range(25):
        t0 = time.perf_counter()
        run(i + 1)
        times[dtype].append(time.perf_counter() - t0)
  tokens = c.gradient_accumulation_steps * c.batch_size * c.block_size
  print(f'config: {c.n_layer} layers, {c.n_head} heads, {c.n_embd} wide, block {c.block_size}, '
        f'batch {c.batch_size}, compile={c.compile}, jax {jax.__version__}')
  medians = {}
  for dtype, t in times.items():
    ms, ms_p10, ms_p90 = (1000 * float(np.percentile(t, q)) for q in (50, 10, 90))
    medians[dtype] = ms
    print(f'{dtype}: median {ms:.2f} ms/iter ({len(t)} steps; 10% {ms_p10:.2f}, 90% {ms_p90:.2f}), '
          f'{tokens / ms * 1000:,.0f} tokens/s')
  if len(medians) == 2:
    print(f'bfloat16 / float32: {medians["bfloat16"] / medians["float32"]:.2f}')
  peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  print(f'peak RSS: {peak_mb:.0f} MB (this process, {" and ".join(dtypes)} steps compiled)')
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv))
