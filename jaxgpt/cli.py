"""Command line of train.py: ml_collections config flags, nanoGPT's spelling too.

  python train.py --config=configs/shakespeare_char.py --config.batch_size=12
  python train.py configs/shakespeare_char.py --batch_size=12      # nanoGPT's

A user mistake ends with one `error:` line naming the problem and the fix.
"""

import sys

import ml_collections
from absl import flags
from ml_collections import config_flags

from jaxgpt.config import ConfigError, JaxGPTError, base_config, validate


def translate_nanogpt_argv(argv: list[str]) -> list[str]:
  """nanoGPT's `train.py CONFIG.py --key=value` as `--config=CONFIG.py --config.key=value`."""
  out = argv[:1]
  for arg in argv[1:]:
    if not arg.startswith('-') and arg.endswith('.py'):
      out.append(f'--config={arg}')
    elif arg.startswith('--') and not arg.startswith('--config') and arg not in ('--help', '--helpfull'):
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


def parse_config(argv: list[str]):
  """The run config from the command line; ConfigError for anything wrong."""
  argv = translate_nanogpt_argv(argv)
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'a configs/*.py file with get_config()',
                                  flag_values=flag_values, lock_config=True, sys_argv=argv)
  try:
    rest = flag_values(argv)
    config = flag_values.config
    if config is not None:
      config.keys()  # a file that failed to load raises OSError on first use
  except flags.Error as e:
    raise ConfigError(f'{e}: check the value\'s type against the config file') from None
  except (AttributeError, KeyError) as e:  # an override of a key the config does not have
    raise ConfigError(unknown_key_message(e, base_config())) from None
  except OSError as e:  # the config file could not be loaded
    raise ConfigError(str(e).splitlines()[-1].strip() + ': pass --config=configs/<recipe>.py') from None
  if len(rest) > 1:
    raise ConfigError(f'unexpected arguments {rest[1:]}: overrides are --config.key=value')
  if config is None:
    raise ConfigError('no config file: pass --config=configs/shakespeare_char.py (or another recipe)')
  validate(config)
  return config


def overridden_keys(argv: list[str]) -> frozenset[str]:
  """The config keys set on the command line, in either spelling."""
  return frozenset(arg.removeprefix('--config.').split('=')[0]
                   for arg in translate_nanogpt_argv(argv) if arg.startswith('--config.'))


def main(argv: list[str]) -> int:
  try:
    config = parse_config(argv)
    from jaxgpt import train  # after parsing: a bad flag answers before jax starts
    train.run(config, overridden_keys(argv))
  except JaxGPTError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  except KeyboardInterrupt:
    print('interrupted: continue from the last checkpoint with --config.init_from=resume', file=sys.stderr)
    return 130
  return 0
