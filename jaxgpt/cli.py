"""Command line of train.py: a config file, then ml_collections' overrides of
its keys; nanoGPT's spelling and nanoGPT's own config files too.

  python train.py --config=configs/shakespeare_char.py --config.batch_size=12
  python train.py configs/shakespeare_char.py --batch_size=12      # nanoGPT's
  python train.py ../nanoGPT/config/train_shakespeare_char.py --device=cpu
  python train.py --batch_size=8    # no config file: nanoGPT's defaults (GPT-2 124M on OpenWebText)

The file is read by config.load_config_file (a get_config(), or nanoGPT's
`key = value` lines); the overrides by ml_collections' DEFINE_config_dict,
in `parse_flags`, which sample.py's flags go through too.

A user mistake ends with one `error:` line naming the problem and the fix.
"""

import inspect
import re
from collections.abc import Callable

import ml_collections
from absl import flags
from ml_collections import config_flags

from jaxgpt.config import ConfigError, a_type, base_config, example_value, load_config_file, validate
from jaxgpt import entry


HELP_FLAGS = ('-h', '--help', '--helpfull')


def translate_nanogpt_argv(argv: list[str]) -> list[str]:
  """nanoGPT's `train.py CONFIG.py --key=value` as `--config=CONFIG.py --config.key=value`."""
  out = argv[:1]
  for arg in argv[1:]:
    if not arg.startswith('-') and arg.endswith('.py'):
      out.append(f'--config={arg}')
    elif arg.startswith('--') and not arg.startswith('--config') and arg not in HELP_FLAGS:
      out.append(f'--config.{arg[2:]}')
    else:
      out.append(arg)
  return out


def unknown_key_message(e: Exception, valid: ml_collections.ConfigDict) -> str:
  # ml_collections raises AttributeError wrapping a KeyError whose text is the
  # key, then possibly a 'Did you mean ...' line
  cause = e.args[0] if e.args and isinstance(e.args[0], KeyError) else e
  key, *hint = str(cause.args[0] if cause.args else cause).splitlines()
  key = key.strip('"\'')
  hint = f' ({hint[0].strip()})' if hint else ''
  return f'unknown config key {key!r}{hint}: valid keys are {", ".join(valid)}'


def config_file_arg(argv: list[str]) -> tuple[str | None, list[str]]:
  """The --config=FILE of argv, and argv without it (its --config.key=value overrides)."""
  flag_values = flags.FlagValues()
  flags.DEFINE_multi_string('config', [], 'the config file', flag_values=flag_values)
  try:
    rest = flag_values(argv, known_only=True)
  except flags.Error as e:  # --config with no value
    raise ConfigError(f'{e}: pass --config=configs/shakespeare_char.py (or another recipe)') from None
  if len(flag_values.config) > 1:
    raise ConfigError(f'several config files ({", ".join(flag_values.config)}): pass one, and other keys as '
                      '--config.key=value')
  return (flag_values.config or [None])[0], rest


def override_type_message(e: flags.Error) -> str:
  """absl's 'flag --config.KEY=VALUE: <parser error>' as a line saying what KEY takes."""
  match = re.match(r'flag --config\.(\w+)=(.*?): ', str(e))
  if not match or match[1] not in base_config():
    return f'{e}: overrides are --config.key=value'
  key, value = match[1], match[2]
  example = example_value(key, value)
  return f'--config.{key}={value} is not {a_type(type(example))}: pass e.g. --config.{key}={example}'


def parse_flags(argv: list[str], config_from_file: Callable[[str | None], ml_collections.ConfigDict], *,
                type_error: Callable[[flags.Error], str], flags_hint: str) -> ml_collections.ConfigDict:
  """The config that config_from_file gives for argv's config file (None:
  none named), overridden by argv's --config.key=value flags (or nanoGPT's
  `FILE --key=value`); ConfigError for anything wrong. type_error: the line
  for a value the key does not take; flags_hint: how flags are spelled, after
  a stray argument."""
  path, argv = config_file_arg(translate_nanogpt_argv(argv))
  config = config_from_file(path)
  flag_values = flags.FlagValues()
  try:
    # defining the flag already applies the overrides in argv
    config_flags.DEFINE_config_dict('config', config, flag_values=flag_values, lock_config=True, sys_argv=argv)
    rest = flag_values(argv)
  except flags.Error as e:
    raise ConfigError(type_error(e)) from None
  except (AttributeError, KeyError) as e:  # an override of a key the config does not have
    raise ConfigError(unknown_key_message(e, config)) from None
  if len(rest) > 1:
    raise ConfigError(f'unexpected arguments {rest[1:]}: {flags_hint}')
  return config


def parse_config(argv: list[str]) -> ml_collections.ConfigDict:
  """The run config from the command line; ConfigError for anything wrong."""
  # no config file: nanoGPT's defaults, as its train.py
  config = parse_flags(argv, lambda path: base_config() if path is None else load_config_file(path),
                       type_error=override_type_message, flags_hint='overrides are --config.key=value')
  validate(config)
  return config


def config_file_named(argv: list[str]) -> str | None:
  """The config file argv names, in either spelling, --help aside."""
  return config_file_arg(translate_nanogpt_argv([arg for arg in argv if arg not in HELP_FLAGS]))[0]


def overridden_keys(argv: list[str]) -> frozenset[str]:
  """The config keys set on the command line, in either spelling."""
  return frozenset(arg.removeprefix('--config.').split('=')[0]
                   for arg in translate_nanogpt_argv(argv) if arg.startswith('--config.'))


USAGE = """usage: python train.py [--config=FILE] [--config.KEY=VALUE ...]
       python train.py [FILE] [--KEY=VALUE ...]     (nanoGPT's spelling of the same)"""


def wants_help(argv: list[str]) -> bool:
  return any(arg in HELP_FLAGS for arg in argv[1:])


def keys_help(values: ml_collections.ConfigDict, documented: Callable[[], ml_collections.ConfigDict]) -> str:
  """Each key of `values` with its value and its meaning, which is the
  comment after it in the source of `documented` (one source for the code
  and --help), under that source's heading comments."""
  lines = []
  for line in inspect.getsource(documented).splitlines():
    heading = re.fullmatch(r'\s*# (.*)', line)
    key = re.fullmatch(r'\s*c\.(\w+) = [^#]*#\s*(.*)', line)
    if heading:
      lines.append(f'{heading[1]}:')
    elif key:
      lines += [f'  --config.{key[1]}, --{key[1]} = {values[key[1]]!r}', f'      {key[2]}']
  return '\n'.join(lines)


def train_help(argv: list[str]) -> str:
  """train.py's usage, and every config key with its value in the config
  file named (else nanoGPT's default) and its meaning."""
  path = config_file_named(argv)
  values = base_config() if path is None else load_config_file(path)
  whose = f'as {path} sets them' if path else "nanoGPT's defaults (GPT-2 124M on OpenWebText)"
  return (f'{USAGE}\n\nTrains a GPT as nanoGPT\'s train.py does. The config keys, {whose}:\n\n'
          f'{keys_help(values, base_config)}')


def set_up_process(c: ml_collections.ConfigDict) -> None:
  """What a training run changes in its process, before jax starts (and
  after entry.run's `runtime.setup`): XLA's thread pool sized for the train
  step's threads, jax pinned to the run's device, and the processes of a
  multi-process run joined (jax.distributed)."""
  from jaxgpt import parallel, runtime  # after parsing: a bad flag answers before the model's modules load
  runtime.size_thread_pool(parallel.planned_shards(c), [c.dtype])
  runtime.pin_device(c.device)
  parallel.initialize(c.coordinator_address, c.num_processes, c.process_id, c.device, c.coordinator_timeout)


def main(argv: list[str]) -> int:
  parsed = []  # the run config, once parsed: a Ctrl-C's line says whether its out_dir holds a checkpoint

  def train() -> None:
    if wants_help(argv):
      print(train_help(argv))
      return
    parsed.append(parse_config(argv))
    set_up_process(parsed[0])
    from jaxgpt import train  # after parsing: a bad flag answers before the model's modules load
    train.run(parsed[0], overridden_keys(argv))

  def interrupted(e: KeyboardInterrupt) -> str:  # a second Ctrl-C, or one before training began
    from jaxgpt.checkpoint import AbandonedSave, holds_checkpoints
    if isinstance(e, AbandonedSave):
      return str(e)
    if parsed and holds_checkpoints(parsed[0].out_dir):
      return f'interrupted: continue from the last checkpoint in {parsed[0].out_dir} with --config.init_from=resume'
    return 'interrupted, before any checkpoint was saved'

  return entry.run(train, interrupted)
