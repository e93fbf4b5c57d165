"""Sample from a trained model, as nanoGPT's sample.py:

  python sample.py --out_dir=out-shakespeare-char --start="ROMEO:" --num_samples=3

Flags are nanoGPT's (`--key=value`, or `--config.key=value`). Samples are
printed one after another, each followed by a line of dashes.
"""

import dataclasses
import pathlib
import sys
import time

import jax
import ml_collections
import numpy as np
from absl import flags, logging
from ml_collections import config_flags

from jaxgpt import gpt2
from jaxgpt.checkpoint import Checkpoints
from jaxgpt.cli import translate_nanogpt_argv, unknown_key_message
from jaxgpt.config import GPT2_MODELS, ConfigError, GPTConfig, JaxGPTError
from jaxgpt.generate import Generator
from jaxgpt.step import abstract_params
from jaxgpt.tokenizer import CharTokenizer, GPT2Tokenizer
from jaxgpt.train import pin_device


def sample_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.init_from = 'resume'  # resume: from the checkpoint in out_dir; or a GPT-2: 'gpt2', 'gpt2-xl', ...
  c.out_dir = 'out'
  c.gpt2_dir = ''  # a local GPT-2 folder (Hugging Face layout); '' = the training run's, or the hub cache
  c.checkpoint = 'best'  # best (lowest val loss) or latest
  c.start = '\n'  # the prompt, or FILE:path to read it from a file
  c.num_samples = 10
  c.max_new_tokens = 500
  c.temperature = 0.8  # 1.0 = no change, < 1.0 = less random, > 1.0 = more random
  c.top_k = 200  # keep only the top_k most likely tokens
  c.seed = 1337
  c.device = 'cpu'
  c.dtype = 'float32'
  c.compile = True  # False: run op by op (jax.disable_jit), for debugging
  c.use_cache = True  # False: recompute the whole context for every token, as nanoGPT
  return c


def parse_sample_config(argv: list[str]) -> ml_collections.ConfigDict:
  argv = translate_nanogpt_argv(argv)
  flag_values = flags.FlagValues()
  try:
    # defining the flag already applies the overrides in argv
    config_flags.DEFINE_config_dict('config', sample_config(), flag_values=flag_values, lock_config=True,
                                    sys_argv=argv)
    flag_values(argv)
  except flags.Error as e:
    raise ConfigError(f'{e}: check the flag\'s name and type') from None
  except (AttributeError, KeyError) as e:
    raise ConfigError(unknown_key_message(e, sample_config())) from None
  c = flag_values.config
  if c.temperature <= 0:
    raise ConfigError(f'temperature={c.temperature} must be > 0 (use a small value like 0.1 for '
                      'near-greedy sampling)')
  if c.top_k < 1:
    raise ConfigError(f'top_k={c.top_k} must be >= 1')
  for key in ('num_samples', 'max_new_tokens'):
    if c[key] < 1:
      raise ConfigError(f'{key}={c[key]} must be >= 1')
  if c.init_from not in ('resume',) + GPT2_MODELS:
    raise ConfigError(f'init_from={c.init_from!r} is not supported: choose resume (the checkpoint in '
                      f'out_dir) or one of {", ".join(GPT2_MODELS)}')
  if c.checkpoint not in ('best', 'latest'):
    raise ConfigError(f'checkpoint={c.checkpoint!r}: choose best or latest')
  return c


def read_prompt(start: str) -> str:
  """The prompt: `start` itself, or the text of the file named by FILE:path."""
  if not start.startswith('FILE:'):
    return start
  try:
    return pathlib.Path(start.removeprefix('FILE:')).read_text(encoding='utf-8')
  except (OSError, UnicodeDecodeError) as e:
    raise JaxGPTError(f'cannot read the prompt file {start.removeprefix("FILE:")}: {e}') from None


def load_model(c: ml_collections.ConfigDict):
  """(generator, tokenizer, what) of the best or latest checkpoint in out_dir,
  or of GPT-2's weights; `what` names them for the closing line."""
  if c.init_from == 'resume':
    checkpoints = Checkpoints(c.out_dir, read_only=True)
    step = checkpoints.best_step() if c.checkpoint == 'best' else checkpoints.latest_step()
    meta = checkpoints.meta(step)
    config = GPTConfig(**(meta['model_args'] | {'dtype': c.dtype, 'dropout': 0.0, 'remat': False}))
    if meta['vocab'] is not None:
      tokenizer = CharTokenizer(meta['vocab'])
    else:  # trained on GPT-2 tokens
      tokenizer = gpt2.tokenizer(c.gpt2_dir or meta['config'].get('gpt2_dir', ''))
    graphdef, like = abstract_params(config)
    params, what = checkpoints.params(step, like), f'step {step} of {c.out_dir}'
  else:
    folder = gpt2.locate(c.init_from, c.gpt2_dir, (gpt2.CONFIG, gpt2.WEIGHTS, gpt2.TOKENIZER))
    config = dataclasses.replace(gpt2.model_config(folder), dtype=c.dtype)
    tokenizer = GPT2Tokenizer(folder)
    graphdef, like = abstract_params(config)
    params, what = gpt2.load_params(folder, config, like), c.init_from
  generate = Generator(graphdef, params, config, temperature=c.temperature, top_k=c.top_k)
  return generate, tokenizer, what


def main(argv: list[str]) -> int:
  try:
    c = parse_sample_config(argv)
    logging.set_verbosity(logging.ERROR)  # orbax's notes on opening a checkpoint read-only
    pin_device(c.device)
    generate, tokenizer, what = load_model(c)
    prompt = np.array([tokenizer.encode(read_prompt(c.start))] * c.num_samples, np.int32)
    t0 = time.time()
    with jax.disable_jit(not c.compile):
      tokens = generate(prompt, c.max_new_tokens, c.seed, use_cache=c.use_cache, progress=sys.stdout.isatty())
    seconds = time.time() - t0
  except JaxGPTError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  for row in tokens:
    print(tokenizer.decode(row.tolist()))
    print('---------------')
  print(f'{c.num_samples * c.max_new_tokens / seconds:,.0f} tokens/s, compilation included ({what}, '
        f'{"with" if c.use_cache else "without"} the key/value cache)', file=sys.stderr)
  return 0
