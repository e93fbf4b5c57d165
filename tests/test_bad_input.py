"""Bad input, one table: each case is a user mistake (config, data,
checkpoint, sample prompt, launcher, data preparation; and a full disk)
that must end in one `error:` line naming the problem and the fix, with exit status 1 (2 for the
command-line parsers' usage errors), and leave every file in the working
folder as it was. In-process, in a folder with a prepared data set and a
trained tiny run in `out`."""

import errno
import json
import shutil

import numpy as np
import pytest
from orbax import checkpoint as ocp

from conftest import REPO_ROOT
from jaxgpt import cli, data, launch, prepare, sample

# ml_collections loads config files through a deprecated importlib call
pytestmark = pytest.mark.filterwarnings('ignore:the load_module\\(\\) method is deprecated:DeprecationWarning')

CONFIG = 'configs/shakespeare_char.py'
TINY = ['--config.n_layer=2', '--config.n_head=2', '--config.n_embd=32', '--config.block_size=16',
        '--config.batch_size=4', '--config.max_iters=2', '--config.eval_interval=2', '--config.eval_iters=1',
        '--config.log_interval=1', '--config.warmup_iters=1', '--config.lr_decay_iters=2']


@pytest.fixture(scope='module')
def folder(tmp_path_factory, shakespeare):
  """data/shakespeare_char prepared, a few broken data sets beside it, and `out` holding a trained tiny run."""
  root = tmp_path_factory.mktemp('bad-input')
  (root / 'configs').mkdir()
  shutil.copy(REPO_ROOT / CONFIG, root / 'configs')
  for name, text in BAD_CONFIG_FILES.items():
    (root / 'configs' / name).write_text(text)
  char = root / 'data' / 'shakespeare_char'
  char.mkdir(parents=True)
  shutil.copy(shakespeare, char / 'input.txt')
  data.prepare_shakespeare_char(char)
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
  (root / 'empty.txt').write_text('')
  (root / 'a_file').write_text('not a folder')
  with pytest.MonkeyPatch.context() as patch:
    patch.chdir(root)
    assert cli.main(['train.py', f'--config={CONFIG}', *TINY, '--config.out_dir=out']) == 0
  return root


def train(*args):
  return cli.main, ['train.py', f'--config={CONFIG}', *TINY, *args]


def resume(*args):
  return train('--config.init_from=resume', '--config.out_dir=out', *args)


def sample_(*args):
  return sample.main, ['sample.py', '--out_dir=out', '--num_samples=1', '--max_new_tokens=2', *args]


def config_file(name):
  return cli.main, ['train.py', f'configs/{name}', *TINY]  # nanoGPT's spelling


BAD_CONFIG_FILES = {  # in the folder's configs/
    'syntax.py': 'n_layer = 2\nbatch_size = = 12\n',
    'raises.py': 'n_layer = 2\nn_head = n_heads\n',
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
    'learning rate nan': (train('--config.learning_rate=nan'), 'learning_rate=nan is not a finite number: pass e.g. '
                                                               '--config.learning_rate=0.0006'),
    'min_lr inf': (train('--config.min_lr=inf'), 'min_lr=inf is not a finite number'),
    'grad_clip nan': (train('--config.grad_clip=nan'), 'grad_clip=nan is not a finite number'),
    'decay window of no length': (train('--config.warmup_iters=1', '--config.lr_decay_iters=1'),
                                  "lr_decay_iters=1 equals warmup_iters: nanoGPT's schedule divides by zero at "
                                  'iteration 1'),
    'negative decay': (train('--config.lr_decay_iters=-1'), 'lr_decay_iters=-1 must be >= 0'),
    'unknown dtype': (train('--config.dtype=float16'), "dtype='float16' is not supported"),
    'negative seed': (train('--config.seed=-1'), 'seed=-1 must be in [0, 2**32): pass e.g. --config.seed=1337'),
    'seed past 32 bits': (train('--config.seed=4294967296'), 'seed=4294967296 must be in [0, 2**32)'),
    'empty out_dir': (train('--config.out_dir='), "out_dir='' would write checkpoints into the current folder"),
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
    'missing data set': (train('--config.dataset=nope'), 'data/nope/train.bin not found: prepare the data set first'),
    'data shorter than a block': (train('--config.dataset=short', '--config.out_dir=out-short'),
                                  'holds 10 tokens, fewer than block_size + 1 = 17'),
    'pickled vocabulary': (train('--config.dataset=pickled'), 'meta.pkl is corrupt'),
    'corrupt vocabulary': (train('--config.dataset=corrupt_meta'), 'meta.json is corrupt'),
}

CHECKPOINT_CASES = {
    'resume without out_dir': (train('--config.init_from=resume', '--config.out_dir=nope'), 'does not exist'),
    'resume another shape': (resume('--config.n_layer=3'), '--config.n_layer=3 conflicts with the checkpoint'),
    'resume another vocabulary': (resume('--config.dataset=other_vocab'),
                                  'the vocabulary of dataset other_vocab differs from the one the checkpoint'),
    'scratch over checkpoints': (train('--config.out_dir=out'), 'holds checkpoints of an earlier run'),
    'out_dir not a folder': (train('--config.out_dir=a_file/out'), 'cannot create out_dir'),
}

SAMPLE_CASES = {
    'prompt outside the vocabulary': (sample_('--start=ROMEO: ✓'), "the prompt has characters outside the model's vocabulary: '✓'"),
    'missing prompt file': (sample_('--start=FILE:nope.txt'), 'cannot read the prompt file nope.txt'),
    'temperature 0': (sample_('--temperature=0'), 'temperature=0.0 must be > 0'),
    'top_k 0': (sample_('--top_k=0'), 'top_k=0 must be >= 1'),
    'sample without checkpoints': (sample_('--out_dir=data'), 'no checkpoint in'),
}

TOOL_CASES = {  # the helper modules' command lines: data preparation, checkpoint import and export, ...
    'empty text': ((prepare.main, ['prepare', 'char', 'empty.txt', '--name', 'empty']), 'is empty: a data set needs text'),
}

SIZE_CASES = {  # sizes that cannot run, refused before anything is allocated or written
}

CASES = CONFIG_CASES | DATA_CASES | CHECKPOINT_CASES | SAMPLE_CASES | TOOL_CASES | SIZE_CASES


def snapshot(root):
  """Every file and folder under root, with size and modification time."""
  return {str(p.relative_to(root)): (p.is_dir(), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob('*')}


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


def test_launcher_usage_errors(folder, monkeypatch, capsys):
  monkeypatch.chdir(folder)
  with pytest.raises(SystemExit) as e:
    launch.main(['launch', '--nproc=0', 'train.py'])
  assert e.value.code == 2 and '--nproc=0 must be >= 1' in capsys.readouterr().err
  with pytest.raises(SystemExit) as e:
    launch.main(['launch', 'train.py'])
  assert e.value.code == 2 and 'the following arguments are required: --nproc' in capsys.readouterr().err


def test_the_table_is_long_enough():
  assert len(CASES) >= 20


def test_disk_full_while_saving_is_one_error_line_and_keeps_earlier_checkpoints(folder, monkeypatch, capsys):
  """A save that fails for want of space (ENOSPC, as orbax would raise it):
  the run stops with one line, and the checkpoint already in out is whole."""
  work = folder / 'disk-full'
  shutil.copytree(folder / 'out', work / 'out')
  shutil.copytree(folder / 'data', work / 'data')
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
