"""Bad input, one table: each case is a user mistake (config, data,
checkpoint, sample prompt, launcher, data preparation; and a full disk)
that must end in one `error:` line naming the problem and the fix, with exit status 1 (2 for the
command-line parsers' usage errors), and leave every file in the working
folder as it was. In-process, in a folder with a prepared data set and a
trained tiny run in `out`."""

import errno
import json
import pickle
import shutil

import numpy as np
import pytest
from orbax import checkpoint as ocp

from conftest import REPO_ROOT
from jaxgpt import ckpt_pt, cli, data, launch, prepare, sample

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
    write_nanogpt_files(root / 'nanogpt')
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
                                        "names the data set '../../etc', not a folder of data/"),
    'import without a vocabulary': (import_('nanogpt/other_dataset.pt', '--out_dir=imported'),
                                    'is a character-level model (vocab_size=65) and no data/nope/meta.pkl was found here '
                                    'or in a folder above'),
    'import a vocabulary of another size': (import_('nanogpt/ckpt.pt', '--out_dir=imported', '--meta=nanogpt/meta.pkl'),
                                            'nanogpt/meta.pkl has 3 characters but the model vocab_size=65: pass --meta='),
    'import --meta missing': (import_('nanogpt/ckpt.pt', '--out_dir=imported', '--meta=nope/meta.pkl'),
                              '--meta=nope/meta.pkl is not a file: pass the meta.pkl'),
    'import --meta a folder': (import_('nanogpt/ckpt.pt', '--out_dir=imported', '--meta=data/shakespeare_char'),
                               '--meta=data/shakespeare_char is not a file'),
    'import into checkpoints': (import_('nanogpt/ckpt.pt', '--out_dir=out'), 'out already holds checkpoints: import into an empty --out_dir'),
    'import into a file': (import_('nanogpt/ckpt.pt', '--out_dir=a_file'), '--out_dir=a_file is a file: import into a new or empty folder'),
    'import into a folder that cannot be made': (import_('nanogpt/ckpt.pt', '--out_dir=a_file/imported'),
                                                 'cannot create --out_dir=a_file/imported (Not a directory)'),
    'import into an empty out_dir': (import_('nanogpt/ckpt.pt', '--out_dir='), '--out_dir is empty: name the folder to import into'),
    'export over a file': (export('--out_dir=out', 'nanogpt/ckpt.pt'),
                           'nanogpt/ckpt.pt exists: export to another path, or pass --overwrite to replace it'),
    'export into a missing folder': (export('--out_dir=out', 'nope/ckpt.pt'),
                                     'cannot write nope/ckpt.pt: the folder nope does not exist; create it (mkdir -p nope)'),
    'export onto a folder': (export('--out_dir=out', 'nanogpt', '--overwrite'), 'nanogpt is a folder: name the file to write, e.g. nanogpt/ckpt.pt'),
    'export from a missing out_dir': (export('--out_dir=nope', 'exported.pt'), 'nope does not exist'),
    'export from a folder without checkpoints': (export('--out_dir=data', 'exported.pt'), 'no checkpoint in'),
    'export a corrupt checkpoint': (export('--out_dir=nanogpt/corrupt_out', 'exported.pt'), 'is corrupt or from another model'),
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
