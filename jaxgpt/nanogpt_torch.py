"""nanoGPT's own code beside jaxgpt, from a nanoGPT checkout: its model.py
imported (the ckpt.pt tests load into its GPT; needs the torch extra), and
the files its train.py needs laid out in a scratch folder, where
`python -m jaxgpt.bench --nanogpt` and `--memory` run that train.py as it is.

jaxgpt carries no copy of nanoGPT's code. The checkout is the folder named
by --nanogpt_dir, else by $JAXGPT_NANOGPT_DIR, else ../nanoGPT (where `git
clone https://github.com/karpathy/nanoGPT` puts it, run beside this
repository). It is only read: nanoGPT's train.py and prepare.py write
beside themselves (data/, out_dir), so they run in a copy (`lay_out`).
"""

import ast
import functools
import importlib.util
import os
import pathlib
import shutil
import subprocess
import sys
import types

from jaxgpt.errors import JaxGPTError

NANOGPT_DIR_ENV = 'JAXGPT_NANOGPT_DIR'
NANOGPT_URL = 'https://github.com/karpathy/nanoGPT'
# what nanoGPT's train.py needs of its checkout to train on tiny Shakespeare, train.py first
TRAIN_FILES = ('train.py', 'model.py', 'configurator.py', 'config', 'data/shakespeare_char/prepare.py')


def find(name: str, nanogpt_dir: str | os.PathLike | None = None) -> pathlib.Path:
  """name (a file or folder of a checkout) in the nanoGPT checkout in
  nanogpt_dir, else in $JAXGPT_NANOGPT_DIR, else in ../nanoGPT; a
  JaxGPTError when it is not there."""
  folder = pathlib.Path(nanogpt_dir or os.environ.get(NANOGPT_DIR_ENV) or '../nanoGPT').expanduser().resolve()
  path = folder / name
  if not path.exists():
    raise JaxGPTError(f"nanoGPT's {name} not found at {path}: clone {NANOGPT_URL} into {folder}, or name "
                      f'a nanoGPT checkout with --nanogpt_dir=PATH or {NANOGPT_DIR_ENV}=PATH')
  return path


def find_model_py(nanogpt_dir: str | os.PathLike | None = None) -> pathlib.Path:
  return find('model.py', nanogpt_dir)


def checkout(nanogpt_dir: str | os.PathLike | None = None) -> types.ModuleType:
  """nanoGPT's model.py (GPT, GPTConfig, ...) as a module, from the checkout find_model_py finds."""
  return import_model_py(find_model_py(nanogpt_dir))


@functools.cache  # one module per file: the same GPT class at every call
def import_model_py(path: pathlib.Path) -> types.ModuleType:
  # by its path and under a private name, neither in sys.modules nor with its folder on
  # sys.path: nothing else of the checkout (its train.py, configurator.py) becomes importable
  spec = importlib.util.spec_from_file_location('nanogpt_model', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


# -- nanoGPT's train.py, run as it is --------------------------------------------


def train_files(nanogpt_dir: str | os.PathLike | None = None) -> dict[str, pathlib.Path]:
  """The checkout's TRAIN_FILES, by name; the first one missing is a JaxGPTError."""
  return {name: find(name, nanogpt_dir) for name in TRAIN_FILES}


def config_keys(train_py: pathlib.Path) -> set[str]:
  """The settings nanoGPT's train.py takes as --key=value: the names its
  settings block assigns, above its `config_keys = ...` line."""
  keys = set()
  for node in ast.parse(train_py.read_text()).body:
    names = [target.id for target in getattr(node, 'targets', []) if isinstance(target, ast.Name)]
    if names == ['config_keys']:
      break
    keys.update(names)
  return keys


def lay_out(folder: pathlib.Path, files: dict[str, pathlib.Path], corpus: pathlib.Path) -> pathlib.Path:
  """folder, made a nanoGPT checkout of files (train_files') that trains on
  tiny Shakespeare: corpus as its data/shakespeare_char/input.txt (its
  prepare.py would download it), which that prepare.py, run there, turns
  into train.bin, val.bin and meta.pkl (without meta.pkl, train.py would
  take GPT-2's vocabulary, 50304 tokens)."""
  for name, source in files.items():
    (folder / name).parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
      shutil.copytree(source, folder / name, ignore=shutil.ignore_patterns('__pycache__'))
    else:
      shutil.copy(source, folder / name)
  data = folder / 'data' / 'shakespeare_char'
  shutil.copy(corpus, data / 'input.txt')
  if importlib.util.find_spec('requests') is None:  # imported first thing, to download what is here already
    raise JaxGPTError("nanoGPT's data/shakespeare_char/prepare.py imports requests: pip install requests")
  proc = subprocess.run([sys.executable, 'data/shakespeare_char/prepare.py'], cwd=folder, capture_output=True,
                        text=True)
  if proc.returncode or not (data / 'meta.pkl').is_file():
    last = (proc.stderr.strip().splitlines() or ['it wrote no meta.pkl'])[-1]
    raise JaxGPTError(f"nanoGPT's data/shakespeare_char/prepare.py failed in a copy of "
                      f"{files['data/shakespeare_char/prepare.py']}: {last}")
  return folder
