"""nanoGPT's own code from a checkout: its model.py imported, its train.py's
files laid out in a scratch folder, which checkout, and the one line a user
gets when there is none."""

import pickle
import shutil
import sys

import pytest

from conftest import snapshot
from jaxgpt import nanogpt_torch
from jaxgpt.errors import JaxGPTError


def fake_checkout(folder, nanogpt_dir):
  """folder, holding nanoGPT's model.py (nanogpt_dir's) as a clone would."""
  folder.mkdir(parents=True)
  shutil.copy(nanogpt_dir / 'model.py', folder / 'model.py')
  return folder


def missing_message(folder, name='model.py') -> str:
  return (f"nanoGPT's {name} not found at {folder / name}: clone https://github.com/karpathy/nanoGPT "
          f'into {folder}, or name a nanoGPT checkout with --nanogpt_dir=PATH or JAXGPT_NANOGPT_DIR=PATH')


def test_imports_nanogpts_gpt_without_leaving_a_trace(nanogpt_dir):
  path = str(sys.path)
  nanogpt = nanogpt_torch.checkout(nanogpt_dir)
  assert nanogpt.__file__ == str((nanogpt_dir / 'model.py').resolve())
  assert nanogpt.GPT.__name__ == 'GPT' and nanogpt.GPTConfig().n_layer == 12  # nanoGPT's defaults
  # found by its path: not importable by name, nothing of the checkout on the path
  assert nanogpt.__name__ not in sys.modules and str(sys.path) == path
  assert nanogpt_torch.checkout(nanogpt_dir) is nanogpt  # one module, one GPT class


def test_the_flag_then_the_environment_then_beside(tmp_path, monkeypatch, nanogpt_dir):
  flag, env = fake_checkout(tmp_path / 'flag', nanogpt_dir), fake_checkout(tmp_path / 'env', nanogpt_dir)
  beside = fake_checkout(tmp_path / 'nanoGPT', nanogpt_dir)
  monkeypatch.chdir(fake_checkout(tmp_path / 'jaxgpt', nanogpt_dir))
  monkeypatch.setenv('JAXGPT_NANOGPT_DIR', str(env))
  assert nanogpt_torch.checkout(flag).__file__ == str(flag / 'model.py')
  assert nanogpt_torch.checkout().__file__ == str(env / 'model.py')
  monkeypatch.delenv('JAXGPT_NANOGPT_DIR')
  assert nanogpt_torch.checkout().__file__ == str(beside / 'model.py')  # ../nanoGPT, where a clone goes


def test_no_checkout_is_one_line_naming_the_path_and_the_fix(tmp_path, monkeypatch, nanogpt_dir):
  monkeypatch.delenv('JAXGPT_NANOGPT_DIR', raising=False)
  monkeypatch.chdir(tmp_path)
  with pytest.raises(JaxGPTError) as e:
    nanogpt_torch.checkout()
  assert str(e.value) == missing_message(tmp_path.parent / 'nanoGPT')
  (tmp_path / 'empty').mkdir()  # a folder, but no nanoGPT in it
  with pytest.raises(JaxGPTError) as e:
    nanogpt_torch.checkout('empty')
  assert str(e.value) == missing_message(tmp_path / 'empty')
  # model.py alone is not enough to run train.py: the first file missing, named with the checkout
  with pytest.raises(JaxGPTError) as e:
    nanogpt_torch.train_files(fake_checkout(tmp_path / 'models_only', nanogpt_dir))
  assert str(e.value) == missing_message(tmp_path / 'models_only', 'train.py')
  shutil.copy(nanogpt_dir / 'train.py', tmp_path / 'models_only')
  shutil.copy(nanogpt_dir / 'configurator.py', tmp_path / 'models_only')
  shutil.copytree(nanogpt_dir / 'config', tmp_path / 'models_only' / 'config')
  with pytest.raises(JaxGPTError) as e:
    nanogpt_torch.train_files(tmp_path / 'models_only')
  assert str(e.value) == missing_message(tmp_path / 'models_only', 'data/shakespeare_char/prepare.py')


def test_config_keys_are_those_of_nanogpts_train_py(nanogpt_dir):
  keys = nanogpt_torch.config_keys(nanogpt_dir / 'train.py')
  assert {'n_layer', 'batch_size', 'max_iters', 'dtype', 'compile', 'backend', 'wandb_run_name'} <= keys
  assert len(keys) == 33 and not keys & {'config_keys', 'config', 'ddp', 'master_process', 'seed', 'remat'}


def test_lay_out_runs_nanogpts_prepare_py_in_a_copy(tmp_path, shakespeare, nanogpt_dir):
  pytest.importorskip('requests', reason="nanoGPT's prepare.py imports requests")
  before = snapshot(nanogpt_dir)
  (tmp_path / 'scratch').mkdir()
  scratch = nanogpt_torch.lay_out(tmp_path / 'scratch', nanogpt_torch.train_files(nanogpt_dir), shakespeare)
  assert snapshot(nanogpt_dir) == before
  for name in ('train.py', 'model.py', 'configurator.py', 'config/train_shakespeare_char.py',
               'data/shakespeare_char/prepare.py'):
    assert (scratch / name).read_bytes() == (nanogpt_dir / name).read_bytes(), name
  data = scratch / 'data' / 'shakespeare_char'
  assert (data / 'input.txt').read_bytes() == shakespeare.read_bytes()
  meta = pickle.loads((data / 'meta.pkl').read_bytes())  # without it nanoGPT's train.py takes 50304 tokens
  assert meta['vocab_size'] == 65 and meta['itos'][0] == '\n'
  # prepare.py's figures: 90% of 1,115,394 characters for train, as uint16
  assert (data / 'train.bin').stat().st_size == 2 * 1003854 and (data / 'val.bin').stat().st_size == 2 * 111540
