"""Run configuration: nanoGPT's train.py settings as an ml_collections ConfigDict.

`base_config()` holds every key of nanoGPT's train.py with its default (GPT-2
124M on OpenWebText); the recipes in configs/ override only what differs.
`load_config_file` reads a config file: a get_config() returning the
ConfigDict, or nanoGPT's own `key = value` lines, applied over base_config()
as nanoGPT's configurator does; anything wrong in it is one `ConfigError`
naming the file (and its line). `validate` turns a bad value into one
`ConfigError` that names the key and the fix. (`model.GPTConfig.from_run_config`
takes the model's keys of it.)
"""

import ast
import difflib
import inspect
import math
import pathlib
import re
import reprlib
import traceback

import ml_collections

from jaxgpt.errors import JaxGPTError


class ConfigError(JaxGPTError):
  pass


GPT2_MODELS = ('gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl')  # 124M, 350M, 774M, 1558M
CHECKPOINTS = ('best', 'latest')  # which checkpoint of an out_dir to read: the lowest val loss, or the newest


def base_config() -> ml_collections.ConfigDict:
  """nanoGPT's train.py defaults: GPT-2 (124M) on OpenWebText."""
  c = ml_collections.ConfigDict()
  # I/O
  c.out_dir = 'out'  # the run's folder: checkpoints, metrics.jsonl
  c.eval_interval = 2000  # evaluate (and maybe save) every this many iterations
  c.eval_start = 0  # evaluate only at iterations >= this (not in nanoGPT): a speedrun evaluates near its end only
  c.log_interval = 1  # print the loss every this many iterations
  c.eval_iters = 200  # batches of each split an evaluation averages
  c.eval_only = False  # evaluate once at step 0, then exit
  c.eval_fixed = False  # True: the same eval batches at every evaluation (curves compare without noise)
  c.always_save_checkpoint = True  # save after every eval, not only when val improves
  c.full_val_context = 0  # > 0: val loss over the whole val split, in windows of this many tokens (jaxgpt.evaluate)
  c.target_val_loss = 0.0  # > 0: stop at the first evaluation whose val loss is at or below it, saving that state
  c.time_limit = 0.0  # > 0: stop after the first iteration ending this many seconds after the process started
  c.init_from = 'scratch'  # 'scratch', 'resume' (from out_dir) or a GPT-2: 'gpt2', 'gpt2-medium', ...
  c.checkpoint = 'latest'  # the checkpoint init_from=resume starts from: 'latest' or 'best' (lowest val loss)
  c.overwrite = False  # True: a run from scratch or GPT-2 replaces the checkpoints an earlier run left in out_dir
  c.gpt2_dir = ''  # a local GPT-2 folder (Hugging Face layout); '' = the Hugging Face cache
  # wandb logging
  c.wandb_log = False  # log to Weights & Biases (pip install -e ".[wandb]")
  c.wandb_project = 'owt'  # the wandb project
  c.wandb_run_name = 'gpt2'  # the wandb run's name
  # data
  c.dataset = 'openwebtext'  # the data set: data/<dataset>/{train,val}.bin
  c.gradient_accumulation_steps = 5 * 8  # micro-batches per optimizer step
  c.batch_size = 12  # micro-batch size
  c.block_size = 1024  # context length, in tokens
  # model
  c.n_layer = 12  # transformer blocks
  c.n_head = 12  # attention heads (n_embd must divide by it)
  c.n_embd = 768  # embedding width
  c.dropout = 0.0  # dropout rate; 0.0 for pretraining, 0.1+ for finetuning
  c.bias = False  # biases in Linear and LayerNorm layers, as GPT-2
  # AdamW
  c.learning_rate = 6e-4  # peak learning rate
  c.max_iters = 600000  # iterations to train (0..max_iters)
  c.weight_decay = 1e-1  # AdamW's, on the matmul and embedding weights only
  c.beta1 = 0.9  # AdamW's first-moment decay
  c.beta2 = 0.95  # AdamW's second-moment decay
  c.grad_clip = 1.0  # clip the global gradient norm at this value; 0 disables
  # the optimizer
  c.optimizer = 'adamw'  # nanoGPT's 'adamw', or 'muon' (not in nanoGPT: the blocks' matrices by Muon, the rest AdamW)
  c.muon_learning_rate = 0.02  # Muon's peak learning rate, on learning_rate's schedule
  c.muon_momentum = 0.95  # Muon's (Nesterov) momentum
  # learning-rate schedule: linear warmup, cosine decay to min_lr
  c.decay_lr = True  # False: learning_rate throughout
  c.warmup_iters = 2000  # iterations of linear warmup
  c.lr_decay_iters = 600000  # ~= max_iters per Chinchilla
  c.min_lr = 6e-5  # ~= learning_rate / 10 per Chinchilla
  # system
  c.device = 'cpu'  # 'cpu', or 'gpu' / 'cuda' for a GPU
  c.dtype = 'float32'  # 'float32' or 'bfloat16' (compute dtype; weights stay float32)
  c.compile = True  # True: the whole train step is one XLA program
  c.remat = True  # backward recomputes all but the matmul outputs: a third of the memory, as fast (not in nanoGPT)
  c.check_memory = True  # estimate the run's memory before it starts; stop if the machine has less
  c.threads = 0  # threads computing a step's gradients, each over its share of the batch's rows; 0: one a core
  c.fsdp = False  # with several devices: split params and optimizer state across them (else replicated)
  # several processes (python -m jaxgpt.launch sets these on one host; on several hosts, set them on each)
  c.coordinator_address = ''  # HOST:PORT of process 0
  c.num_processes = 1  # processes training together
  c.process_id = 0  # this process's rank, 0..num_processes-1
  c.coordinator_timeout = 300  # seconds to wait for the other processes (jax's default)
  # reproducibility (not in nanoGPT, which seeds torch with 1337)
  c.seed = 1337  # draws the initial weights, the batches and dropout
  return c


def load_config_file(path: str) -> ml_collections.ConfigDict:
  """The config a file gives: its get_config()'s, or, in a nanoGPT config file
  (no get_config, `key = value` lines), its top-level names that are config
  keys, over base_config() as nanoGPT's configurator applies them. Anything
  wrong with the file is one ConfigError naming it."""
  namespace, assigned = run_config_file(path)
  if callable(namespace.get('get_config')):
    values = get_config_values(path, namespace['get_config'])
  else:
    values = {name: namespace[name] for name in assigned  # what a nanoGPT config file sets
              if not name.startswith('_') and not inspect.ismodule(namespace[name]) and not callable(namespace[name])}
    if not values:
      raise ConfigError(f'{path} defines no get_config() and sets no config key: define get_config() returning '
                        'jaxgpt.config.base_config() with your changes, or set keys at the top level as '
                        "nanoGPT's config files do (batch_size = 12)")
  return with_file_values(path, values)


def run_config_file(path: str) -> tuple[dict, set[str]]:
  """The names the file at path defines, executed as nanoGPT's configurator
  does (compile and exec, no import, nothing left in sys.modules), and those
  of them its top-level statements assign."""
  file = pathlib.Path(path)
  if not file.exists():
    raise ConfigError(f'config file {path} not found: pass an existing one, e.g. --config=configs/shakespeare_char.py')
  if file.is_dir():
    raise ConfigError(f'{path} is a folder: pass a config file, e.g. --config=configs/shakespeare_char.py')
  if file.suffix != '.py':
    raise ConfigError(f'{path} is not a .py file: a config file is Python, e.g. --config=configs/shakespeare_char.py')
  try:
    tree = ast.parse(file.read_bytes(), path)
  except OSError as e:
    raise ConfigError(f'cannot read config file {path} ({e.strerror}): check its permissions') from None
  except SyntaxError as e:
    # Python's own rendering of the line and its caret, below the one line
    source_and_caret = ''.join(traceback.format_exception_only(e)[1:-1]).rstrip()
    where = f'{path}, line {e.lineno}' if e.lineno else path
    raise ConfigError(f'{where}: {e.msg}\n{source_and_caret}'.rstrip()) from None
  # nanoGPT's configurator runs the file among train.py's settings: it may read them (min_lr = learning_rate / 10)
  namespace = base_config().to_dict() | {'__name__': '__config__', '__file__': path}
  try:
    exec(compile(tree, path, 'exec'), namespace)
  except SystemExit:  # not an error of its own, but the run would end there, silently
    raise ConfigError(f'{path} calls sys.exit() (or exit()): a config file only sets keys; remove the call') from None
  except Exception as e:
    raise ConfigError(f'{line_of(path, e)}: {type(e).__name__}: {one_line(e)}: fix the config file') from None
  return namespace, {name for name in assigned_names(tree) if name in namespace}


def assigned_names(tree: ast.Module) -> set[str]:
  """The names a module's statements assign, outside its functions and classes."""
  return {node.id for statement in tree.body
          if not isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
          for node in ast.walk(statement) if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store)}


def get_config_values(path: str, get_config) -> dict:
  """The keys and values of the ConfigDict the file's get_config() returns."""
  try:
    config = get_config()
  except Exception as e:
    # ml_collections refuses a value of another type set into base_config()
    field = re.match(r"Could not override field '(\w+)'", str(e)) if isinstance(e, TypeError) else None
    if field and field[1] in base_config():
      raise ConfigError(f'{line_of(path, e)}: {takes(field[1])}') from None
    raise ConfigError(f'{line_of(path, e)}: get_config() raised {type(e).__name__}: {one_line(e)}: '
                      'fix the config file') from None
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f'{path}: get_config() returned {a_type(type(config))}, not an ml_collections.ConfigDict: '
                      'return jaxgpt.config.base_config() with your changes')
  return dict(config.items())


def line_of(path: str, e: Exception) -> str:
  """Where in the config file at path e was raised: the innermost of its lines on the traceback."""
  frames = [frame for frame in traceback.extract_tb(e.__traceback__) if frame.filename == path]
  return f'{path}, line {frames[-1].lineno} ({frames[-1].line})' if frames else path


def one_line(value) -> str:
  return ' '.join(str(value).split())


def a_type(t: type) -> str:
  return {int: 'an int', float: 'a float', str: 'a string', type(None): 'None'}.get(t, f'a {t.__name__}')


def example_value(key: str, value) -> object:
  """A value key takes, for a message about value: value's whole number
  (5e3: 5000) if key takes an int, else key's default."""
  default = base_config()[key]
  try:
    number = float(value)
  except (TypeError, ValueError):
    return default
  return int(number) if type(default) is int and number.is_integer() else default


def takes(key: str, value=None) -> str:
  example = example_value(key, value)
  return f'{key} takes {a_type(type(example))}, e.g. {key} = {example!r}'


def with_file_values(path: str, values: dict) -> ml_collections.ConfigDict:
  """base_config() with the values a config file gives: keys it has, each of
  its type (an int may stand for a float)."""
  c = base_config()
  for key, value in values.items():
    if key not in c:
      raise ConfigError(f'{path} sets {key}, which is not a config key{close_key(key, c)}')
    if not (type(value) is type(c[key]) or (type(c[key]) is float and type(value) is int)):
      shown = one_line(reprlib.repr(value))  # short, on one line
      raise ConfigError(f'{path}: {key} = {shown} is {a_type(type(value))}: {takes(key, value)}')
    c[key] = value
  return c


def close_key(key: str, c: ml_collections.ConfigDict) -> str:
  close = difflib.get_close_matches(key, c.keys(), n=1)
  return f' (did you mean {close[0]}?)' if close else f': valid keys are {", ".join(sorted(c.keys()))}'


_POSITIVE = ('eval_interval', 'log_interval', 'eval_iters', 'gradient_accumulation_steps',
             'batch_size', 'block_size', 'n_layer', 'n_head', 'n_embd', 'num_processes',
             'coordinator_timeout')
_NON_NEGATIVE = ('eval_start', 'threads', 'max_iters', 'weight_decay', 'grad_clip', 'warmup_iters', 'lr_decay_iters',
                 'min_lr')
CHOICES = {
    'init_from': ('scratch', 'resume') + GPT2_MODELS,
    'checkpoint': CHECKPOINTS,
    'device': ('cpu', 'gpu', 'cuda'),
    'dtype': ('float32', 'bfloat16'),
    'optimizer': ('adamw', 'muon'),
}
# numpy's generators refuse a negative seed, and jax keeps a seed's low 32 bits
# only (seed 2**32 would draw what seed 0 draws)
SEEDS = range(2**32)
FLOAT32_MAX = 3.4028234663852886e38


def validate(c: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first bad key and how to fix it."""
  for key, default in base_config().items():
    # the step computes in float32 and int32: a larger number overflows there, or in jax's arguments
    if isinstance(default, float) and not (math.isfinite(c[key]) and abs(c[key]) <= FLOAT32_MAX):
      raise ConfigError(f'{key}={c[key]} is not a finite float32 number: pass e.g. --config.{key}={default}')
    if type(default) is int and key != 'seed' and abs(c[key]) >= 2**30:  # headroom for the schedule's it + 1
      raise ConfigError(f'{key}={c[key]} must be below 2**30 (jax computes with 32-bit integers): pass e.g. '
                        f'--config.{key}={default}')
  for key in _POSITIVE:
    if c[key] < 1:
      raise ConfigError(f'{key}={c[key]} must be >= 1: pass --config.{key}=<a positive integer>')
  for key in _NON_NEGATIVE:
    if c[key] < 0:
      raise ConfigError(f'{key}={c[key]} must be >= 0')
  for key, choices in CHOICES.items():
    if c[key] not in choices:
      raise ConfigError(f'{key}={c[key]!r} is not supported: choose one of {", ".join(choices)}')
  if c.n_embd % c.n_head:
    raise ConfigError(f'n_embd={c.n_embd} is not divisible by n_head={c.n_head}: '
                      f'pick n_embd a multiple of n_head (e.g. --config.n_embd={c.n_head * max(1, c.n_embd // c.n_head)})')
  if c.threads and c.batch_size % c.threads:
    divisors = [k for k in range(1, c.batch_size + 1) if c.batch_size % k == 0]
    raise ConfigError(f'batch_size={c.batch_size} does not split into threads={c.threads} equal shards: pass a '
                      f'--config.threads that divides it ({", ".join(map(str, divisors))}), or 0 to choose')
  if not 0.0 <= c.dropout < 1.0:
    raise ConfigError(f'dropout={c.dropout} must be in [0, 1)')
  if not c.learning_rate > 0:
    raise ConfigError(f'learning_rate={c.learning_rate} must be > 0')
  if not c.muon_learning_rate > 0:
    raise ConfigError(f'muon_learning_rate={c.muon_learning_rate} must be > 0')
  for key in ('beta1', 'beta2', 'muon_momentum'):
    if not 0.0 <= c[key] < 1.0:
      raise ConfigError(f'{key}={c[key]} must be in [0, 1)')
  # nanoGPT's get_lr divides by lr_decay_iters - warmup_iters at iteration
  # warmup_iters; a smaller lr_decay_iters it takes as "no cosine" (the warmup, then min_lr)
  if c.decay_lr and c.lr_decay_iters == c.warmup_iters and c.max_iters >= c.warmup_iters:
    raise ConfigError(f'lr_decay_iters={c.lr_decay_iters} equals warmup_iters: nanoGPT\'s schedule divides by zero '
                      f'at iteration {c.warmup_iters}: pass a larger --config.lr_decay_iters (where the cosine ends, '
                      'usually max_iters), or --config.decay_lr=False for a constant learning rate')
  if c.seed not in SEEDS:
    raise ConfigError(f'seed={c.seed} must be in [0, 2**32): pass e.g. --config.seed=1337')
  # step folders, metrics.jsonl and their rotation need a folder of their own, not the user's files around them
  if not c.out_dir:
    raise ConfigError("out_dir='' would write checkpoints into the current folder: pass a folder, "
                      'e.g. --config.out_dir=out')
  if pathlib.Path(c.out_dir).resolve() == pathlib.Path.cwd().resolve():
    raise ConfigError(f"out_dir='{c.out_dir}' is the current folder: its checkpoints would mix with your files: "
                      'pass a folder of its own, e.g. --config.out_dir=out')
  if c.overwrite and c.init_from == 'resume':
    raise ConfigError('overwrite=True and init_from=resume contradict each other: resume continues the checkpoints '
                      'in out_dir, overwrite replaces them with a new run\'s; pass one of the two')
  for key in ('full_val_context', 'target_val_loss', 'time_limit'):
    if c[key] < 0:
      raise ConfigError(f'{key}={c[key]} must be >= 0 (0: off)')
  if c.full_val_context > c.block_size:
    raise ConfigError(f'full_val_context={c.full_val_context} exceeds block_size={c.block_size}, the longest context '
                      f'the model reads: pass --config.full_val_context={c.block_size} or less')
  if c.full_val_context and c.num_processes > 1:
    raise ConfigError(f'full_val_context evaluates the whole model in one process, and num_processes='
                      f'{c.num_processes}: pass --config.full_val_context=0 (the eval_iters estimate)')
  check_dataset_name(c.dataset, '--config.dataset')
  validate_processes(c)


def validate_processes(c: ml_collections.ConfigDict) -> None:
  """The multi-process keys, before jax.distributed is asked to join anything."""
  if not 0 <= c.process_id < c.num_processes:
    raise ConfigError(f'process_id={c.process_id} must be in [0, {c.num_processes}) with num_processes='
                      f'{c.num_processes}: number the processes 0 to num_processes - 1')
  host, _, port = c.coordinator_address.rpartition(':')
  if c.num_processes > 1 and c.coordinator_address and not (host and port.isdigit() and 0 < int(port) < 2**16):
    raise ConfigError(f'coordinator_address={c.coordinator_address!r} is not HOST:PORT: pass process 0\'s '
                      'address and a free port, e.g. --config.coordinator_address=10.0.0.1:1234')


def check_dataset_name(name: str, flag: str) -> None:
  """A data set is a folder of data/, named plainly: nothing is read or
  written outside data/. flag: how the user gave it (`--config.dataset`)."""
  if name.strip() in ('', '.', '..') or name != name.strip() or '/' in name or '\\' in name:
    raise ConfigError(f'{flag}={name!r} is not a data set name: give the name of a folder in data/, without '
                      f'"/", ".." or blanks around it, e.g. {flag}=shakespeare_char')
