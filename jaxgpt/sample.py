"""Sample from a trained model, as nanoGPT's sample.py:

  python sample.py --out_dir=out-shakespeare-char --start="ROMEO:" --num_samples=3

Flags are nanoGPT's (`--key=value`, or `--config.key=value`). Samples are
printed one after another, each followed by a line of dashes. Ctrl-C (or
SIGTERM) while sampling prints the samples as far as they got, then exits
with status 130. A bad flag, prompt or checkpoint, or a generation too large
for the machine's memory, is answered with one `error:` line before the
weights are read.
"""

import contextlib
import dataclasses
import pathlib
import signal
import sys
import time
import types
from collections.abc import Iterator
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import flags, logging
from ml_collections import config_flags

from jaxgpt import data, entry, gpt2, memory, runtime
from jaxgpt.checkpoint import CHOICES as CHECKPOINT_CHOICES, CheckpointError, Checkpoints
from jaxgpt.cli import keys_help, translate_nanogpt_argv, unknown_key_message, wants_help
from jaxgpt.config import CHOICES, GPT2_MODELS, SEEDS, ConfigError
from jaxgpt.model import GPTConfig
from jaxgpt.generate import Generator, generation_bytes
from jaxgpt.step import abstract_params
from jaxgpt.tokenizer import CharTokenizer, GPT2Tokenizer

GPT2_VOCAB_SIZES = (50257, data.GPT2_VOCAB_SIZE)  # GPT-2's own, and nanoGPT's padded to a multiple of 64
SEPARATOR = '---------------'
# float32's positive finite range, as Python floats (a float32 compared with 1e39 would cast it: a warning)
FLOAT32_RANGE = (float(np.finfo(np.float32).smallest_subnormal), float(np.finfo(np.float32).max))


def sample_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.init_from = 'resume'  # resume: from the checkpoint in out_dir; or a GPT-2: 'gpt2', 'gpt2-xl', ...
  c.out_dir = 'out'  # the training run's folder
  c.gpt2_dir = ''  # a local GPT-2 folder (Hugging Face layout); '' = the training run's, or the hub cache
  c.checkpoint = 'best'  # best (lowest val loss) or latest
  c.start = '\n'  # the prompt, or FILE:path to read it from a file
  c.num_samples = 10  # samples to draw
  c.max_new_tokens = 500  # tokens generated in each sample
  c.temperature = 0.8  # 1.0 = no change, < 1.0 = less random, > 1.0 = more random
  c.top_k = 200  # keep only the top_k most likely tokens
  c.seed = 1337  # draws the samples
  c.device = 'cpu'  # 'cpu', or 'gpu' / 'cuda' for a GPU
  c.dtype = 'float32'  # 'float32' or 'bfloat16' compute
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
    rest = flag_values(argv)
  except flags.Error as e:
    raise ConfigError(f'{e}: check the flag\'s name and type') from None
  except (AttributeError, KeyError) as e:
    raise ConfigError(unknown_key_message(e, sample_config())) from None
  if len(rest) > 1:
    raise ConfigError(f'unexpected arguments {rest[1:]}: flags are --key=value, e.g. --start="ROMEO:"')
  validate_sample_config(flag_values.config)
  return flag_values.config


def validate_sample_config(c: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first bad value and how to fix it."""
  # sampling divides float32 logits by it: nan, inf, or what float32 rounds to 0 or inf, draws nothing sensible
  if not FLOAT32_RANGE[0] <= c.temperature <= FLOAT32_RANGE[1]:
    raise ConfigError(f'temperature={c.temperature} must be > 0 and finite as a float32 (1.4e-45 to 3.4e38): pass '
                      'e.g. --temperature=0.8, or a small value like 0.1 for near-greedy sampling')
  for key in ('top_k', 'num_samples', 'max_new_tokens'):
    if c[key] < 1:
      raise ConfigError(f'{key}={c[key]} must be >= 1: pass --{key}=<a positive integer>')
  if c.seed not in SEEDS:
    raise ConfigError(f'seed={c.seed} must be in [0, 2**32): pass e.g. --seed=1337')
  if c.init_from not in ('resume',) + GPT2_MODELS:
    raise ConfigError(f'init_from={c.init_from!r} is not supported: choose resume (the checkpoint in '
                      f'out_dir) or one of {", ".join(GPT2_MODELS)}')
  if c.init_from == 'resume' and not c.out_dir:
    raise ConfigError('out_dir is empty: pass --out_dir=<the folder a training run wrote its checkpoints to>')
  if c.checkpoint not in CHECKPOINT_CHOICES:
    raise ConfigError(f'checkpoint={c.checkpoint!r}: choose best or latest')
  for key in ('device', 'dtype'):  # train.py's choices, and its words
    if c[key] not in CHOICES[key]:
      raise ConfigError(f'{key}={c[key]!r} is not supported: choose one of {", ".join(CHOICES[key])}')


def read_prompt(start: str) -> str:
  """The prompt: `start` itself, or the text of the file named by FILE:path; never empty."""
  if not start.startswith('FILE:'):
    if not start:
      raise ConfigError('--start is empty: the model needs a prompt to continue, e.g. --start="ROMEO:", '
                        '--start="\\n" (the default) or --start=FILE:prompt.txt')
    return start
  path = start.removeprefix('FILE:')
  if not path:
    raise ConfigError('--start=FILE: names no file: pass --start=FILE:<a text file holding the prompt>')
  if pathlib.Path(path).is_char_device() or pathlib.Path(path).is_block_device():  # /dev/zero: no end to read
    raise ConfigError(f'the prompt file {path} is a device, not a text file: pass --start=FILE:<a text file '
                      'holding the prompt>')
  try:
    text = pathlib.Path(path).read_text(encoding='utf-8')
  except OSError as e:
    raise ConfigError(f'cannot read the prompt file {path} ({e.strerror}): pass '
                      '--start=FILE:<a text file holding the prompt>') from None
  except UnicodeDecodeError as e:
    raise ConfigError(f'the prompt file {path} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset '
                      f'{e.start}): save it as UTF-8') from None
  if not text:
    raise ConfigError(f'the prompt file {path} is empty: write the prompt into it, or pass it as --start=TEXT')
  return text


def load_model(c: ml_collections.ConfigDict, text: str) -> tuple[GPTConfig, CharTokenizer | GPT2Tokenizer, Any,
                                                                  list[int], str]:
  """(config, tokenizer, params, prompt ids, what) of the best or latest
  checkpoint in out_dir, or of GPT-2; `what` names them for the closing line.
  The weights are read only once the generation is known to fit in memory."""
  if c.init_from == 'resume':
    checkpoints = Checkpoints(c.out_dir, read_only=True)

    def read(step: int):
      meta = checkpoints.meta(step)
      config = GPTConfig(**(meta['model_args'] | {'dtype': c.dtype, 'dropout': 0.0, 'remat': False}))
      if meta['vocab'] is not None:
        tokenizer = CharTokenizer(meta['vocab'])
      elif config.vocab_size in GPT2_VOCAB_SIZES or meta['config'].get('init_from') in GPT2_MODELS:  # GPT-2 tokens
        tokenizer = gpt2.tokenizer(c.gpt2_dir or meta['config'].get('gpt2_dir', ''))
      else:
        raise no_vocabulary_error(checkpoints.directory / str(step), config.vocab_size, meta['config'])
      prompt = tokenizer.encode(text)
      check_memory(config, c.num_samples, len(prompt) + c.max_new_tokens)
      params = checkpoints.params(step, abstract_params(config)[1])
      return config, tokenizer, params, prompt, f'step {step} of {c.out_dir}'
    return checkpoints.read(c.checkpoint, read)
  folder = gpt2.locate(c.init_from, c.gpt2_dir, (gpt2.CONFIG, gpt2.WEIGHTS, gpt2.TOKENIZER))
  config = dataclasses.replace(gpt2.pretrained_config(folder), dtype=c.dtype)
  tokenizer = GPT2Tokenizer(folder)
  prompt = tokenizer.encode(text)
  check_memory(config, c.num_samples, len(prompt) + c.max_new_tokens)
  return config, tokenizer, gpt2.load_params(folder, config, abstract_params(config)[1]), prompt, c.init_from


def no_vocabulary_error(checkpoint: pathlib.Path, vocab_size: int, run_config: dict) -> CheckpointError:
  """A checkpoint of a character model that lost its vocabulary: a nanoGPT
  ckpt.pt imported before its data set was prepared."""
  dataset = run_config.get('dataset', '<dataset>')
  return CheckpointError(
      f'checkpoint {checkpoint} carries no vocabulary, and its vocab_size {vocab_size} is not GPT-2\'s: '
      f'put the data set\'s meta.pkl or meta.json in data/{dataset}/ and import the ckpt.pt again '
      '(python -m jaxgpt.ckpt_pt import CKPT.pt --out_dir=NEW_OUT_DIR)')


def check_memory(config: GPTConfig, num_samples: int, length: int) -> None:
  """Raises OutOfMemoryError when the weights and a generation of num_samples
  x length tokens would not fit in the memory available."""
  needed = memory.num_params(config) * 4 + generation_bytes(config, num_samples, length)  # float32 weights
  memory.check(needed, f'to sample {num_samples} x {length:,} tokens', 'lower --max_new_tokens or --num_samples')


def print_samples(tokenizer, rows: np.ndarray) -> None:
  for row in rows:
    print(tokenizer.decode(row.tolist()))
    print(SEPARATOR)


@contextlib.contextmanager
def signals_noted() -> Iterator[list[str]]:
  """Within: SIGINT and SIGTERM are noted in the list yielded (their names),
  not raised, so that sampling stops between two tokens and never midway
  through reading a checkpoint; a second one raises KeyboardInterrupt at once.
  A signal the shell told this process to ignore (a background job's SIGINT)
  stays ignored."""
  received = []

  def note(signum: int, frame: types.FrameType | None) -> None:
    if received:
      raise KeyboardInterrupt(signal.Signals(signum).name)
    received.append(signal.Signals(signum).name)

  handled = [s for s in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(s) is not signal.SIG_IGN]
  previous_handlers = {s: signal.signal(s, note) for s in handled}
  signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})  # held by sample.py while jax loaded
  try:
    yield received
  finally:
    for s, handler in previous_handlers.items():
      signal.signal(s, handler)


USAGE = """usage: python sample.py [--KEY=VALUE ...]     (or --config.KEY=VALUE, the same)"""


def sample_help() -> str:
  return (f'{USAGE}\n\nSamples from a trained model as nanoGPT\'s sample.py does. The flags, with their '
          f'defaults:\n\n{keys_help(sample_config(), sample_config)}')


def main(argv: list[str]) -> int:
  if wants_help(argv):
    print(sample_help())
    return 0
  return entry.run(lambda: sample(argv), lambda e: f'{str(e) or "SIGINT"}: stopped before sampling')


def sample(argv: list[str]) -> int:
  """Prints the samples the flags in argv ask for; a stop while sampling
  prints them as far as they got."""
  with signals_noted() as received:
    c = parse_sample_config(argv)
    text = read_prompt(c.start)
    logging.set_verbosity(logging.ERROR)  # orbax's notes on opening a checkpoint read-only
    runtime.pin_device(c.device)
    config, tokenizer, params, prompt, what = load_model(c, text)
    generate = Generator(abstract_params(config)[0], params, config, temperature=c.temperature, top_k=c.top_k)
    if received:
      raise KeyboardInterrupt(received[0])
    tokens = np.array([prompt] * c.num_samples, np.int32)
    t0 = time.time()
    with jax.disable_jit(not c.compile):
      for tokens in generate.stream(tokens, c.max_new_tokens, c.seed, use_cache=c.use_cache,
                                    progress=sys.stdout.isatty()):
        if received:  # tokens holds every token drawn so far
          break
    seconds = time.time() - t0
    print_samples(tokenizer, tokens)
  if received:
    print(f'{received[0]}: stopped after {tokens.shape[1] - len(prompt)} of {c.max_new_tokens} new tokens',
          file=sys.stderr)
    return 130
  print(f'{c.num_samples * c.max_new_tokens / seconds:,.0f} tokens/s, compilation included ({what}, '
        f'{"with" if c.use_cache else "without"} the key/value cache)', file=sys.stderr)
  return 0
