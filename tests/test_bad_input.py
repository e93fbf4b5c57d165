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
  (root / 'latin1.txt').write_bytes('ROMÉO:'.encode('latin-1'))
  for meta in shutil.copytree(root / 'out', root / 'out-no-vocab').glob('*/meta/metadata'):  # as a ckpt.pt
    meta.write_text(json.dumps(json.loads(meta.read_text()) | {'vocab': None}))  # imported without its data set
  return root


def train(*args):
  return cli.main, ['train.py', f'--config={CONFIG}', *TINY, *args]


def resume(*args):
  return train('--config.init_from=resume', '--config.out_dir=out', *args)


def sample_(*args):
  return sample.main, ['sample.py', '--out_dir=out', '--num_samples=1', '--max_new_tokens=2', *args]


# One dict per family; CASES joins them.
CONFIG_CASES = {
    'unknown key': (train('--config.batchsize=12'), "unknown config key 'batchsize'"),
    'wrong type': (train('--config.batch_size=abc'), "flag --config.batch_size=abc: invalid literal for int()"),
    'heads do not divide': (train('--config.n_embd=33'), 'n_embd=33 is not divisible by n_head=2'),
    'dropout out of range': (train('--config.dropout=1.5'), 'dropout=1.5 must be in [0, 1)'),
    'learning rate 0': (train('--config.learning_rate=0'), 'learning_rate=0.0 must be > 0'),
    'decay before warmup ends': (train('--config.warmup_iters=5', '--config.lr_decay_iters=4'),
                                 'lr_decay_iters=4 must be greater than warmup_iters=5'),
    'unknown dtype': (train('--config.dtype=float16'), "dtype='float16' is not supported"),
    'missing config file': ((cli.main, ['train.py', '--config=configs/nope.py']),
                            "No such file or directory: 'configs/nope.py'"),
}

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
    'empty prompt': (sample_('--start='), '--start is empty: the model needs a prompt to continue, e.g. '
                     '--start="ROMEO:"'),
    'prompt file named empty': (sample_('--start=FILE:'), '--start=FILE: names no file: pass --start=FILE:<a text'),
    'empty prompt file': (sample_('--start=FILE:empty.txt'), 'the prompt file empty.txt is empty: write the '
                          'prompt into it, or pass it as --start=TEXT'),
    'prompt file a folder': (sample_('--start=FILE:data'), 'cannot read the prompt file data (Is a directory): '
                             'pass --start=FILE:<a text file holding the prompt>'),
    'prompt file not UTF-8': (sample_('--start=FILE:latin1.txt'), 'the prompt file latin1.txt is not UTF-8 text '
                              '(byte 0xc9 at offset 3): save it as UTF-8'),
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
    'seed negative': (sample_('--seed=-1'), 'seed=-1 must be in [0, 4294967295]: pass e.g. --seed=1337'),
    'seed past 32 bits': (sample_('--seed=4294967296'), 'seed=4294967296 must be in [0, 4294967295]'),
    'checkpoint neither best nor latest': (sample_('--checkpoint=last'), "checkpoint='last': choose best or latest"),
    'init_from scratch': (sample_('--init_from=scratch'), "init_from='scratch' is not supported: choose resume"),
    'unknown device': (sample_('--device=tpu'), "device='tpu' is not supported: choose one of cpu, gpu, cuda"),
    'float16, refused by train.py too': (sample_('--dtype=float16'), "dtype='float16' is not supported: choose one "
                                         'of float32, bfloat16'),
    'empty out_dir': (sample_('--out_dir='), 'out_dir is empty: pass --out_dir=<the folder a training run wrote'),
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
  assert len(err.splitlines()) == 1, err
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
