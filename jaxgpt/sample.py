"""Sample from a trained model, as nanoGPT's sample.py:

  python sample.py --out_dir=out-shakespeare-char --start="ROMEO:" --num_samples=3
  python sample.py config/train_shakespeare_char.py --start="ROMEO:"      # the out_dir a training config wrote
  python sample.py --config=configs/shakespeare_char.py --start="ROMEO:"  # the same, in train.py's spelling
  python sample.py config/eval_gpt2_xl.py --start="ROMEO:"                # the GPT-2 an eval config names: gpt2-xl

Flags are nanoGPT's (`--key=value`, or `--config.key=value`), after an
optional config file: as nanoGPT's configurator, a training config sets what
sampling shares with training (out_dir, device, ...), and the flags override
it. Samples are printed one after another, each followed by a line of dashes;
the speed of the generation, its compile left out, goes to stderr. Ctrl-C (or
SIGTERM, or SIGHUP: the terminal closed) while sampling prints the samples as far as they got, then exits
with status 130. A bad flag, prompt or checkpoint, or a generation too large
for the machine's memory, is answered with one `error:` line before the
weights are read.
"""

import dataclasses
import inspect
import pathlib
import signal
import sys
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from jaxgpt import data, entry, gpt2, memory, runtime
from jaxgpt.checkpoint import CHOICES as CHECKPOINT_CHOICES, CheckpointError, Checkpoints
from jaxgpt.cli import config_file_named, keys_help, parse_flags, wants_help
from jaxgpt.config import (CHOICES, GPT2_MODELS, SEEDS, ConfigError, a_type, base_config, close_key, get_config_values,
                           one_line, run_config_file)
from jaxgpt.model import GPTConfig
from jaxgpt.generate import Generator, generation_bytes
from jaxgpt.step import abstract_params
from jaxgpt.tokenizer import CharTokenizer, GPT2Tokenizer

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
  c.temperature = 0.8  # 1.0 = no change, < 1.0 = less random, > 1.0 = more random, 0 = greedy (the likeliest token)
  c.top_k = 200  # keep only the top_k most likely tokens
  c.seed = 1337  # draws the samples
  c.device = 'cpu'  # 'cpu', or 'gpu' / 'cuda' for a GPU
  c.dtype = 'float32'  # 'float32' or 'bfloat16' compute
  c.compile = True  # False: run op by op (jax.disable_jit), for debugging
  c.use_cache = True  # False: recompute the whole context for every token, as nanoGPT
  return c


def parse_sample_config(argv: list[str]) -> ml_collections.ConfigDict:
  """The sampling config from the command line: the config file's, if one
  is named, overridden by the flags; ConfigError for anything wrong."""
  c = parse_flags(argv, file_config, type_error=lambda e: f'{e}: check the flag\'s name and type',
                  flags_hint='flags are --key=value, e.g. --start="ROMEO:"')
  validate_sample_config(c)
  return c


def file_config(path: str | None) -> ml_collections.ConfigDict:
  """sample_config() with the keys of sampling that the config file at path
  sets (none: sample_config()), as nanoGPT's sample.py runs its
  configurator. The file is run as train.py runs it: a training config,
  jaxgpt's (get_config()) or nanoGPT's (`key = value` lines), gives the keys
  sampling shares with training (out_dir, gpt2_dir, device, dtype, compile,
  seed), and its training-only keys are not sampling's: left out. Its
  init_from is taken only where the file evaluates a GPT-2 and trains
  nothing (eval_only, as nanoGPT's config/eval_gpt2_xl.py). A file may
  set sampling's own keys too (start, num_samples, ...). A key of neither is
  a typo: ConfigError."""
  config = sample_config()
  if path is None:
    return config
  training = base_config()
  namespace, assigned = run_config_file(path)
  if callable(namespace.get('get_config')):
    # a training config's get_config() returns every key of train.py: it sets those off their defaults
    # (train.py's defaults are sampling's, but for init_from and which checkpoint)
    values = {key: value for key, value in get_config_values(path, namespace['get_config']).items()
              if key not in training or value != training[key]}
  else:  # what a nanoGPT config file sets, as config.load_config_file reads it
    values = {name: namespace[name] for name in assigned
              if not name.startswith('_') and not inspect.ismodule(namespace[name]) and not callable(namespace[name])}
  # init_from in a training config is where that training began (scratch, or the GPT-2 it finetuned): sampling
  # the config samples what the training wrote, in out_dir. A config that only evaluates a GPT-2 (eval_only, as
  # nanoGPT's config/eval_gpt2*.py) writes nothing there: sampling it samples that GPT-2, as nanoGPT's sample.py
  # does. --init_from chooses otherwise
  evaluates_gpt2 = values.get('eval_only') is True and values.get('init_from') in GPT2_MODELS
  for key, value in values.items():
    if key in config and (key != 'init_from' or evaluates_gpt2):
      if not (type(value) is type(config[key]) or (type(config[key]) is float and type(value) is int)):
        raise ConfigError(f'{path}: {key} = {one_line(repr(value))} is {a_type(type(value))}: sampling takes '
                          f'{a_type(type(config[key]))}, e.g. {key} = {config[key]!r}')
      config[key] = value
    elif key not in training and key not in config:
      raise ConfigError(f'{path} sets {key}, which is neither a sampling nor a training key'
                        f'{close_key(key, training.to_dict() | config.to_dict())}')
  return config


def validate_sample_config(c: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first bad value and how to fix it."""
  # sampling divides float32 logits by it: nan, inf, or what float32 rounds to 0 or inf, draws nothing sensible;
  # 0 itself is greedy
  if c.temperature != 0 and not FLOAT32_RANGE[0] <= c.temperature <= FLOAT32_RANGE[1]:
    raise ConfigError(f'temperature={c.temperature} must be > 0 and finite as a float32 (1.4e-45 to 3.4e38): pass '
                      'e.g. --temperature=0.8, or --temperature=0 to take the likeliest token each time (greedy)')
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
    # closed on every way out: orbax's threads, left to the interpreter's exit, print tracebacks there
    with Checkpoints(c.out_dir, read_only=True) as checkpoints:

      def read(step: int):
        meta = checkpoints.meta(step)
        config = GPTConfig(**(meta['model_args'] | {'dtype': c.dtype, 'dropout': 0.0, 'remat': False}))
        if meta['vocab'] is not None:
          tokenizer = CharTokenizer(meta['vocab'])
        elif config.vocab_size in data.GPT2_VOCAB_SIZES or meta['config'].get('init_from') in GPT2_MODELS:
          tokenizer = gpt2.tokenizer(c.gpt2_dir or meta['config'].get('gpt2_dir', ''))  # GPT-2 tokens
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


USAGE = """usage: python sample.py [--KEY=VALUE ...]     (or --config.KEY=VALUE, the same)
       python sample.py FILE [--KEY=VALUE ...]     (nanoGPT's spelling: a config file, then the flags)
       python sample.py --config=FILE [--config.KEY=VALUE ...]     (train.py's spelling of the same)"""

ABOUT = """Samples from a trained model as nanoGPT's sample.py does. A config file is
a training config (configs/shakespeare_char.py, or nanoGPT's
config/train_shakespeare_char.py): sampling takes the keys it shares with
training (out_dir, gpt2_dir, device, dtype, compile, seed), and samples what
that training wrote in its out_dir, whatever init_from it trained from. A
config that only evaluates a GPT-2 (eval_only = True, init_from = 'gpt2-xl',
as nanoGPT's config/eval_gpt2_xl.py) samples that GPT-2. The flags override
the file. --temperature=0 takes the likeliest token each time
(greedy: the same samples for every seed)."""


def sample_help(argv: list[str]) -> str:
  """sample.py's usage, and every flag with its value (as the config file
  named sets it, else its default) and its meaning."""
  path = config_file_named(argv)
  whose = f'as {path} sets them' if path else 'with their defaults'
  return f'{USAGE}\n\n{ABOUT}\n\nThe flags, {whose}:\n\n{keys_help(file_config(path), sample_config)}'


def main(argv: list[str]) -> int:
  def work() -> int:
    if wants_help(argv):
      print(sample_help(argv))
      return 0
    return sample(argv)

  return entry.run(work, lambda e: f'{str(e) or "SIGINT"}: stopped before sampling')


def sample(argv: list[str]) -> int:
  """Prints the samples the flags in argv ask for; a stop while sampling
  prints them as far as they got."""
  # noted, not raised: sampling stops between two tokens, never midway through reading a checkpoint
  with entry.StopSignals(noted=True, keep_ignored=True) as stop:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, set(entry.STOP_SIGNALS))  # held by sample.py while jax loaded
    c = parse_sample_config(argv)
    text = read_prompt(c.start)
    logging.set_verbosity(logging.ERROR)  # orbax's notes on opening a checkpoint read-only
    runtime.pin_device(c.device)
    config, tokenizer, params, prompt, what = load_model(c, text)
    generate = Generator(abstract_params(config)[0], params, config, temperature=c.temperature, top_k=c.top_k)
    if stop.received:
      raise KeyboardInterrupt(stop.first_signal())
    tokens = np.array([prompt] * c.num_samples, np.int32)
    progress = sys.stdout.isatty()
    t0 = time.perf_counter()
    if c.compile:  # ahead of the first token, so that the generation is timed alone
      generate.compile(tokens, c.max_new_tokens, use_cache=c.use_cache, progress=progress)
    compile_seconds = time.perf_counter() - t0
    if stop.received:
      raise KeyboardInterrupt(stop.first_signal())
    t0 = time.perf_counter()
    with jax.disable_jit(not c.compile):
      for tokens in generate.stream(tokens, c.max_new_tokens, c.seed, use_cache=c.use_cache, progress=progress):
        if stop.received:  # tokens holds every token drawn so far
          break
    seconds = time.perf_counter() - t0
    print_samples(tokenizer, tokens)
  if stop.received:
    print(f'{stop.first_signal()}: stopped after {tokens.shape[1] - len(prompt)} of {c.max_new_tokens} new tokens',
          file=sys.stderr)
    return 130
  print(speed_line(c, seconds, compile_seconds, what), file=sys.stderr)
  return 0


def speed_line(c: ml_collections.ConfigDict, seconds: float, compile_seconds: float, what: str) -> str:
  """The generation's tokens/s, its compile left out (timed apart), and what was sampled."""
  compiled = f'compiling took {compile_seconds:.1f} s before' if c.compile else 'op by op, compile=False'
  return (f'{c.num_samples * c.max_new_tokens / seconds:,.0f} tokens/s generating {c.num_samples} x '
          f'{c.max_new_tokens:,} tokens in {seconds:.2f} s ({compiled}), from {what}, '
          f'{"with" if c.use_cache else "without"} the key/value cache')
