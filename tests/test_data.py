"""Data: tiny Shakespeare prepared as nanoGPT's prepare.py does, and batches."""

import io
import json
import os
import pathlib
import pickle
import shutil
import urllib.request

import numpy as np
import pytest

from conftest import file_size_limit, make_workdir
from jaxgpt import data, gpt2, prepare
from jaxgpt.data import BatchSampler, DataError

# nanoGPT's shakespeare_char vocabulary: the sorted characters of input.txt
CHARS = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


@pytest.fixture(scope='module')
def prepared(shakespeare, tmp_path_factory):
  folder = tmp_path_factory.mktemp('shakespeare_char')
  shutil.copy(shakespeare, folder / 'input.txt')
  prepare.prepare_shakespeare_char(folder)
  return folder


def test_prepare_writes_nanogpts_files(prepared):
  assert sorted(p.name for p in prepared.iterdir()) == ['input.txt', 'meta.json', 'train.bin', 'val.bin']


def test_vocab_is_sorted_characters(prepared):
  itos = data.load_vocab(prepared)
  assert len(itos) == 65
  assert ''.join(itos) == CHARS
  assert json.loads((prepared / 'meta.json').read_text(encoding='utf-8'))['vocab_size'] == 65


def test_split_sizes(prepared):
  # 1,115,394 characters: the first 90% for training, the rest for validation
  train = np.fromfile(prepared / 'train.bin', dtype=np.uint16)
  val = np.fromfile(prepared / 'val.bin', dtype=np.uint16)
  assert len(train) == 1_003_854
  assert len(val) == 111_540
  assert (prepared / 'train.bin').stat().st_size == 2 * 1_003_854  # uint16, no header
  assert train.max() == 64 and val.max() < 65


def test_ids_decode_to_the_text(prepared, shakespeare):
  itos = np.array(data.load_vocab(prepared))
  ids = np.concatenate([np.fromfile(prepared / f'{split}.bin', dtype=np.uint16) for split in ('train', 'val')])
  assert ''.join(itos[ids]) == shakespeare.read_text(encoding='utf-8')
  assert ''.join(itos[ids[:14]]) == 'First Citizen:'


def test_prepare_prints_nanogpts_summary(shakespeare, tmp_path, capsys):
  shutil.copy(shakespeare, tmp_path / 'input.txt')
  prepare.prepare_shakespeare_char(tmp_path)
  assert capsys.readouterr().out.splitlines() == [
      'length of dataset in characters: 1,115,394',
      'vocab size: 65',
      'train has 1,003,854 tokens',
      'val has 111,540 tokens',
  ]


def test_no_meta_means_gpt2_tokens(tmp_path):
  assert data.load_vocab(tmp_path) is None


@pytest.mark.parametrize('content', [
    '{"vocab_size": 65, "itos": ["a"',  # truncated JSON
    '{"vocab_size": 3, "itos": ["a", "b"]}',  # sizes disagree
    '{"itos": ["a", "b"]}',  # no vocab_size
    '["a", "b"]',  # not an object
    '{"vocab_size": 2, "itos": "ab"}',  # a string, not a list
    '{"vocab_size": 2, "itos": ["ab", "c"]}',  # not single characters
    '{"vocab_size": 2, "itos": ["a", 1]}',
    '{"vocab_size": 2, "itos": ["a", "a"]}',  # a character twice: which id would it encode to?
])
def test_corrupt_meta_json(tmp_path, content):
  (tmp_path / 'meta.json').write_text(content)
  with pytest.raises(DataError, match=f'{tmp_path / "meta.json"} is corrupt .*: prepare the data set again'):
    data.load_vocab(tmp_path)


def test_nanogpt_meta_pkl_is_read_as_plain_data(tmp_path):
  """nanoGPT's prepare.py pickles {'vocab_size', 'itos': {id: char}, 'stoi'}."""
  chars = sorted(set('to be or not\n'))
  with (tmp_path / 'meta.pkl').open('wb') as f:
    pickle.dump({'vocab_size': len(chars), 'itos': dict(enumerate(chars)),
                 'stoi': {ch: i for i, ch in enumerate(chars)}}, f)
  assert data.load_vocab(tmp_path) == chars


class RunsCode:
  def __reduce__(self):
    return (os.system, ('touch pwned',))


def test_meta_pkl_that_names_code_is_refused_unrun(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with (tmp_path / 'meta.pkl').open('wb') as f:
    pickle.dump({'vocab_size': 1, 'itos': {0: RunsCode()}}, f)
  with pytest.raises(DataError, match=r'meta\.pkl is not plain data \(it names posix\.system, and only plain data is '
                                      r'read\): a pickle that names code is refused'):
    data.load_vocab(tmp_path)
  assert not (tmp_path / 'pwned').exists()


@pytest.fixture
def counting_tokens(tmp_path):
  path = tmp_path / 'tokens.bin'
  np.arange(1000, dtype=np.uint16).tofile(path)  # token i at offset i
  return path


# the largest vocabulary a uint16 file holds, and the first of the 1000 ids at its edge
UINT16_VOCAB = 2**16
EDGE = UINT16_VOCAB - 1000


def test_batch_targets_are_inputs_shifted_by_one(tmp_path):
  """Ids up to 65,535, their top bit set and their two bytes unequal: a
  file read as int16, big-endian or bytes, or from the wrong offset, gives
  other numbers."""
  path = tmp_path / 'tokens.bin'
  np.arange(EDGE, UINT16_VOCAB, dtype='<u2').tofile(path)  # token EDGE + i at offset i, little-endian as nanoGPT's
  x, y = BatchSampler(path, block_size=8, batch_size=4, vocab_size=UINT16_VOCAB)(np.random.default_rng(0), steps=3)
  assert x.shape == y.shape == (3, 4, 8)
  assert x.dtype == y.dtype == np.int32
  starts = x[..., :1] - EDGE
  assert starts.min() >= 0 and starts.max() <= 1000 - 8 - 1  # windows that fit in the file
  np.testing.assert_array_equal(x, EDGE + starts + np.arange(8))  # the file's ids from each start
  np.testing.assert_array_equal(y, x + 1)
  x, y = BatchSampler(path, block_size=999, batch_size=1, vocab_size=UINT16_VOCAB)(np.random.default_rng(0))
  np.testing.assert_array_equal(np.concatenate([x[0, 0], y[0, 0, -1:]]), np.arange(EDGE, UINT16_VOCAB))  # all of it


def test_batches_cover_every_start(counting_tokens):
  # starts are uniform on [0, len - block_size), as nanoGPT's torch.randint(len(data) - block_size)
  x, _ = BatchSampler(counting_tokens, block_size=8, batch_size=1000, vocab_size=1000)(np.random.default_rng(0), steps=20)
  starts = np.unique(x[..., 0])
  assert starts.min() == 0 and starts.max() == 1000 - 8 - 1
  assert len(starts) == 1000 - 8


def test_same_seed_same_batches(counting_tokens):
  def draw(seed):
    sample, rng = BatchSampler(counting_tokens, block_size=8, batch_size=4, vocab_size=1000), np.random.default_rng(seed)
    return [sample(rng, 2) for _ in range(3)]

  first, again, other = draw(1337), draw(1337), draw(1338)
  for (x1, y1), (x2, y2) in zip(first, again):
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
  assert any(not np.array_equal(x1, x3) for (x1, _), (x3, _) in zip(first, other))


def test_short_token_file(tmp_path):
  path = tmp_path / 'val.bin'
  np.zeros(8, np.uint16).tofile(path)
  BatchSampler(path, block_size=7, batch_size=2, vocab_size=1)  # 8 = block_size + 1 is enough
  with pytest.raises(DataError, match=f'{path} holds 8 tokens, fewer than block_size \\+ 1 = 9: '
                                      'lower --config.block_size'):
    BatchSampler(path, block_size=8, batch_size=2, vocab_size=1)


def test_missing_dataset(tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(DataError, match=r"data/openwebtext/train\.bin not found: prepare the data set first "
                                      r"\(nanoGPT's data/openwebtext/prepare\.py writes the same files\)"):
    prepare.ensure_prepared('openwebtext')
  assert capsys.readouterr().out == ''  # nothing it knows how to prepare


def test_missing_val_split(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  (tmp_path / 'data' / 'owt').mkdir(parents=True)
  np.zeros(100, np.uint16).tofile(tmp_path / 'data' / 'owt' / 'train.bin')
  with pytest.raises(DataError, match=r'data/owt/val\.bin not found'):
    prepare.ensure_prepared('owt')


def test_ensure_prepared_prepares_shakespeare(shakespeare, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  folder = make_workdir(tmp_path, shakespeare) / 'data' / 'shakespeare_char'
  assert prepare.ensure_prepared('shakespeare_char').resolve() == folder
  assert (folder / 'train.bin').stat().st_size == 2 * 1_003_854
  assert len(data.load_vocab(folder)) == 65


def test_offline_download_says_where_to_put_input(tmp_path, monkeypatch):
  def offline(*args, **kwargs):
    raise OSError('Network is unreachable')

  monkeypatch.setattr(urllib.request, 'urlopen', offline)
  monkeypatch.chdir(tmp_path)
  with pytest.raises(DataError) as e:
    prepare.ensure_prepared('shakespeare_char')
  message = str(e.value)
  assert message.startswith(f'could not download {prepare.SHAKESPEARE_URL} (Network is unreachable)')
  assert message.endswith('offline, put the file at data/shakespeare_char/input.txt and run again')
  assert not (tmp_path / 'data' / 'shakespeare_char' / 'input.txt').exists()
  assert (tmp_path / 'data' / 'shakespeare_char').is_dir()  # ready for the file, as the message says


def test_data_module_command(shakespeare, tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(SystemExit) as e:  # argparse's usage error
    prepare.dataset_main(['jaxgpt.data', 'openwebtext'])
  assert e.value.code == 2
  assert "argument dataset: invalid choice: 'openwebtext' (choose from 'shakespeare_char', 'shakespeare')" in capsys.readouterr().err
  make_workdir(tmp_path, shakespeare)
  assert prepare.dataset_main(['jaxgpt.data', 'shakespeare_char']) == 0
  assert (tmp_path / 'data' / 'shakespeare_char' / 'val.bin').stat().st_size == 2 * 111_540


@pytest.mark.parametrize('content, message', [
    (b'', 'is empty: prepare the data set again'),
    (b'\0' * 41, 'holds 41 bytes, an odd number, so it is not uint16 token ids (2 bytes each): it was cut short or is '
                  'not a token file; prepare the data set again'),
    (None, 'is a folder, not a token file: remove it and prepare the data set again'),
])
def test_token_file_that_cannot_be_read(tmp_path, content, message):
  path = tmp_path / 'train.bin'
  if content is None:
    path.mkdir()
  else:
    path.write_bytes(content)
  with pytest.raises(DataError) as e:
    BatchSampler(path, block_size=8, batch_size=2, vocab_size=65)
  assert str(e.value) == f'{path} {message}'


@pytest.mark.parametrize('vocab', [list('abc'), None])
def test_token_ids_beyond_the_vocabulary(tmp_path, vocab):
  """An id the vocabulary does not have (it indexes past the embedding
  table: the loss turns NaN) is refused when the file is opened. GPT-2
  tokens go up to 50256, whatever the padded table's size."""
  limit = data.vocab_size(vocab)
  assert limit == (3 if vocab else 50257)
  path = tmp_path / 'val.bin'
  ids = np.arange(100, dtype=np.uint16) % limit
  ids.tofile(path)
  BatchSampler(path, block_size=8, batch_size=2, vocab_size=limit)  # every id in range
  ids[50] = limit
  ids.tofile(tmp_path / 'bad.bin')
  with pytest.raises(DataError) as e:
    BatchSampler(tmp_path / 'bad.bin', block_size=8, batch_size=2, vocab_size=limit)
  assert str(e.value) == (f'{tmp_path / "bad.bin"} holds token id {limit:,}, but its vocabulary has {limit:,} tokens '
                          f'(ids 0 to {limit - 1:,}): the token files and the vocabulary (meta.json, or GPT-2\'s '
                          'without one) come from different preparations; prepare the data set again')


def test_token_ids_checked_afresh_when_the_file_is_replaced(tmp_path):
  path = tmp_path / 'train.bin'
  np.zeros(100, np.uint16).tofile(path)
  BatchSampler(path, block_size=8, batch_size=2, vocab_size=3)
  np.full(100, 7, np.uint16).tofile(tmp_path / 'new.bin')
  os.replace(tmp_path / 'new.bin', path)
  with pytest.raises(DataError, match='holds token id 7'):
    BatchSampler(path, block_size=8, batch_size=2, vocab_size=3)


def test_two_trainings_preparing_at_once(shakespeare, tmp_path, monkeypatch):
  """A second training that starts while the first prepares the data set
  never sees it half made: it prepares it too, each process writing its
  own files and moving them in whole; the first's, moved in after, are the same."""
  monkeypatch.chdir(tmp_path)
  folder = make_workdir(tmp_path, shakespeare) / 'data' / 'shakespeare_char'
  dumps, second = json.dumps, {}

  def second_training_starts(*args, **kwargs):  # while the first writes meta.json, after the ids
    monkeypatch.setattr(json, 'dumps', dumps)
    assert prepare.ensure_prepared('shakespeare_char') == pathlib.Path('data/shakespeare_char')
    second['vocab'] = data.load_vocab(folder)
    second['train'] = np.memmap(folder / 'train.bin', dtype=np.uint16, mode='r')
    return dumps(*args, **kwargs)

  monkeypatch.setattr(json, 'dumps', second_training_starts)
  prepare.ensure_prepared('shakespeare_char')
  assert ''.join(second['vocab']) == CHARS
  np.testing.assert_array_equal(second['train'], np.fromfile(folder / 'train.bin', dtype=np.uint16))
  assert sorted(p.name for p in folder.iterdir()) == ['input.txt', 'meta.json', 'train.bin', 'val.bin']


def test_interrupted_preparation_leaves_the_old_data_set(prepared, tmp_path, monkeypatch):
  """Ctrl-C after the ids are written, before the vocabulary: the files are
  the old data set's, all of them, and no temporary file is left."""
  folder = tmp_path / 'shakespeare_char'
  shutil.copytree(prepared, folder)
  before = {p.name: p.read_bytes() for p in folder.iterdir()}
  (folder / 'input.txt').write_text('a new text\n' * 1000)

  def interrupt(*args, **kwargs):
    raise KeyboardInterrupt

  monkeypatch.setattr(json, 'dumps', interrupt)
  with pytest.raises(KeyboardInterrupt):
    prepare.prepare_shakespeare_char(folder)
  monkeypatch.undo()
  before['input.txt'] = (folder / 'input.txt').read_bytes()
  assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_data_command_replaces_a_data_set_only_with_overwrite(shakespeare, tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)
  folder = make_workdir(tmp_path, shakespeare) / 'data' / 'shakespeare_char'
  assert prepare.dataset_main(['jaxgpt.data', 'shakespeare_char']) == 0
  reading = np.memmap(folder / 'train.bin', dtype=np.uint16, mode='r')  # a training reading it
  old = np.array(reading)
  before = {p.name: p.read_bytes() for p in folder.iterdir()}
  capsys.readouterr()
  assert prepare.dataset_main(['jaxgpt.data', 'shakespeare_char']) == 1
  assert capsys.readouterr().err.splitlines() == [
      'error: data/shakespeare_char already holds a data set (train.bin, val.bin, meta.json): pass --overwrite to '
      'prepare it again']
  assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
  (folder / 'input.txt').write_text('ab\n' * 1000)
  assert prepare.dataset_main(['jaxgpt.data', 'shakespeare_char', '--overwrite']) == 0
  np.testing.assert_array_equal(reading, old)  # the old file, whole, under the old memmap
  assert data.load_vocab(folder) == ['\n', 'a', 'b']
  assert np.fromfile(folder / 'train.bin', dtype=np.uint16)[:3].tolist() == [1, 2, 0]


def test_gpt2_tokens_over_a_character_set_drop_its_vocabulary(tmp_path, monkeypatch):
  """data/shakespeare prepared again in GPT-2 tokens over a character set:
  its meta.json would make the GPT-2 ids read as characters."""
  class Bytes:  # a stand-in for GPT-2's tokenizer: a token per byte
    def encode_ordinary(self, text):
      return list(text.encode('utf-8'))

  monkeypatch.setattr(gpt2, 'tokenizer', lambda gpt2_dir: Bytes())
  monkeypatch.chdir(tmp_path)
  folder = tmp_path / 'data' / 'shakespeare'
  folder.mkdir(parents=True)
  (folder / 'input.txt').write_text('to be or not to be\n' * 100)
  (folder / 'meta.json').write_text(json.dumps({'vocab_size': 2, 'itos': ['a', 'b']}))
  prepare.prepare('shakespeare', overwrite=True)
  assert sorted(p.name for p in folder.iterdir()) == ['input.txt', 'train.bin', 'val.bin']
  assert data.load_vocab(folder) is None
  assert bytes(np.fromfile(folder / 'train.bin', dtype=np.uint16).astype(np.uint8)[:5]) == b'to be'


def test_download_is_whole_or_absent(tmp_path, monkeypatch):
  """A download that cannot be written whole (the disk fills) leaves no
  input.txt: a partial one would be prepared as if it were the text."""
  monkeypatch.setattr(urllib.request, 'urlopen', lambda url, timeout: io.BytesIO(b'First Citizen:\n' * 10_000))
  monkeypatch.chdir(tmp_path)
  with file_size_limit(100_000), pytest.raises(DataError) as e:
    prepare.ensure_prepared('shakespeare_char')
  assert str(e.value).startswith('cannot write to data/shakespeare_char (File too large): ')
  assert list((tmp_path / 'data' / 'shakespeare_char').iterdir()) == []
  prepare.ensure_prepared('shakespeare_char')  # no limit: the download, then the data set
  assert (tmp_path / 'data' / 'shakespeare_char' / 'input.txt').stat().st_size == 150_000
