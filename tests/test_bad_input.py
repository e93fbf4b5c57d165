"""Bad input, one table: each case is a user mistake (config, data,
checkpoint, sample prompt, launcher, data preparation; and a full disk)
that must end in one `error:` line naming the problem and the fix, with exit status 1 (2 for the
command-line parsers' usage errors), and leave every file in the working
folder as it was. In-process, in a folder with a prepared data set and a
trained tiny run in `out`."""

import contextlib
import errno
import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from orbax import checkpoint as ocp

from conftest import REPO_ROOT, TINY_RUN, config_flags, linux_only, make_workdir, snapshot
from jaxgpt import bench, checkpoint, ckpt_pt, cli, launch, prepare, sample

# ml_collections loads config files through a deprecated importlib call
pytestmark = pytest.mark.filterwarnings('ignore:the load_module\\(\\) method is deprecated:DeprecationWarning')

CONFIG = 'configs/shakespeare_char.py'
TINY = config_flags(TINY_RUN | dict(block_size=16, batch_size=4, max_iters=2, eval_interval=2, eval_iters=1,
                                    log_interval=1, warmup_iters=1, lr_decay_iters=2))


@pytest.fixture(scope='module')
def folder(tmp_path_factory, shakespeare):
  """data/shakespeare_char prepared, a few broken data sets beside it, and `out` holding a trained tiny run."""
  root = tmp_path_factory.mktemp('bad-input')
  (root / 'configs').mkdir()
  shutil.copy(REPO_ROOT / CONFIG, root / 'configs')
  for name, text in BAD_CONFIG_FILES.items():
    (root / 'configs' / name).write_text(text)
  char = make_workdir(root, shakespeare) / 'data' / 'shakespeare_char'
  prepare.prepare_shakespeare_char(char)
  for name in ('short', 'pickled', 'corrupt_meta', 'other_vocab'):
    (root / 'data' / name).mkdir()
  np.arange(10, dtype=np.uint16).tofile(root / 'data' / 'short' / 'train.bin')  # fewer than block_size + 1
  np.arange(10, dtype=np.uint16).tofile(root / 'data' / 'short' / 'val.bin')
  shutil.copy(root / 'data' / 'short' / 'train.bin', root / 'data' / 'short' / 'val.bin')
  for name in ('pickled', 'corrupt_meta', 'other_vocab'):
    for split in ('train', 'val'):
      shutil.copy(char / f'{split}.bin', root / 'data' / name / f'{split}.bin')
  (root / 'data' / 'pickled' / 'meta.pkl').write_bytes(b'\x80\x04N.')
  (root / 'data' / 'corrupt_meta' / 'meta.json').write_text('{"vocab_size": 3, "itos": ["a"]}')
  vocab = json.loads((char / 'meta.json').read_text())['itos']
  (root / 'data' / 'other_vocab' / 'meta.json').write_text(json.dumps({'vocab_size': 65, 'itos': vocab[::-1]}))
  small, meta = (np.arange(100) % 65).astype(np.uint16).tobytes(), (char / 'meta.json').read_bytes()
  for name, changes in {  # a small sound character set, one file changed: bytes, 'folder' or None (absent)
      'empty_train': {'train.bin': b''}, 'empty_val': {'val.bin': b''}, 'odd_train': {'train.bin': small[:-1]},
      'folder_train': {'train.bin': 'folder'}, 'no_val': {'val.bin': None}, 'folder_meta': {'meta.json': 'folder'},
      'strings_meta': {'meta.json': json.dumps({'vocab_size': 2, 'itos': ['ab', 'c']}).encode()},
      'twice_meta': {'meta.json': json.dumps({'vocab_size': 2, 'itos': ['a', 'a']}).encode()},
      'beyond_vocab': {'train.bin': small + np.uint16(65).tobytes()},
      'beyond_val': {'val.bin': np.uint16(70).tobytes() + small},
      'beyond_gpt2': {'meta.json': None, 'train.bin': small + np.uint16(50257).tobytes()},
      'code_meta': {'meta.json': None, 'meta.pkl': b'cposix\nsystem\n(Vtouch pwned\ntR.'},
      'deep_meta': {'meta.json': b'[' * 100000 + b']' * 100000},
      'cut_meta_pkl': {'meta.json': None, 'meta.pkl': pickle.dumps({'vocab_size': 65, 'itos': dict(enumerate(vocab))})[:50]},
      'stoi_meta_pkl': {'meta.json': None, 'meta.pkl': pickle.dumps({
          'vocab_size': 65, 'itos': dict(enumerate(vocab)), 'stoi': {ch: i + 1 for i, ch in enumerate(vocab)}})},
      'two_metas': {'meta.pkl': pickle.dumps({'vocab_size': 65, 'itos': dict(enumerate(vocab[::-1]))})},
      'broken_link_meta': {'meta.json': 'broken link'},
  }.items():
    (root / 'data' / name).mkdir()
    for file, content in ({'train.bin': small, 'val.bin': small, 'meta.json': meta} | changes).items():
      if content == 'folder':
        (root / 'data' / name / file).mkdir()
      elif content == 'broken link':
        (root / 'data' / name / file).symlink_to('nowhere')
      elif content is not None:
        (root / 'data' / name / file).write_bytes(content)
  (root / 'data' / 'notes.txt').write_text('a file where a data set would go')
  (root / 'latin1.txt').write_bytes('caf\u00e9 au lait'.encode('latin-1'))
  (root / 'many_chars.txt').write_text(''.join(chr(c) for c in range(0x10000, 0x20000)), encoding='utf-8')
  (root / 'empty.txt').write_text('')
  os.mkfifo(root / 'fifo')  # text that can be read once, as a pipe's
  with socket.socket(socket.AF_UNIX) as listener:
    listener.bind(str(root / 'socket'))  # the socket's file stays after it is closed
  (root / 'a_file').write_text('not a folder')
  (root / 'strays' / '2024').mkdir(parents=True)  # a user's folder and file named like steps, no checkpoint
  (root / 'strays' / '2024' / 'notes.txt').write_text('mine')
  (root / 'strays' / '2025').write_text('mine too')
  with pytest.MonkeyPatch.context() as patch:
    patch.chdir(root)
    assert cli.main(['train.py', f'--config={CONFIG}', *TINY, '--config.out_dir=out']) == 0
    write_nanogpt_files(root / 'nanogpt')
  for meta in shutil.copytree(root / 'out', root / 'out-no-vocab').glob('*/meta/metadata'):  # as a ckpt.pt
    meta.write_text(json.dumps(json.loads(meta.read_text()) | {'vocab': None}))  # imported without its data set
  shutil.copytree(root / 'out', root / 'busy')
  busy = checkpoint.lock(root / 'busy')  # as a training writing into it holds it
  yield root
  os.close(busy)


def train(*args):
  return cli.main, ['train.py', f'--config={CONFIG}', *TINY, *args]


def resume(*args):  # on from the final state of out's run (before iteration 3), to 10
  return train('--config.init_from=resume', '--config.out_dir=out', '--config.max_iters=10', *args)


def sample_(*args):
  return sample.main, ['sample.py', '--out_dir=out', '--num_samples=1', '--max_new_tokens=2', *args]


def config_file(name):
  return cli.main, ['train.py', f'configs/{name}', *TINY]  # nanoGPT's spelling


BAD_CONFIG_FILES = {  # in the folder's configs/
    'syntax.py': 'n_layer = 2\nbatch_size = = 12\n',
    'raises.py': 'n_layer = 2\nn_head = n_heads\n',
    'exits.py': 'import sys\nsys.exit(0)\n',
    'empty.py': '',
    'get_config_raises.py': 'def get_config():\n  raise ValueError("no such recipe")\n',
    'get_config_dict.py': 'def get_config():\n  return {"batch_size": 12}\n',
    'get_config_none.py': 'def get_config():\n  config = {}\n',
    'get_config_type.py': ('from jaxgpt.config import base_config\n\ndef get_config():\n  config = base_config()\n'
                           "  config.batch_size = '12'\n  return config\n"),
    'get_config_unknown.py': ('from ml_collections import ConfigDict\n\ndef get_config():\n'
                              '  return ConfigDict({"n_layr": 2})\n'),
    'unknown_key.py': 'batchsize = 12\n',
    'str_for_int.py': "batch_size = '12'\n",
    'float_for_int.py': 'batch_size = 12.5\n',
    'str_for_float.py': "learning_rate = 'fast'\n",
    'int_for_bool.py': 'compile = 0\n',
    'dataset_outside.py': "dataset = '../data'\n",
}

# One dict per family; CASES joins them.
CONFIG_CASES = {
    'unknown key': (train('--config.batchsize=12'), "unknown config key 'batchsize'"),
    'wrong type': (train('--config.batch_size=abc'),
                   '--config.batch_size=abc is not an int: pass e.g. --config.batch_size=12'),
    'int as a float': (train('--config.max_iters=1e3'),
                       '--config.max_iters=1e3 is not an int: pass e.g. --config.max_iters=1000'),
    'not a bool': (train('--config.compile=maybe'),
                   '--config.compile=maybe is not a bool: pass e.g. --config.compile=True'),
    'not a number': (train('--config.learning_rate=fast'), '--config.learning_rate=fast is not a float'),
    'heads do not divide': (train('--config.n_embd=33'), 'n_embd=33 is not divisible by n_head=2'),
    'dropout out of range': (train('--config.dropout=1.5'), 'dropout=1.5 must be in [0, 1)'),
    'learning rate 0': (train('--config.learning_rate=0'), 'learning_rate=0.0 must be > 0'),
    'learning rate nan': (train('--config.learning_rate=nan'), 'learning_rate=nan is not a finite float32 number: pass e.g. '
                                                               '--config.learning_rate=0.0006'),
    'min_lr inf': (train('--config.min_lr=inf'), 'min_lr=inf is not a finite float32 number'),
    'grad_clip nan': (train('--config.grad_clip=nan'), 'grad_clip=nan is not a finite float32 number'),
    'decay window of no length': (train('--config.warmup_iters=1', '--config.lr_decay_iters=1'),
                                  "lr_decay_iters=1 equals warmup_iters: nanoGPT's schedule divides by zero at "
                                  'iteration 1'),
    'negative decay': (train('--config.lr_decay_iters=-1'), 'lr_decay_iters=-1 must be >= 0'),
    'negative threads': (train('--config.threads=-1'), 'threads=-1 must be >= 0'),
    'threads do not divide the batch': (train('--config.batch_size=12', '--config.threads=5'),
                                        'batch_size=12 does not split into threads=5 equal shards: pass a '
                                        '--config.threads that divides it (1, 2, 3, 4, 6, 12), or 0 to choose'),
    'unknown dtype': (train('--config.dtype=float16'), "dtype='float16' is not supported"),
    'negative seed': (train('--config.seed=-1'), 'seed=-1 must be in [0, 2**32): pass e.g. --config.seed=1337'),
    'warmup_iters past int32': (train('--config.warmup_iters=2147483647'),
                                'warmup_iters=2147483647 must be below 2**30 (jax computes with 32-bit integers)'),
    'max_iters past int32': (train('--config.max_iters=99999999999999999999'),
                             'max_iters=99999999999999999999 must be below 2**30'),
    'grad_clip past float32': (train('--config.grad_clip=1e308'), 'grad_clip=1e+308 is not a finite float32 number'),
    'seed past 32 bits': (train('--config.seed=4294967296'), 'seed=4294967296 must be in [0, 2**32)'),
    'empty out_dir': (train('--config.out_dir='), "out_dir='' would write checkpoints into the current folder"),
    'out_dir the current folder': (train('--config.out_dir=.'), "out_dir='.' is the current folder: its checkpoints "
                                   'would mix with your files: pass a folder of its own, e.g. --config.out_dir=out'),
    'out_dir the current folder, spelled otherwise': (train('--config.out_dir=data/..'),
                                                      "out_dir='data/..' is the current folder"),
    'empty dataset': (train('--config.dataset='), "--config.dataset='' is not a data set name"),
    'dataset outside data': (train('--config.dataset=../data'), "--config.dataset='../data' is not a data set name"),
    'process_id outside': (train('--config.num_processes=2', '--config.process_id=2'),
                           'process_id=2 must be in [0, 2) with num_processes=2'),
    'no processes': (train('--config.num_processes=0'), 'num_processes=0 must be >= 1'),
    'coordinator not HOST:PORT': (train('--config.num_processes=2', '--config.coordinator_address=localhost'),
                                  "coordinator_address='localhost' is not HOST:PORT"),
    'missing config file': ((cli.main, ['train.py', '--config=configs/nope.py']),
                            'config file configs/nope.py not found: pass an existing one'),
    'config file a folder': ((cli.main, ['train.py', '--config=configs']), 'configs is a folder: pass a config file'),
    'config file not python': ((cli.main, ['train.py', '--config=empty.txt']), 'empty.txt is not a .py file'),
    'config flag without a file': ((cli.main, ['train.py', '--config']), 'Missing value for flag --config'),
    'two config files': ((cli.main, ['train.py', 'configs/empty.py', f'--config={CONFIG}']),
                         'several config files (configs/empty.py, configs/shakespeare_char.py): pass one'),
    'config file syntax error': (config_file('syntax.py'), 'configs/syntax.py, line 2: invalid syntax\n'
                                                          '    batch_size = = 12\n                 ^\n'),
    'config file exits': (config_file('exits.py'), 'configs/exits.py calls sys.exit() (or exit()): a config file only '
                                                   'sets keys; remove the call'),
    'config file raises': (config_file('raises.py'), "configs/raises.py, line 2 (n_head = n_heads): NameError: name "
                                                     "'n_heads' is not defined: fix the config file"),
    'config file sets nothing': (config_file('empty.py'), 'configs/empty.py defines no get_config() and sets no '
                                                          'config key'),
    'get_config raises': (config_file('get_config_raises.py'), 'get_config() raised ValueError: no such recipe'),
    'get_config returns a dict': (config_file('get_config_dict.py'), 'get_config() returned a dict, not an '
                                  'ml_collections.ConfigDict: return jaxgpt.config.base_config() with your changes'),
    'get_config returns None': (config_file('get_config_none.py'), 'get_config() returned None'),
    'get_config sets a str': (config_file('get_config_type.py'), "configs/get_config_type.py, line 5 "
                              "(config.batch_size = '12'): batch_size takes an int, e.g. batch_size = 12"),
    'get_config unknown key': (config_file('get_config_unknown.py'), 'configs/get_config_unknown.py sets n_layr, '
                               'which is not a config key (did you mean n_layer?)'),
    'config file unknown key': (config_file('unknown_key.py'), 'configs/unknown_key.py sets batchsize, which is not '
                                'a config key (did you mean batch_size?)'),
    'config file str for int': (config_file('str_for_int.py'), "configs/str_for_int.py: batch_size = '12' is a string: "
                                'batch_size takes an int, e.g. batch_size = 12'),
    'config file float for int': (config_file('float_for_int.py'),
                                  'batch_size = 12.5 is a float: batch_size takes an int'),
    'config file str for float': (config_file('str_for_float.py'), "learning_rate = 'fast' is a string: learning_rate "
                                  'takes a float'),
    'config file int for bool': (config_file('int_for_bool.py'), 'compile = 0 is an int: compile takes a bool'),
    'config file dataset outside data': (config_file('dataset_outside.py'),
                                         "--config.dataset='../data' is not a data set name"),
}
# the lines of each error, where not one: Python's own rendering of the file's line and a caret
ERROR_LINES = {'config file syntax error': 3}

DATA_CASES = {
    'vocabulary nested past recursion': (train('--config.dataset=deep_meta'), 'deep_meta/meta.json is corrupt (RecursionError'),
    'nanoGPT vocabulary cut short': (train('--config.dataset=cut_meta_pkl'),
                                     'cut_meta_pkl/meta.pkl is corrupt (UnpicklingError: pickle data was truncated)'),
    'nanoGPT stoi not itos inverted': (train('--config.dataset=stoi_meta_pkl'),
                                       'stoi_meta_pkl/meta.pkl is corrupt (ValueError: stoi is not itos inverted)'),
    'meta.json and meta.pkl disagree': (train('--config.dataset=two_metas'),
                                        'two_metas/meta.json and data/two_metas/meta.pkl hold different vocabularies'),
    'vocabulary a broken link': (train('--config.dataset=broken_link_meta'),
                                 'cannot read data/broken_link_meta/meta.json (No such file or directory)'),
    'missing data set': (train('--config.dataset=nope'), 'data/nope/train.bin not found: prepare the data set first'),
    'data shorter than a block': (train('--config.dataset=short', '--config.out_dir=out-short'),
                                  'holds 10 tokens, fewer than block_size + 1 = 17'),
    'pickled vocabulary': (train('--config.dataset=pickled'), 'meta.pkl is corrupt'),
    'corrupt vocabulary': (train('--config.dataset=corrupt_meta'), 'meta.json is corrupt'),
    'empty train.bin': (train('--config.dataset=empty_train'), 'data/empty_train/train.bin is empty: prepare the data set again'),
    'empty val.bin': (train('--config.dataset=empty_val'), 'data/empty_val/val.bin is empty: prepare the data set again'),
    'odd-length train.bin': (train('--config.dataset=odd_train'),
                             'data/odd_train/train.bin holds 199 bytes, an odd number, so it is not uint16 token ids'),
    'train.bin a folder': (train('--config.dataset=folder_train'),
                           'data/folder_train/train.bin is a folder, not a token file: remove it and prepare the data set again'),
    'val.bin missing': (train('--config.dataset=no_val'), 'data/no_val/val.bin not found: prepare the data set first'),
    'meta.json a folder': (train('--config.dataset=folder_meta'),
                           'cannot read data/folder_meta/meta.json (Is a directory): prepare the data set again'),
    'vocabulary not single characters': (train('--config.dataset=strings_meta'),
                                         'data/strings_meta/meta.json is corrupt (ValueError: itos is not a list of single characters)'),
    'vocabulary with a character twice': (train('--config.dataset=twice_meta'),
                                          'data/twice_meta/meta.json is corrupt (ValueError: itos holds a character twice)'),
    'token id beyond the vocabulary': (train('--config.dataset=beyond_vocab'),
                                       'data/beyond_vocab/train.bin holds token id 65, but its vocabulary has 65 tokens'),
    'val token id beyond the vocabulary': (train('--config.dataset=beyond_val'),
                                           'data/beyond_val/val.bin holds token id 70, but its vocabulary has 65 tokens'),
    'token id beyond GPT-2': (train('--config.dataset=beyond_gpt2'),
                              'data/beyond_gpt2/train.bin holds token id 50,257, but its vocabulary has 50,257 tokens'),
    'meta.pkl that names code': (train('--config.dataset=code_meta'),
                                 'data/code_meta/meta.pkl is not plain data (it names posix.system'),
}

CHECKPOINT_CASES = {
    'resume without out_dir': (train('--config.init_from=resume', '--config.out_dir=nope'), 'does not exist'),
    'resume from folders named like steps': (train('--config.init_from=resume', '--config.out_dir=strays'),
                                             'no checkpoint in'),
    'sample from folders named like steps': (sample_('--out_dir=strays'), 'no checkpoint in'),
    'resume past max_iters': (resume('--config.max_iters=1'), 'the checkpoint in out is at iteration 3, past '
                                                               'max_iters=1: raise --config.max_iters to train on'),
    'resume a finished run': (resume('--config.max_iters=2'), 'is at iteration 3, past max_iters=2'),
    'resume from a file': (train('--config.init_from=resume', '--config.out_dir=a_file'),
                           'a_file is a file: point out_dir at the folder a training run wrote its checkpoints to'),
    'sample from a file': (sample_('--out_dir=a_file'), 'a_file is a file: point out_dir at the folder'),
    'resume another shape': (resume('--config.n_layer=3'), '--config.n_layer=3 conflicts with the checkpoint'),
    'resume with another optimizer': (resume('--config.optimizer=muon'), '--config.optimizer=muon conflicts with '
                                      'the checkpoint in out, which has optimizer=adamw: drop the override'),
    'resume another vocabulary': (resume('--config.dataset=other_vocab'),
                                  'the vocabulary of dataset other_vocab differs from the one the checkpoint'),
    'scratch over checkpoints': (train('--config.out_dir=out'), 'holds checkpoints of an earlier run'),
    'out_dir not a folder': (train('--config.out_dir=a_file/out'), 'cannot create out_dir'),
}

SAMPLE_CASES = {
    'prompt outside the vocabulary': (sample_('--start=ROMEO: ✓'), "the prompt has characters outside the model's vocabulary: '✓'"),
    'missing prompt file': (sample_('--start=FILE:nope.txt'), 'cannot read the prompt file nope.txt'),
    'top_k 0': (sample_('--top_k=0'), 'top_k=0 must be >= 1'),
    'sample without checkpoints': (sample_('--out_dir=data'), 'no checkpoint in'),
    'empty prompt': (sample_('--start='), '--start is empty: the model needs a prompt to continue, e.g. '
                     '--start="ROMEO:"'),
    'prompt file named empty': (sample_('--start=FILE:'), '--start=FILE: names no file: pass --start=FILE:<a text'),
    'empty prompt file': (sample_('--start=FILE:empty.txt'), 'the prompt file empty.txt is empty: write the '
                          'prompt into it, or pass it as --start=TEXT'),
    'prompt file a folder': (sample_('--start=FILE:data'), 'cannot read the prompt file data (Is a directory): '
                             'pass --start=FILE:<a text file holding the prompt>'),
    'prompt file not UTF-8': (sample_('--start=FILE:latin1.txt'), 'the prompt file latin1.txt is not UTF-8 text '
                              '(byte 0xe9 at offset 3): save it as UTF-8'),
    'temperature nan': (sample_('--temperature=nan'), 'temperature=nan must be > 0 and finite as a float32'),
    'temperature inf': (sample_('--temperature=inf'), 'temperature=inf must be > 0 and finite as a float32'),
    'temperature negative': (sample_('--temperature=-1'), 'temperature=-1.0 must be > 0'),
    'temperature past float32': (sample_('--temperature=1e39'), 'temperature=1e+39 must be > 0 and finite'),
    'temperature 0 as a float32': (sample_('--temperature=1e-50'), 'temperature=1e-50 must be > 0 and finite as '
                                   'a float32 (1.4e-45 to 3.4e38): pass e.g. --temperature=0.8'),
    'top_k nan': (sample_('--top_k=nan'), "flag --config.top_k=nan: invalid literal for int() with base 10: 'nan'"),
    'top_k negative': (sample_('--top_k=-5'), 'top_k=-5 must be >= 1: pass --top_k=<a positive integer>'),
    'no samples': (sample_('--num_samples=0'), 'num_samples=0 must be >= 1: pass --num_samples=<a positive integer>'),
    'no new tokens': (sample_('--max_new_tokens=-1'), 'max_new_tokens=-1 must be >= 1'),
    'max_new_tokens a float': (sample_('--max_new_tokens=1e9'), 'flag --config.max_new_tokens=1e9: invalid literal '
                               'for int()'),
    'sample seed negative': (sample_('--seed=-1'), 'seed=-1 must be in [0, 2**32): pass e.g. --seed=1337'),
    'sample seed past 32 bits': (sample_('--seed=4294967296'), 'seed=4294967296 must be in [0, 2**32)'),
    'checkpoint neither best nor latest': (sample_('--checkpoint=last'), "checkpoint='last': choose best or latest"),
    'init_from scratch': (sample_('--init_from=scratch'), "init_from='scratch' is not supported: choose resume"),
    'unknown device': (sample_('--device=tpu'), "device='tpu' is not supported: choose one of cpu, gpu, cuda"),
    'float16, refused by train.py too': (sample_('--dtype=float16'), "dtype='float16' is not supported: choose one "
                                         'of float32, bfloat16'),
    'sample from an empty out_dir': (sample_('--out_dir='), 'out_dir is empty: pass --out_dir=<the folder a training run wrote'),
    'prompt file a device': (sample_('--start=FILE:/dev/zero'), 'the prompt file /dev/zero is a device, not a text file'),
    'sample with a stray argument': (sample_('foo'), "unexpected arguments ['foo']: flags are --key=value"),
    'unknown sample flag': (sample_('--max_tokens=5'), "unknown config key 'max_tokens'"),
    'compile not a boolean': (sample_('--compile=maybe'), 'flag --config.compile=maybe'),
    'missing GPT-2 folder': (sample_('--init_from=gpt2', '--gpt2_dir=nope'), 'gpt2_dir nope lacks config.json'),
    'checkpoint without its vocabulary': (sample_('--out_dir=out-no-vocab'), "carries no vocabulary, and its "
                                          "vocab_size 65 is not GPT-2's: put the data set's meta.pkl or meta.json "
                                          'in data/shakespeare_char/ and import the ckpt.pt again'),
    'generation larger than memory': (sample_('--max_new_tokens=1000000000', '--num_samples=1000'),
                                      'not enough memory to sample 1000 x 1,000,000,001 tokens'),
    'generation past 64 bits': (sample_('--max_new_tokens=99999999999999999999'), 'not enough memory to sample '
                                '1 x 100,000,000,000,000,000,000 tokens'),
}

def write_nanogpt_files(folder):
  """folder/ckpt.pt (the run in `out`, exported for nanoGPT), ckpt.pt's spoilt
  in one way each, a corrupt jaxgpt checkpoint and a meta.pkl of 3 characters."""
  import torch  # the ckpt_pt cases need it; the others not
  folder.mkdir()
  assert ckpt_pt.main(['ckpt_pt', 'export', '--out_dir=out', str(folder / 'ckpt.pt')]) == 0
  ckpt = torch.load(folder / 'ckpt.pt', weights_only=True)
  spoilt = {
      'no_model_args': {k: v for k, v in ckpt.items() if k != 'model_args'},
      'no_model': {k: v for k, v in ckpt.items() if k != 'model'},
      'other_shape': ckpt | {'model_args': ckpt['model_args'] | {'block_size': 32}},
      'no_tensors': ckpt | {'model': {'transformer.wte.weight': 'weights'}},
      'other_dataset': ckpt | {'config': ckpt['config'] | {'dataset': 'nope'}},
      'dataset_outside': ckpt | {'config': ckpt['config'] | {'dataset': '../../etc'}},
      'bad_settings': ckpt | {'config': ckpt['config'] | {'learning_rate': -1.0}},
      'other_optimizer': ckpt | {'optimizer': ckpt['optimizer'] | {'state': {0: ckpt['optimizer']['state'][0]}}},
  }
  for name, contents in spoilt.items():
    torch.save(contents, folder / f'{name}.pt')
  torch.save({'model': Payload(), 'model_args': {}}, folder / 'code.pt')
  whole = (folder / 'ckpt.pt').read_bytes()
  for name, part in (('cut_head', whole[:100]), ('cut_half', whole[:len(whole) // 2]), ('cut_tail', whole[:-1]),
                     ('zeros', bytes(len(whole)))):
    (folder / f'{name}.pt').write_bytes(part)
  shutil.copytree('out', folder / 'corrupt_out')
  for meta in (folder / 'corrupt_out').glob('*/meta/metadata'):
    meta.write_text('{not json')
  with open(folder / 'meta.pkl', 'wb') as f:
    pickle.dump({'vocab_size': 3, 'itos': {0: 'a', 1: 'b', 2: 'c'}, 'stoi': {'a': 0, 'b': 1, 'c': 2}}, f)


class Payload:
  """Pickled as a call of print: code torch.load(weights_only=True) must refuse."""

  def __reduce__(self):
    return print, ('this ran',)


def import_(*args):
  return ckpt_pt.main, ['ckpt_pt', 'import', *args]


def export(*args):
  return ckpt_pt.main, ['ckpt_pt', 'export', *args]


TOOL_CASES = {  # the helper modules' command lines: data preparation, checkpoint import and export, ...
    'empty text': ((prepare.main, ['prepare', 'char', 'empty.txt', '--name', 'empty']), 'is empty: a data set needs text'),
    'prepare over a data set': ((prepare.main, ['prepare', 'char', 'empty.txt', '--name', 'shakespeare_char']),
                                'data/shakespeare_char already holds a data set (train.bin, val.bin, meta.json): '
                                'pass --overwrite to replace it, or another --name'),
    "prepare over nanoGPT's data set": ((prepare.main, ['prepare', 'char', 'empty.txt', '--name', 'code_meta']),
                                        'data/code_meta already holds a data set (train.bin, val.bin, meta.pkl)'),
    'prepare, empty name': ((prepare.main, ['prepare', 'char', 'empty.txt', '--name', '']),
                            "--name='' is not a data set name: give the name of a folder in data/"),
    'prepare, name outside data/': ((prepare.main, ['prepare', 'char', 'empty.txt', '--name', '../escaped']),
                                    "--name='../escaped' is not a data set name"),
    'prepare a device': ((prepare.main, ['prepare', 'char', '/dev/zero', '--name', 'zeros']),
                         '/dev/zero is a device, not a file: its text is read twice (the vocabulary, then the ids), so '
                         'save it to a file first (e.g. cmd > input.txt) and give that path'),
    'prepare a FIFO': ((prepare.main, ['prepare', 'char', 'fifo', '--name', 'fifo']),  # no writer: not opened, no hang
                       'fifo is a pipe, not a file: its text is read twice'),
    'prepare a FIFO over a data set': ((prepare.main, ['prepare', 'char', 'fifo', '--name', 'shakespeare_char',
                                                       '--overwrite']), 'fifo is a pipe, not a file'),
    'prepare a socket': ((prepare.main, ['prepare', 'char', 'socket', '--name', 'socket']),
                         'socket is a socket, not a file: its text is read twice'),
    'prepare, a blank name': ((prepare.main, ['prepare', 'char', 'empty.txt', '--name', ' ']),
                              "--name=' ' is not a data set name"),
    'prepare, name ..': ((prepare.main, ['prepare', 'char', 'empty.txt', '--name', '..']), "--name='..' is not a data set name"),
    'prepare, name with a backslash': ((prepare.main, ['prepare', 'char', 'empty.txt', '--name', 'a\\b']),
                                       "--name='a\\\\b' is not a data set name"),
    'prepare into a file': ((prepare.main, ['prepare', 'char', CONFIG, '--name', 'notes.txt']),
                            'data/notes.txt is a file, where a data set is a folder: move the file away, or choose another name'),
    'prepare a missing file': ((prepare.main, ['prepare', 'char', 'nope.txt', '--name', 'nope']),
                               'cannot read nope.txt (No such file or directory): give the path of a UTF-8 text file'),
    'prepare a folder': ((prepare.main, ['prepare', 'char', 'configs', '--name', 'configs']),
                         'configs is a folder: give the path of a UTF-8 text file'),
    'prepare latin-1 text': ((prepare.main, ['prepare', 'char', 'latin1.txt', '--name', 'latin']),
                             'latin1.txt is not UTF-8 text (invalid continuation byte at byte 3): convert it first'),
    'prepare too many characters': ((prepare.main, ['prepare', 'char', 'many_chars.txt', '--name', 'many']),
                                    'has 65,536 distinct characters, more than the 65,535 that uint16 token ids can number'),
    'data command over a data set': ((prepare.dataset_main, ['jaxgpt.data', 'shakespeare_char']),
                                     'data/shakespeare_char already holds a data set (train.bin, val.bin, meta.json): '
                                     'pass --overwrite to prepare it again'),
    'import a missing file': (import_('nope.pt', '--out_dir=imported'), 'nope.pt is not a readable nanoGPT checkpoint (no such file)'),
    'import a folder': (import_('out', '--out_dir=imported'), 'out is a folder: pass the checkpoint file in it, e.g. out/ckpt.pt'),
    'import an empty file': (import_('empty.txt', '--out_dir=imported'), 'empty.txt is empty, not a nanoGPT checkpoint'),
    'import a text file': (import_('a_file', '--out_dir=imported'), 'a_file is not a readable nanoGPT checkpoint (not a file of torch.save)'),
    'import a pickle that names code': (import_('nanogpt/code.pt', '--out_dir=imported'),
                                        'nanogpt/code.pt names code (print), not only tensors and plain data: refused unread'),
    'import without model_args': (import_('nanogpt/no_model_args.pt', '--out_dir=imported'),
                                  "nanogpt/no_model_args.pt has no 'model_args': not a nanoGPT ckpt.pt"),
    'import without model': (import_('nanogpt/no_model.pt', '--out_dir=imported'), "nanogpt/no_model.pt has no 'model'"),
    'import shapes that disagree': (import_('nanogpt/other_shape.pt', '--out_dir=imported'),
                                    "transformer.wpe.weight: shape (16, 32) does not match the model's (32, 32)"),
    'import a model of no tensors': (import_('nanogpt/no_tensors.pt', '--out_dir=imported'), 'holds values that are not tensors'),
    'import settings that cannot run': (import_('nanogpt/bad_settings.pt', '--out_dir=imported'),
                                        'holds settings jaxgpt cannot run (learning_rate=-1.0 must be > 0)'),
    'import an optimizer of another model': (import_('nanogpt/other_optimizer.pt', '--out_dir=imported'),
                                             "optimizer state does not match its model"),
    'import a data set outside data/': (import_('nanogpt/dataset_outside.pt', '--out_dir=imported'),
                                        "holds settings jaxgpt cannot run (--config.dataset='../../etc' is not a data set name"),
    'import without a vocabulary': (import_('nanogpt/other_dataset.pt', '--out_dir=imported'),
                                    'is a character-level model (vocab_size=65) and no data/nope/meta.pkl was found here '
                                    'or in a folder above'),
    'import a vocabulary of another size': (import_('nanogpt/ckpt.pt', '--out_dir=imported', '--meta=nanogpt/meta.pkl'),
                                            'nanogpt/meta.pkl has 3 characters but the model vocab_size=65: pass --meta='),
    'import --meta missing': (import_('nanogpt/ckpt.pt', '--out_dir=imported', '--meta=nope/meta.pkl'),
                              '--meta=nope/meta.pkl is not a file: pass the meta.pkl'),
    'import --meta a folder': (import_('nanogpt/ckpt.pt', '--out_dir=imported', '--meta=data/shakespeare_char'),
                               '--meta=data/shakespeare_char is not a file'),
    'import into checkpoints': (import_('nanogpt/ckpt.pt', '--out_dir=out'),
                                '--out_dir=out is not empty: import into a new or empty folder'),
    'import into a folder of other files': (import_('nanogpt/ckpt.pt', '--out_dir=configs'),
                                            '--out_dir=configs is not empty: import into a new or empty folder'),
    **{f'import a ckpt.pt {how}': (import_(f'nanogpt/{name}.pt', '--out_dir=imported'),
                                   f'nanogpt/{name}.pt is truncated or corrupt (not a whole file of torch.save): was the '
                                   'training or copy that wrote it stopped? Pass a whole ckpt.pt')
       for name, how in (('cut_head', 'cut to its first 100 bytes'), ('cut_half', 'cut in half'),
                         ('cut_tail', 'short of its last byte'), ('zeros', 'of zeros'))},
    'import into a file': (import_('nanogpt/ckpt.pt', '--out_dir=a_file'), '--out_dir=a_file is a file: import into a new or empty folder'),
    'import into a folder that cannot be made': (import_('nanogpt/ckpt.pt', '--out_dir=a_file/imported'),
                                                 'cannot create --out_dir=a_file/imported (Not a directory)'),
    'import into an empty out_dir': (import_('nanogpt/ckpt.pt', '--out_dir='), '--out_dir is empty: name the folder to import into'),
    'export over a file': (export('--out_dir=out', 'nanogpt/ckpt.pt'),
                           'nanogpt/ckpt.pt exists: export to another path, or pass --overwrite to replace it'),
    'export under a file': (export('--out_dir=out', 'a_file/new/ckpt.pt'),
                            'a_file is a file, so no folder can hold a_file/new/ckpt.pt: export to another path'),
    'export to a path ending in /': (export('--out_dir=out', 'newdir/'),
                                     "'newdir/' names a folder: name the file to write, e.g. newdir/ckpt.pt"),
    'export onto a folder': (export('--out_dir=out', 'nanogpt', '--overwrite'), 'nanogpt is a folder: name the file to write, e.g. nanogpt/ckpt.pt'),
    'export from a missing out_dir': (export('--out_dir=nope', 'exported.pt'), 'nope does not exist'),
    'export from a folder without checkpoints': (export('--out_dir=data', 'exported.pt'), 'no checkpoint in'),
    'export a corrupt checkpoint': (export('--out_dir=nanogpt/corrupt_out', 'exported.pt'), 'is corrupt or from another model'),
}

SIZE_CASES = {  # sizes that cannot run, refused before anything is allocated or written
    'block_size beyond memory': (train('--config.block_size=100000', '--config.out_dir=out-big'),
                                 'not enough memory for the weights, gradients and AdamW state'),
    'batch_size beyond memory': (train('--config.batch_size=1000000000', '--config.out_dir=out-big'),
                                 'not enough memory for 2 batches of 1000000000 x 16 tokens drawn at once'),
    'n_layer beyond memory': (train('--config.n_layer=100000000', '--config.out_dir=out-big'),
                              'not enough memory for the weights, gradients and AdamW state'),
    'n_embd beyond memory': (train('--config.n_embd=1000000', '--config.out_dir=out-big'),
                             'not enough memory for the weights, gradients and AdamW state'),
    'resumed beyond memory': (resume('--config.batch_size=1000000000'), 'not enough memory for'),
    'eval_iters beyond memory': (train('--config.eval_iters=1000000000', '--config.out_dir=out-big'),
                                 'not enough memory for 1,000,000,001 batches of 4 x 16 tokens drawn at once (1 '
                                 'micro-batches of a step, 1,000,000,000 of an evaluation): ~'),
    'gradient_accumulation_steps beyond memory': (
        train('--config.gradient_accumulation_steps=1000000000', '--config.out_dir=out-big'),
        'drawn at once (1,000,000,000 micro-batches of a step, 1 of an evaluation): ~'),
}

RUN_CASES = {  # several processes, several writers
    'out_dir in use by another run': (train('--config.init_from=resume', '--config.out_dir=busy'),
                                      'another run is writing into'),
    'unreachable coordinator': (train('--config.num_processes=2', '--config.process_id=1',
                                      '--config.coordinator_address=127.0.0.1:9', '--config.coordinator_timeout=1',
                                      '--config.out_dir=out-two'),
                                'could not reach the coordinator at 127.0.0.1:9 within 1 s'),
}



def joined(*families: dict) -> dict:
  """The families' cases in one table; a name in two families would hide a case, so it stops the module."""
  cases = {}
  for family in families:
    if cases.keys() & family.keys():
      raise ValueError(f'case names in two families: {sorted(cases.keys() & family.keys())}')
    cases |= family
  return cases


CASES = joined(CONFIG_CASES, DATA_CASES, CHECKPOINT_CASES, SAMPLE_CASES, TOOL_CASES, SIZE_CASES, RUN_CASES)


@pytest.mark.parametrize('name', CASES)
def test_bad_input_is_one_error_line_and_changes_nothing(folder, name, monkeypatch, capsys):
  (main, argv), message = CASES[name]
  monkeypatch.chdir(folder)
  before = snapshot(folder)
  assert main(argv) == 1
  out, err = capsys.readouterr()
  assert err.startswith('error: ') and message in err, err
  assert len(err.splitlines()) == ERROR_LINES.get(name, 1), err
  assert snapshot(folder) == before


@linux_only('the CPU affinity (os.sched_getaffinity), which launch holds --nproc against')
def test_launcher_usage_errors(folder, monkeypatch, capsys):
  monkeypatch.chdir(folder)
  with pytest.raises(SystemExit) as e:
    launch.main(['launch', '--nproc=0', 'train.py'])
  assert e.value.code == 2 and '--nproc=0 must be >= 1' in capsys.readouterr().err
  with pytest.raises(SystemExit) as e:
    launch.main(['launch', 'train.py'])
  assert e.value.code == 2 and 'the following arguments are required: --nproc' in capsys.readouterr().err
  with pytest.raises(SystemExit) as e:
    launch.main(['launch', '--nproc=2', 'trian.py'])
  assert e.value.code == 2 and 'trian.py is not a file: give the path of train.py' in capsys.readouterr().err
  with pytest.raises(SystemExit) as e:
    launch.main(['launch', f'--nproc={len(os.sched_getaffinity(0)) + 1}', 'train.py'])
  assert e.value.code == 2 and f"is more than the {len(os.sched_getaffinity(0))} CPUs this process may use" in \
      capsys.readouterr().err
  with pytest.raises(SystemExit) as e:
    launch.main(['launch', '--nproc=1', 'empty.txt'])
  assert e.value.code == 2 and 'empty.txt is not train.py: launch starts training processes only' in capsys.readouterr().err
  (folder / 'train.py').touch()
  with pytest.raises(SystemExit) as e:
    launch.main(['launch', '--nproc=1', 'train.py', '--config.num_processes=3', '--process_id=1'])
  assert e.value.code == 2 and '--config.num_processes, --process_id: launch sets these itself; drop them' in \
      capsys.readouterr().err
  # a mistake in the flags: said once, by the launcher, before any process starts (or any log folder is made)
  for flag, message in (('--config.bogus=1', "unknown config key 'bogus': valid keys are "),
                        ('--config.out_dir=.', "out_dir='.' is the current folder")):
    assert launch.main(['launch', '--nproc=2', '--log_dir=logs', 'train.py', flag]) == 1
    out, err = capsys.readouterr()
    assert out == '' and len(err.splitlines()) == 1 and err.startswith(f'error: {message}'), err
    assert not (folder / 'logs').exists()
  assert launch.main(['launch', '--nproc=2', '--log_dir=empty.txt/logs', 'train.py']) == 1  # no process started
  assert capsys.readouterr() == ('', 'error: cannot create --log_dir=empty.txt/logs (Not a directory): pass a folder '
                                     'you can write to\n')
  (folder / 'train.py').unlink()


def test_bench_usage_errors(capsys):
  for flag in ('--steps=0', '--iters=-1'):
    with pytest.raises(SystemExit) as e:
      bench.main(['bench', flag])
    assert e.value.code == 2 and f'{flag} must be >= 1' in capsys.readouterr().err


@pytest.mark.slow  # trains several steps in process
def test_disk_full_while_saving_is_one_error_line_and_keeps_earlier_checkpoints(folder, monkeypatch, capsys):
  """A save that fails for want of space (ENOSPC, as orbax would raise it):
  the run stops with one line, and the checkpoint already in out is whole."""
  work = folder / 'disk-full'
  shutil.copytree(folder / 'out', work / 'out')
  shutil.copytree(folder / 'data', work / 'data', symlinks=True)
  shutil.copytree(folder / 'configs', work / 'configs')
  monkeypatch.chdir(work)

  def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, 'No space left on device')

  before = snapshot(work / 'out')
  monkeypatch.setattr(ocp.CheckpointManager, 'save', no_space)
  assert cli.main(['train.py', f'--config={CONFIG}', *TINY, '--config.init_from=resume', '--config.out_dir=out',
                   '--config.max_iters=4']) == 1
  err = capsys.readouterr().err
  assert err.splitlines() == [f'error: could not write a checkpoint to {work / "out"} (No space left on device): free '
                              'some space or pick another --config.out_dir; the checkpoints written before are whole, '
                              'resume from them with --config.init_from=resume']
  after = snapshot(work / 'out')
  assert {k: v for k, v in after.items() if k != 'metrics.jsonl'} == {k: v for k, v in before.items() if k != 'metrics.jsonl'}
  monkeypatch.undo()
  monkeypatch.chdir(work)
  assert cli.main(['train.py', f'--config={CONFIG}', *TINY, '--config.init_from=resume', '--config.out_dir=out',
                   '--config.max_iters=4']) == 0  # the earlier checkpoint resumes


@pytest.mark.parametrize('size, kept', [('300k', []), ('1200k', ['6', '8'])])
def test_real_full_disk_stops_at_the_failed_save_with_one_line(folder, tmp_path, monkeypatch, capsys, size, kept):
  """out_dir on a small tmpfs: too small for the first checkpoint, or for a third beside the two kept. One
  error line (true about what was kept), the run stops at that save, no unfinished folder, no orbax traceback."""
  out = tmp_path / 'full'
  out.mkdir()
  if os.geteuid() != 0 or os.system(f'mount -t tmpfs -o size={size} tmpfs {out} 2>/dev/null') != 0:
    pytest.skip('mounting a small tmpfs needs root')
  try:
    monkeypatch.chdir(folder)
    code = cli.main(['train.py', f'--config={CONFIG}', *TINY, f'--config.out_dir={out / "out"}',
                     '--config.max_iters=10', '--config.lr_decay_iters=10', '--config.always_save_checkpoint=True'])
    captured = capsys.readouterr()
    assert code == 1
    whole = ('the checkpoints written before are whole, resume from them with --config.init_from=resume' if kept
             else 'no checkpoint was saved')
    assert captured.err.splitlines() == [f'error: could not write a checkpoint to {out / "out"} (No space left on '
                                         f'device): free some space or pick another --config.out_dir; {whole}']
    assert captured.out.splitlines()[-1] == f'saving checkpoint to {out / "out"}'  # no iteration after it
    assert sorted(p.name for p in (out / 'out').iterdir()) == kept + ['metrics.jsonl']
    for step in kept:
      assert checkpoint.is_checkpoint(out / 'out' / step)
  finally:
    os.system(f'umount {out}')


@contextlib.contextmanager
def read_only(path):
  """path made read-only for this process: by its mode, or for root (whom modes do not stop) by a read-only bind
  mount of it onto itself; the test is skipped where neither can be done."""
  if os.geteuid() != 0:
    path.chmod(0o555)
    try:
      yield
    finally:
      path.chmod(0o755)
    return
  if os.system(f'mount --bind {path} {path} 2>/dev/null && mount -o remount,bind,ro {path} 2>/dev/null') != 0:
    os.system(f'umount {path} 2>/dev/null')
    pytest.skip('a read-only bind mount needs root and mount(8)')
  try:
    yield
  finally:
    os.system(f'umount {path}')


@pytest.mark.parametrize('init_from', ['scratch', 'resume'])
def test_a_read_only_out_dir_is_one_error_line_before_training(folder, tmp_path, monkeypatch, capsys, init_from):
  # opening metrics.jsonl in it gave a 24-line OSError traceback
  out = tmp_path / 'out'
  shutil.copytree(folder / 'out', out)
  monkeypatch.chdir(folder)
  before = snapshot(out)
  with read_only(out):
    code = cli.main(['train.py', f'--config={CONFIG}', *TINY, f'--config.out_dir={out}', '--config.max_iters=4',
                     f'--config.init_from={init_from}', *(['--config.overwrite=True'] if init_from == 'scratch' else [])])
  captured = capsys.readouterr()
  assert code == 1
  reason = 'Read-only file system' if os.geteuid() == 0 else 'Permission denied'
  assert captured.err.splitlines() == [f'error: cannot write metrics.jsonl in out_dir {out} ({reason}): make that '
                                       'folder writable, or pass another --config.out_dir']
  assert snapshot(out) == before
  assert 'iter 0:' not in captured.out


SLOW_SAVE = '''
import sys, time
from orbax.checkpoint._src.checkpointers import async_checkpointer
commit = async_checkpointer._on_commit_callback
def slow_commit(*args):  # a big model's save: seconds in orbax's thread, before the checkpoint is renamed into place
  print('writing a checkpoint', flush=True)
  time.sleep(3)
  commit(*args)
async_checkpointer._on_commit_callback = slow_commit
from jaxgpt import cli
sys.exit(cli.main(['train.py', *sys.argv[1:]]))
'''


def test_second_ctrl_c_during_a_save_abandons_it_in_one_line(folder, tmp_path):
  """Ctrl-C, then Ctrl-C again while orbax writes the checkpoint: one line, exit 130, the unfinished folder removed,
  and the earlier checkpoint kept whole (orbax would have rotated it away once the new one was written)."""
  (tmp_path / 'slow_save.py').write_text(SLOW_SAVE)
  out = tmp_path / 'out'
  run = subprocess.Popen([sys.executable, '-u', str(tmp_path / 'slow_save.py'), f'--config={CONFIG}', *TINY,
                          f'--config.out_dir={out}', '--config.max_iters=100000', '--config.lr_decay_iters=10',
                          '--config.always_save_checkpoint=True'],
                         cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  saves = 0
  for line in run.stdout:
    saves += line == 'writing a checkpoint\n'
    if saves == 2:  # the second save: the first is whole
      assert any(p.name.endswith('.orbax-checkpoint-tmp') for p in out.iterdir())
      run.send_signal(signal.SIGINT)
      time.sleep(0.5)
      run.send_signal(signal.SIGINT)
      break
  stdout, stderr = run.communicate(timeout=300)
  assert run.returncode == 130, stdout[-3000:] + stderr[-3000:]
  assert stderr.splitlines() == ['stopped at once: the checkpoint being saved was abandoned; the earlier ones are whole']
  assert sorted(p.name for p in out.iterdir()) == ['2', 'metrics.jsonl']
  with checkpoint.Checkpoints(str(out), read_only=True) as kept:
    assert kept.meta(2)['iter_num'] == 2
