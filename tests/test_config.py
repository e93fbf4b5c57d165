"""Run configs: the recipes in configs/, both command-line spellings, and bad values."""

import pytest

from conftest import REPO_ROOT
from jaxgpt.cli import parse_config
from jaxgpt.config import ConfigError, base_config, model_config, validate

# ml_collections loads config files with the deprecated importlib load_module()
pytestmark = pytest.mark.filterwarnings('ignore:the load_module\\(\\) method is deprecated:DeprecationWarning')

RECIPES = sorted(p.name for p in (REPO_ROOT / 'configs').glob('*.py'))


@pytest.fixture(autouse=True)
def repo_cwd(monkeypatch):
  monkeypatch.chdir(REPO_ROOT)  # config paths are relative to the working directory


def test_recipes_found():
  assert {'shakespeare_char.py', 'shakespeare_char_gpu.py', 'gpt2.py', 'finetune_shakespeare.py'} <= set(RECIPES)


@pytest.mark.parametrize('recipe', RECIPES)
def test_recipe_loads_and_validates(recipe):
  c = parse_config(['train', f'--config=configs/{recipe}'])
  validate(c)
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
  m = model_config(c, vocab_size=65)
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
    ('--config.batch_size=abc', "flag --config.batch_size=abc: invalid literal for int() with base 10: 'abc'"),
    ('--config.n_embd=130', 'n_embd=130 is not divisible by n_head=4'),
    ('--config.block_size=0', 'block_size=0 must be >= 1'),
    ('--config.dropout=1.5', 'dropout=1.5 must be in [0, 1)'),
    ('--config.device=tpu', "device='tpu' is not supported: choose one of cpu, gpu, cuda"),
    ('--config.dtype=float16', "dtype='float16' is not supported: choose one of float32, bfloat16"),
    ('--config.max_iters=-1', 'max_iters=-1 must be >= 0'),
    ('--config.min_lr=0.01', 'min_lr=0.01 must not exceed learning_rate=0.001'),
    ('--config.warmup_iters=5000', 'lr_decay_iters=2000 must be greater than warmup_iters=5000'),
    ('--config.beta2=1.0', 'beta2=1.0 must be in [0, 1)'),
    ('--config.init_from=gpt3', "init_from='gpt3' is not supported: choose one of scratch, resume, gpt2, gpt2-medium, gpt2-large, gpt2-xl"),
])
def test_bad_override(override, message):
  with pytest.raises(ConfigError) as e:
    parse_config(['train', '--config=configs/shakespeare_char.py', override])
  assert message in str(e.value)


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
  with pytest.raises(ConfigError) as e:
    parse_config(['train', '--config=configs/nope.py'])
  assert "No such file or directory: 'configs/nope.py'" in str(e.value)


def test_missing_config_file_with_override():
  with pytest.raises(ConfigError) as e:
    parse_config(['train', 'configs/nope.py', '--batch_size=12'])
  assert "No such file or directory: 'configs/nope.py'" in str(e.value)


def test_no_config_at_all():
  with pytest.raises(ConfigError, match='no config file: pass --config=configs/shakespeare_char.py'):
    parse_config(['train'])
