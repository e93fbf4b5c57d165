"""nanoGPT's own model.py, imported from a checkout: which one, and the one
line a user gets when there is none."""

import shutil
import sys

import pytest

from conftest import NANOGPT_DIR, REPO_ROOT
from jaxgpt import nanogpt_torch
from jaxgpt.errors import JaxGPTError


def fake_checkout(folder):
  """folder, holding nanoGPT's model.py (NANOGPT_DIR's) as a clone would."""
  folder.mkdir(parents=True)
  shutil.copy(NANOGPT_DIR / 'model.py', folder / 'model.py')
  return folder


def missing_message(folder) -> str:
  return (f"nanoGPT's model.py not found at {folder / 'model.py'}: clone https://github.com/karpathy/nanoGPT "
          f'into {folder}, or name a nanoGPT checkout with --nanogpt_dir=PATH or JAXGPT_NANOGPT_DIR=PATH')


def test_imports_nanogpts_gpt_without_leaving_a_trace():
  path = str(sys.path)
  nanogpt = nanogpt_torch.checkout(NANOGPT_DIR)
  assert nanogpt.__file__ == str((NANOGPT_DIR / 'model.py').resolve())
  assert nanogpt.GPT.__name__ == 'GPT' and nanogpt.GPTConfig().n_layer == 12  # nanoGPT's defaults
  # found by its path: not importable by name, nothing of the checkout on the path
  assert nanogpt.__name__ not in sys.modules and str(sys.path) == path
  assert nanogpt_torch.checkout(NANOGPT_DIR) is nanogpt  # one module, one GPT class


def test_the_flag_then_the_environment_then_beside(tmp_path, monkeypatch):
  flag, env = fake_checkout(tmp_path / 'flag'), fake_checkout(tmp_path / 'env')
  beside = fake_checkout(tmp_path / 'nanoGPT')
  monkeypatch.chdir(fake_checkout(tmp_path / 'jaxgpt'))
  monkeypatch.setenv('JAXGPT_NANOGPT_DIR', str(env))
  assert nanogpt_torch.checkout(flag).__file__ == str(flag / 'model.py')
  assert nanogpt_torch.checkout().__file__ == str(env / 'model.py')
  monkeypatch.delenv('JAXGPT_NANOGPT_DIR')
  assert nanogpt_torch.checkout().__file__ == str(beside / 'model.py')  # ../nanoGPT, where a clone goes


def test_no_checkout_is_one_line_naming_the_path_and_the_fix(tmp_path, monkeypatch):
  monkeypatch.delenv('JAXGPT_NANOGPT_DIR', raising=False)
  monkeypatch.chdir(tmp_path)
  with pytest.raises(JaxGPTError) as e:
    nanogpt_torch.checkout()
  assert str(e.value) == missing_message(tmp_path.parent / 'nanoGPT')
  (tmp_path / 'empty').mkdir()  # a folder, but no nanoGPT in it
  with pytest.raises(JaxGPTError) as e:
    nanogpt_torch.checkout('empty')
  assert str(e.value) == missing_message(tmp_path / 'empty')


def test_loop_takes_nanogpt_dir(tmp_path, capsys):
  argv = ['nanogpt_torch', f'--config={REPO_ROOT / "configs" / "shakespeare_char.py"}',
          f'--nanogpt_dir={tmp_path}', '--config.max_iters=2']
  assert nanogpt_torch.main(argv) == 1
  assert capsys.readouterr().err == f'error: {missing_message(tmp_path)}\n'
