"""Run configs: the recipes in configs/, nanoGPT's own config files, both
command-line spellings, bad files and bad values."""

import pytest

from conftest import REPO_ROOT
from jaxgpt.cli import parse_config
from jaxgpt.config import ConfigError, base_config
from jaxgpt.model import GPTConfig

RECIPES = sorted(p.name for p in (REPO_ROOT / 'configs').glob('*.py'))


@pytest.fixture(autouse=True)
def repo_cwd(monkeypatch):
  monkeypatch.chdir(REPO_ROOT)  # config paths are relative to the working directory


def test_recipes_found():
  assert {'shakespeare_char.py', 'shakespeare_char_gpu.py', 'gpt2.py', 'finetune_shakespeare.py'} <= set(RECIPES)


@pytest.mark.parametrize('recipe', RECIPES)
def test_recipe_loads_with_the_base_keys_only(recipe):
  c = parse_config(['train', f'--config=configs/{recipe}'])
  assert set(c) == set(base_config())  # recipes override keys, never add any


def test_gpt2_is_nanogpt_defaults():
  c = parse_config(['train', '--config=configs/gpt2.py'])
  assert (c.n_layer, c.n_head, c.n_embd, c.block_size, c.bias) == (12, 12, 768, 1024, False)
  assert (c.batch_size, c.gradient_accumulation_steps) == (12, 40)
  assert (c.learning_rate, c.min_lr) == (6e-4, 6e-5)
  assert (c.max_iters, c.warmup_iters, c.lr_decay_iters) == (600000, 2000, 600000)
  assert (c.weight_decay, c.beta1, c.beta2, c.grad_clip) == (0.1, 0.9, 0.95, 1.0)
  assert (c.dataset, c.out_dir, c.eval_interval, c.eval_iters, c.log_interval) == ('openwebtext', 'out', 2000, 200, 1)


def test_shakespeare_char_gpu_is_nanogpts_recipe():
  # nanoGPT's config/train_shakespeare_char.py, value by value
  c = parse_config(['train', '--config=configs/shakespeare_char_gpu.py'])
  assert c.out_dir == 'out-shakespeare-char'
  assert c.eval_interval == 250
  assert c.eval_iters == 200
  assert c.log_interval == 10
  assert c.always_save_checkpoint is False
  assert c.wandb_log is False
  assert c.wandb_project == 'shakespeare-char'
  assert c.wandb_run_name == 'mini-gpt'
  assert c.dataset == 'shakespeare_char'
  assert c.gradient_accumulation_steps == 1
  assert c.batch_size == 64
  assert c.block_size == 256
  assert (c.n_layer, c.n_head, c.n_embd) == (6, 6, 384)
  assert c.dropout == 0.2
  assert c.learning_rate == 1e-3
  assert c.max_iters == 5000
  assert c.lr_decay_iters == 5000
  assert c.min_lr == 1e-4
  assert c.beta2 == 0.99
  assert c.warmup_iters == 100
  # and nanoGPT's train.py defaults for the rest
  assert (c.beta1, c.weight_decay, c.grad_clip, c.bias, c.decay_lr) == (0.9, 0.1, 1.0, False, True)
  assert c.compile is True and c.remat is True


SEED_COMMAND = dict(device='cpu', compile=False, eval_iters=20, log_interval=1, block_size=64, batch_size=12,
                    n_layer=4, n_head=4, n_embd=128, max_iters=2000, lr_decay_iters=2000, dropout=0.0)


def test_shakespeare_char_is_the_seed_command():
  # the CPU recipe is nanoGPT's seed command but for two keys a CPU user gets
  # better defaults for: a line every 10 iterations, and one fused program
  c = parse_config(['train', '--config=configs/shakespeare_char.py'])
  differing = {key: c[key] for key, value in SEED_COMMAND.items() if c[key] != value}
  assert differing == {'compile': True, 'log_interval': 10}
  gpu = parse_config(['train', '--config=configs/shakespeare_char_gpu.py'])
  others = {key for key in c if key not in SEED_COMMAND and c[key] != gpu[key]}
  assert others == {'remat'}  # the rest is the GPU recipe's (remat: see the config file)


def test_finetune_shakespeare_is_nanogpts_recipe():
  c = parse_config(['train', '--config=configs/finetune_shakespeare.py'])
  assert (c.out_dir, c.eval_interval, c.eval_iters, c.wandb_project) == ('out-shakespeare', 5, 40, 'shakespeare')
  assert c.wandb_run_name.startswith('ft-')
  assert (c.dataset, c.init_from, c.always_save_checkpoint) == ('shakespeare', 'gpt2-xl', False)
  assert (c.batch_size, c.gradient_accumulation_steps, c.max_iters) == (1, 32, 20)
  assert (c.learning_rate, c.decay_lr) == (3e-5, False)  # constant: min_lr (6e-5, above it) plays no part


def test_model_config():
  c = parse_config(['train', '--config=configs/shakespeare_char_gpu.py'])
  m = GPTConfig.from_run_config(c, vocab_size=65)
  assert (m.n_layer, m.n_head, m.n_embd, m.block_size, m.vocab_size) == (6, 6, 384, 256, 65)
  assert (m.dropout, m.bias, m.dtype, m.remat) == (0.2, False, 'float32', True)


def test_nanogpt_spelling_equals_config_flags():
  nanogpt = parse_config(['train', 'configs/shakespeare_char.py', '--batch_size=12', '--compile=False'])
  flags = parse_config(['train', '--config=configs/shakespeare_char.py', '--config.batch_size=12',
                        '--config.compile=False'])
  assert nanogpt.batch_size == 12 and nanogpt.compile is False
  assert nanogpt.to_dict() == flags.to_dict()


def test_override_types():
  c = parse_config(['train', '--config=configs/shakespeare_char.py', '--config.dropout=0',
                    '--config.learning_rate=3e-4', '--config.eval_only=True'])
  assert c.dropout == 0.0 and isinstance(c.dropout, float)
  assert c.learning_rate == 3e-4
  assert c.eval_only is True


@pytest.mark.parametrize('override, message', [
    ('--config.foo=1', "unknown config key 'foo'"),
    ('--config.batch_size=abc', '--config.batch_size=abc is not an int: pass e.g. --config.batch_size=12'),
    ('--config.max_iters=1e3', '--config.max_iters=1e3 is not an int: pass e.g. --config.max_iters=1000'),
    ('--config.learning_rate=fast', '--config.learning_rate=fast is not a float: pass e.g. --config.learning_rate=0.0006'),
    ('--config.compile=maybe', '--config.compile=maybe is not a bool: pass e.g. --config.compile=True'),
    ('--config.n_embd=130', 'n_embd=130 is not divisible by n_head=4'),
    ('--config.block_size=0', 'block_size=0 must be >= 1'),
    ('--config.dropout=1.5', 'dropout=1.5 must be in [0, 1)'),
    ('--config.device=tpu', "device='tpu' is not supported: choose one of cpu, gpu, cuda"),
    ('--config.dtype=float16', "dtype='float16' is not supported: choose one of float32, bfloat16"),
    ('--config.max_iters=-1', 'max_iters=-1 must be >= 0'),
    ('--config.warmup_iters=2000', "lr_decay_iters=2000 equals warmup_iters: nanoGPT's schedule divides by zero at "
                                   'iteration 2000: pass a larger --config.lr_decay_iters'),
    ('--config.lr_decay_iters=-1', 'lr_decay_iters=-1 must be >= 0'),
    ('--config.learning_rate=nan', 'learning_rate=nan is not a finite float32 number: pass e.g. --config.learning_rate=0.0006'),
    ('--config.min_lr=inf', 'min_lr=inf is not a finite float32 number: pass e.g. --config.min_lr=6e-05'),
    ('--config.grad_clip=nan', 'grad_clip=nan is not a finite float32 number'),
    ('--config.weight_decay=-inf', 'weight_decay=-inf is not a finite float32 number'),
    ('--config.beta1=nan', 'beta1=nan is not a finite float32 number'),
    ('--config.dropout=nan', 'dropout=nan is not a finite float32 number'),
    ('--config.seed=-1', 'seed=-1 must be in [0, 2**32): pass e.g. --config.seed=1337'),
    ('--config.seed=4294967296', 'seed=4294967296 must be in [0, 2**32)'),
    ('--config.out_dir=', "out_dir='' would write checkpoints into the current folder: pass a folder, e.g. "
                          '--config.out_dir=out'),
    ('--config.dataset=', "--config.dataset='' is not a data set name"),
    ('--config.dataset=../shakespeare_char', "--config.dataset='../shakespeare_char' is not a data set name"),
    ('--config.process_id=1', 'process_id=1 must be in [0, 1) with num_processes=1'),
    ('--config.num_processes=0', 'num_processes=0 must be >= 1'),
    ('--config.beta2=1.0', 'beta2=1.0 must be in [0, 1)'),
    ('--config.init_from=gpt3', "init_from='gpt3' is not supported: choose one of scratch, resume, gpt2, gpt2-medium, gpt2-large, gpt2-xl"),
    ('--config.checkpoint=worst', "checkpoint='worst' is not supported: choose one of best, latest"),
])
def test_bad_override(override, message):
  with pytest.raises(ConfigError) as e:
    parse_config(['train', '--config=configs/shakespeare_char.py', override])
  assert message in str(e.value)


def test_a_resumed_run_starts_from_the_latest_checkpoint_unless_told():
  assert parse_config(['train', '--config=configs/shakespeare_char.py']).checkpoint == 'latest'
  assert parse_config(['train', '--config=configs/shakespeare_char.py', '--config.checkpoint=best']).checkpoint == 'best'


def test_overwrite_contradicts_resume():
  assert parse_config(['train', '--config=configs/shakespeare_char.py', '--config.overwrite=True']).overwrite is True
  with pytest.raises(ConfigError) as e:
    parse_config(['train', '--config=configs/shakespeare_char.py', '--config.init_from=resume', '--config.overwrite=True'])
  assert str(e.value) == ("overwrite=True and init_from=resume contradict each other: resume continues the checkpoints "
                          "in out_dir, overwrite replaces them with a new run's; pass one of the two")


@pytest.mark.parametrize('overrides, message', [
    (['--config.num_processes=2', '--config.process_id=2'], 'process_id=2 must be in [0, 2) with num_processes=2'),
    (['--config.num_processes=2', '--config.process_id=-1'], 'process_id=-1 must be in [0, 2)'),
    (['--config.num_processes=2', '--config.coordinator_address=localhost'],
     "coordinator_address='localhost' is not HOST:PORT: pass process 0's address and a free port, e.g. "
     '--config.coordinator_address=10.0.0.1:1234'),
    (['--config.num_processes=2', '--config.coordinator_address=localhost:http'], 'is not HOST:PORT'),
    (['--config.num_processes=2', '--config.coordinator_address=:1234'], 'is not HOST:PORT'),
    (['--config.num_processes=2', '--config.coordinator_address=localhost:70000'], 'is not HOST:PORT'),
])
def test_bad_processes(overrides, message):
  with pytest.raises(ConfigError) as e:
    parse_config(['train', '--config=configs/shakespeare_char.py', *overrides])
  assert message in str(e.value)


@pytest.mark.parametrize('overrides, values', [
    (['--config.num_processes=2', '--config.process_id=1', '--config.coordinator_address=10.0.0.1:1234'],
     {'num_processes': 2, 'process_id': 1, 'coordinator_address': '10.0.0.1:1234'}),
    (['--config.num_processes=2', '--config.coordinator_address=[::1]:1234'],
     {'num_processes': 2, 'process_id': 0, 'coordinator_address': '[::1]:1234'}),
    # the address from JAX_COORDINATOR_ADDRESS (parallel.initialize)
    (['--config.num_processes=2'], {'num_processes': 2, 'process_id': 0, 'coordinator_address': ''}),
    (['--config.coordinator_address=not checked with one process'],
     {'num_processes': 1, 'coordinator_address': 'not checked with one process'}),
    (['--config.seed=0'], {'seed': 0}), (['--config.seed=4294967295'], {'seed': 4294967295}),
    # above learning_rate: nanoGPT's cosine rises to it
    (['--config.min_lr=0.01'], {'min_lr': 0.01, 'learning_rate': 1e-3}),
    # past lr_decay_iters=2000: nanoGPT warms up, then holds min_lr
    (['--config.warmup_iters=5000'], {'warmup_iters': 5000, 'lr_decay_iters': 2000}),
    # equal, but the run never gets to 2000
    (['--config.warmup_iters=2000', '--config.max_iters=1999'],
     {'warmup_iters': 2000, 'lr_decay_iters': 2000, 'max_iters': 1999}),
    (['--config.warmup_iters=2000', '--config.decay_lr=False'], {'warmup_iters': 2000, 'decay_lr': False}),
    (['--config.learning_rate=1'], {'learning_rate': 1.0}),  # an int for a float
])
def test_values_nanogpt_takes(overrides, values):
  c = parse_config(['train', '--config=configs/shakespeare_char.py', *overrides])
  assert {key: c[key] for key in values} == values
  assert all(type(c[key]) is type(value) for key, value in values.items())  # 1 read as 1.0, not the int 1


def test_issues_short_run_with_a_recipes_warmup():
  # nanoGPT's short runs: --max_iters=30 --lr_decay_iters=30, the recipe's warmup of 100
  c = parse_config(['train', 'configs/shakespeare_char_gpu.py', '--max_iters=30', '--lr_decay_iters=30'])
  assert (c.warmup_iters, c.lr_decay_iters, c.max_iters) == (100, 30, 30)


def test_unknown_key_lists_valid_keys():
  with pytest.raises(ConfigError) as e:
    parse_config(['train', 'configs/shakespeare_char.py', '--foo=12'])  # nanoGPT spelling too
  assert str(e.value).startswith("unknown config key 'foo': valid keys are always_save_checkpoint, batch_size,")


def test_misspelt_key_is_named_plainly():
  # ml_collections' KeyError for a near miss carries a 'Did you mean' line
  with pytest.raises(ConfigError) as e:
    parse_config(['train', '--config=configs/shakespeare_char.py', '--config.batchsize=12'])
  message = str(e.value)
  assert message.startswith("unknown config key 'batchsize'")
  assert '\\' not in message and '\n' not in message  # one readable line, no escaped repr


def test_fix_is_suggested():
  with pytest.raises(ConfigError, match=r'pick n_embd a multiple of n_head \(e\.g\. --config\.n_embd=96\)'):
    parse_config(['train', '--config=configs/shakespeare_char_gpu.py', '--config.n_embd=100'])


def test_constant_lr_needs_no_decay_window():
  c = parse_config(['train', '--config=configs/shakespeare_char.py', '--config.warmup_iters=5000',
                    '--config.decay_lr=False'])
  assert c.decay_lr is False


def test_stray_argument():
  with pytest.raises(ConfigError, match=r"unexpected arguments \['extra'\]: overrides are --config.key=value"):
    parse_config(['train', '--config=configs/shakespeare_char.py', 'extra'])


def test_missing_config_file():
  with pytest.raises(ConfigError, match='^config file configs/nope.py not found: pass an existing one, '
                                        r'e\.g\. --config=configs/shakespeare_char\.py$'):
    parse_config(['train', '--config=configs/nope.py'])


def test_missing_config_file_with_override():
  with pytest.raises(ConfigError, match='^config file configs/nope.py not found'):
    parse_config(['train', 'configs/nope.py', '--batch_size=12'])


def test_no_config_file_is_nanogpts_defaults():
  """nanoGPT's `python train.py --batch_size=8` runs train.py's own settings."""
  expected = base_config()
  expected.batch_size = 8
  assert parse_config(['train', '--batch_size=8']).to_dict() == expected.to_dict()


def test_config_file_not_python(tmp_path):
  (tmp_path / 'config.json').write_text('{}')
  with pytest.raises(ConfigError, match=r'config\.json is not a \.py file: a config file is Python'):
    parse_config(['train', f'--config={tmp_path / "config.json"}'])
  with pytest.raises(ConfigError, match=f'^{tmp_path} is a folder: pass a config file'):
    parse_config(['train', f'--config={tmp_path}'])


def test_config_file_with_a_syntax_error(tmp_path):
  path = tmp_path / 'bad.py'
  path.write_text('n_layer = 4\nbatch_size = = 12\n')
  with pytest.raises(ConfigError) as e:
    parse_config(['train', str(path)])
  # as Python shows it: the file's own line, and a caret under the error
  assert str(e.value).splitlines() == [f'{path}, line 2: invalid syntax',
                                       '    batch_size = = 12',
                                       '                 ^']


GET_CONFIG = 'from jaxgpt.config import base_config\n\ndef get_config():\n  config = base_config()\n'


@pytest.mark.parametrize('text, message', [
    ('n_layer = 4\nn_head = n_heads\n',
     "{path}, line 2 (n_head = n_heads): NameError: name 'n_heads' is not defined: fix the config file"),
    ('import nope\n', "{path}, line 1 (import nope): ModuleNotFoundError: No module named 'nope': fix the config file"),
    ('import os\n# batch_size = 12\n',
     '{path} defines no get_config() and sets no config key: define get_config() returning '
     "jaxgpt.config.base_config() with your changes, or set keys at the top level as nanoGPT's config files do"),
    ('def get_confg():\n  return None\n', '{path} defines no get_config() and sets no config key'),
    ('def get_config():\n  raise ValueError("no such recipe")\n',
     '{path}, line 2 (raise ValueError("no such recipe")): get_config() raised ValueError: no such recipe: '
     'fix the config file'),
    ('def get_config():\n  return {"batch_size": 12}\n',
     '{path}: get_config() returned a dict, not an ml_collections.ConfigDict: return jaxgpt.config.base_config() '
     'with your changes'),
    ('def get_config():\n  config = {}\n', '{path}: get_config() returned None, not an ml_collections.ConfigDict'),
    # ml_collections' type-safe ConfigDict refuses inside get_config()
    (GET_CONFIG + "  config.batch_size = '12'\n  return config\n",
     "{path}, line 5 (config.batch_size = '12'): batch_size takes an int, e.g. batch_size = 12"),
    (GET_CONFIG + '  config.compile = 1\n  return config\n',
     '{path}, line 5 (config.compile = 1): compile takes a bool, e.g. compile = True'),
    ('from ml_collections import ConfigDict\ndef get_config():\n  return ConfigDict({"n_layr": 2})\n',
     '{path} sets n_layr, which is not a config key (did you mean n_layer?)'),
    ('from ml_collections import ConfigDict\ndef get_config():\n  return ConfigDict({"batch_size": 1.5})\n',
     '{path}: batch_size = 1.5 is a float: batch_size takes an int, e.g. batch_size = 12'),
    # nanoGPT's way: top-level names
    ('batchsize = 12\n', '{path} sets batchsize, which is not a config key (did you mean batch_size?)'),
    ('zzz = 12\n', '{path} sets zzz, which is not a config key: valid keys are always_save_checkpoint, batch_size,'),
    ("batch_size = '12'\n", "{path}: batch_size = '12' is a string: batch_size takes an int, e.g. batch_size = 12"),
    ('batch_size = 12.5\n', '{path}: batch_size = 12.5 is a float: batch_size takes an int, e.g. batch_size = 12'),
    ('max_iters = 5e3\n', '{path}: max_iters = 5000.0 is a float: max_iters takes an int, e.g. max_iters = 5000'),
    ('batch_size = True\n', '{path}: batch_size = True is a bool: batch_size takes an int'),
    ('compile = 0\n', '{path}: compile = 0 is an int: compile takes a bool, e.g. compile = True'),
    ("learning_rate = 'fast'\n",
     "{path}: learning_rate = 'fast' is a string: learning_rate takes a float, e.g. learning_rate = 0.0006"),
    ('learning_rate = None\n', '{path}: learning_rate = None is None: learning_rate takes a float'),
    ('dataset = ["a", "b"]\n', "{path}: dataset = ['a', 'b'] is a list: dataset takes a string"),
    ("dataset = '../elsewhere'\n", "--config.dataset='../elsewhere' is not a data set name"),
])
def test_bad_config_file(tmp_path, text, message):
  path = tmp_path / 'recipe.py'
  path.write_text(text)
  with pytest.raises(ConfigError) as e:
    parse_config(['train', f'--config={path}'])
  assert message.format(path=path) in str(e.value)
  assert '\n' not in str(e.value)


def test_nanogpt_style_file_is_applied_over_the_defaults(tmp_path):
  path = tmp_path / 'recipe.py'
  path.write_text('import math\n_private = 3\n\ndef helper():\n  return 2\n\n'
                  'n_layer = helper()\nlearning_rate = 1  # an int for a float\nwandb_run_name = f"run-{math.pi:.2f}"\n')
  c = parse_config(['train', str(path), '--n_layer=3'])
  expected = base_config()
  expected.update(n_layer=3, learning_rate=1.0, wandb_run_name='run-3.14')
  assert c.to_dict() == expected.to_dict()
  assert type(c.learning_rate) is float



def test_nanogpt_style_file_reads_the_settings_before_it(tmp_path):
  """nanoGPT's configurator execs a file among train.py's globals: a line may
  read a default, or a value set above it."""
  path = tmp_path / 'recipe.py'
  path.write_text('min_lr = learning_rate / 10\nbatch_size = 2 * batch_size\n')
  c = parse_config(['train', str(path)])
  assert (c.min_lr, c.batch_size) == (pytest.approx(6e-5), 24)
  path.write_text('learning_rate = 1e-3\nmin_lr = learning_rate / 10\n')
  assert parse_config(['train', str(path)]).min_lr == pytest.approx(1e-4)

# nanoGPT's config files, and what nanoGPT's train.py would run with them:
# its defaults (base_config's) but for what each file sets
NANOGPT_CONFIG_CHANGES = {
    'eval_gpt2.py': dict(batch_size=8, eval_iters=500, eval_only=True, init_from='gpt2'),
    'eval_gpt2_medium.py': dict(batch_size=8, eval_iters=500, eval_only=True, init_from='gpt2-medium'),
    'eval_gpt2_large.py': dict(batch_size=8, eval_iters=500, eval_only=True, init_from='gpt2-large'),
    'eval_gpt2_xl.py': dict(batch_size=8, eval_iters=500, eval_only=True, init_from='gpt2-xl'),
    'train_gpt2.py': dict(wandb_log=True, wandb_run_name='gpt2-124M', eval_interval=1000, log_interval=10),
}


@pytest.fixture
def nanogpt_configs(nanogpt_dir):
  """nanoGPT's config/*.py as they are."""
  return nanogpt_dir / 'config'


def test_nanogpt_configs_found(nanogpt_configs):
  assert {p.name for p in nanogpt_configs.glob('*.py')} == set(NANOGPT_CONFIG_CHANGES) | {
      'train_shakespeare_char.py', 'finetune_shakespeare.py'}


@pytest.mark.parametrize('name', NANOGPT_CONFIG_CHANGES)
def test_nanogpt_config_file(name, nanogpt_configs):
  c = parse_config(['train', str(nanogpt_configs / name)])
  changed = {key: value for key, value in c.items() if value != base_config()[key]}
  assert changed == NANOGPT_CONFIG_CHANGES[name]


def test_nanogpt_train_shakespeare_char_is_the_gpu_recipe(nanogpt_configs):
  nanogpt = parse_config(['train', str(nanogpt_configs / 'train_shakespeare_char.py')])
  assert nanogpt.to_dict() == parse_config(['train', 'configs/shakespeare_char_gpu.py']).to_dict()


def test_nanogpt_seed_command_as_typed(nanogpt_configs):
  # nanoGPT README's CPU run, word for word but for the path to its config file
  argv = ['train.py', str(nanogpt_configs / 'train_shakespeare_char.py'), '--device=cpu', '--compile=False',
          '--eval_iters=20', '--log_interval=1', '--block_size=64', '--batch_size=12', '--n_layer=4', '--n_head=4',
          '--n_embd=128', '--max_iters=2000', '--lr_decay_iters=2000', '--dropout=0.0']
  c = parse_config(argv)
  recipe = parse_config(['train', 'configs/shakespeare_char.py', '--compile=False', '--log_interval=1'])
  assert c.to_dict() == recipe.to_dict() | {'remat': True}  # the CPU recipe turns remat off


def test_nanogpt_finetune_shakespeare_is_the_recipe(nanogpt_configs):
  nanogpt = parse_config(['train', str(nanogpt_configs / 'finetune_shakespeare.py')])
  recipe = parse_config(['train', 'configs/finetune_shakespeare.py'])
  assert nanogpt.wandb_run_name.startswith('ft-')  # 'ft-' + str(time.time())
  assert {**nanogpt.to_dict(), 'wandb_run_name': ''} == {**recipe.to_dict(), 'wandb_run_name': ''}
