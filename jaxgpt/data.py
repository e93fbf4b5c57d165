"""Data: token files as nanoGPT writes them, and random batches drawn from them.

A data set is a folder data/<dataset>/ holding train.bin and val.bin (uint16
token ids, memory-mapped) and, for character-level sets, meta.json with the
vocabulary (nanoGPT's meta.pkl is read too, as plain data: no class, no
code). Without either the tokens are GPT-2's. When a data set is opened its
files are checked: whole uint16 ids, each within the vocabulary.

  python -m jaxgpt.data shakespeare_char   # tiny Shakespeare, characters as tokens
  python -m jaxgpt.data shakespeare [--gpt2_dir=FOLDER]   # the same in GPT-2 tokens

A prepared data set is not replaced without --overwrite. Files are written
beside their place and moved into it only when whole, so a training reading
the old files goes on reading them, and an interrupted preparation leaves
the old data set, or none.
"""

import argparse
import contextlib
import functools
import http.client
import json
import os
import pathlib
import pickle
import secrets
import sys
import urllib.request
from typing import BinaryIO, Iterator, Sequence

import numpy as np

from jaxgpt import entry
from jaxgpt.errors import JaxGPTError

SHAKESPEARE_URL = 'https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt'
GPT2_VOCAB_SIZE = 50304  # GPT-2's 50257 rounded up to a multiple of 64, as nanoGPT does
GPT2_TOKENS = 50257  # the ids GPT-2's tokenizer gives: 0 to 50256 (<|endoftext|>)
DATASET_FILES = ('train.bin', 'val.bin', 'meta.json', 'meta.pkl')


class DataError(JaxGPTError):
  pass


def data_dir(dataset: str) -> pathlib.Path:
  return pathlib.Path('data') / dataset


# -- writing -------------------------------------------------------------------


def refuse_to_replace(folder: pathlib.Path, fix: str) -> None:
  """Raises DataError when folder holds a data set's files."""
  found = [name for name in DATASET_FILES if (folder / name).exists()]
  if found:
    raise DataError(f'{folder} already holds a data set ({", ".join(found)}): {fix}')


@contextlib.contextmanager
def replacing(folder: pathlib.Path, names: Sequence[str], stale: Sequence[str] = ()) -> Iterator[dict[str, BinaryIO]]:
  """Files opened to write folder/<name> for each name: temporary files in
  folder, moved into place (os.replace, in the order named) only when the
  block ends without error, and removed when it raises (Ctrl-C too). A
  reader's memmap keeps the old file it opened, and no reader sees a
  half-written one. stale: files removed as the new ones move in (those of the
  data set being replaced that are not written again)."""
  if folder.exists() and not folder.is_dir():
    raise DataError(f'{folder} is a file, where a data set is a folder: move the file away, or choose another name')
  for name in names:
    if (folder / name).is_dir():
      raise DataError(f'{folder / name} is a folder: remove it and run again')
  # a name of its own for each writer (several trainings may prepare a data set at once), made
  # by open('xb') with the user's umask, where tempfile's would be readable by the user alone
  temps = {name: folder / f'.{name}.{secrets.token_hex(8)}.tmp' for name in names}
  files = {}
  try:
    folder.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
      for name, temp in temps.items():
        files[name] = stack.enter_context(temp.open('xb'))
      yield files
    for name in stale:
      (folder / name).unlink(missing_ok=True)
    for name, temp in temps.items():
      os.replace(temp, folder / name)
  except OSError as e:
    raise DataError(f'cannot write to {folder} ({e.strerror or e}): free some space or fix its permissions, '
                    'then run again; its files are as they were') from None
  finally:
    for name in files:
      temps[name].unlink(missing_ok=True)


# -- preparation ---------------------------------------------------------------


def prepare_shakespeare_char(out: pathlib.Path) -> None:
  """nanoGPT's data/shakespeare_char/prepare.py: characters as tokens.

  Reads out/input.txt (downloading it first when absent) and writes train.bin
  and val.bin (first 90% / last 10%) and meta.json. The vocabulary is the
  sorted set of characters, so the ids are nanoGPT's.
  """
  from jaxgpt import prepare  # the preparation of any text as characters, which imports this module
  input_path = out / 'input.txt'
  if not input_path.exists():
    _download(SHAKESPEARE_URL, input_path)
  prepare.write_char_set(input_path, out)


def prepare_shakespeare(out: pathlib.Path, gpt2_dir: str = '') -> None:
  """nanoGPT's data/shakespeare/prepare.py: tiny Shakespeare in GPT-2 tokens
  (the first 90% of the characters for train, the rest for val), for
  finetuning GPT-2. The tokenizer comes from gpt2_dir or the Hugging Face cache."""
  from jaxgpt import gpt2, prepare  # tiktoken: only for GPT-2 tokens
  tokenizer = gpt2.tokenizer(gpt2_dir)
  input_path = out / 'input.txt'
  if not input_path.exists():
    _download(SHAKESPEARE_URL, input_path)
  text = ''.join(prepare.text_chunks(input_path, 'reading'))
  if not text:
    raise DataError(f'{input_path} is empty: a data set needs text')
  split = int(len(text) * 0.9)
  # train.bin moves in last: ensure_prepared takes it for a whole data set
  with replacing(out, ('val.bin', 'train.bin'), stale=('meta.json', 'meta.pkl')) as files:
    for name, part in (('train', text[:split]), ('val', text[split:])):
      ids = np.array(tokenizer.encode_ordinary(part), dtype=np.uint16)
      print(f'{name} has {len(ids):,} tokens')
      files[f'{name}.bin'].write(ids)


def _download(url: str, path: pathlib.Path) -> None:
  print(f'downloading {url}')
  try:
    with urllib.request.urlopen(url, timeout=30) as response:
      text = response.read()
  except (OSError, http.client.HTTPException) as e:  # HTTPException: a connection cut mid-file
    with contextlib.suppress(OSError):  # the folder the user is told to put the file in
      path.parent.mkdir(parents=True, exist_ok=True)
    raise DataError(f'could not download {url} ({e}); offline, put the file at {path} '
                    f'and run again') from None
  with replacing(path.parent, (path.name,)) as files:
    files[path.name].write(text)


PREPARABLE = ('shakespeare_char', 'shakespeare')


def prepare(dataset: str, gpt2_dir: str = '', overwrite: bool = False) -> None:
  """Prepares data/<dataset> (one of PREPARABLE); gpt2_dir: where GPT-2's
  tokenizer is. An existing data set is replaced only with overwrite."""
  if not overwrite:
    refuse_to_replace(data_dir(dataset), 'pass --overwrite to prepare it again')
  if dataset == 'shakespeare_char':
    prepare_shakespeare_char(data_dir(dataset))
  else:
    prepare_shakespeare(data_dir(dataset), gpt2_dir)


# -- loading -------------------------------------------------------------------


def ensure_prepared(dataset: str, gpt2_dir: str = '') -> pathlib.Path:
  """The data set's folder, prepared first when it can be (see PREPARABLE).
  A train.bin says the data set is whole: the preparation moves it in last."""
  folder = data_dir(dataset)
  if not (folder / 'train.bin').exists() and dataset in PREPARABLE:
    print(f'preparing {dataset} in {folder}')
    prepare(dataset, gpt2_dir, overwrite=True)  # another training may be preparing it too: each writes whole files
  for split in ('train', 'val'):
    if not (folder / f'{split}.bin').exists():
      raise DataError(f'{folder / f"{split}.bin"} not found: prepare the data set first '
                      f'(nanoGPT\'s data/{dataset}/prepare.py writes the same files)')
  return folder


class NamesCode(pickle.UnpicklingError):
  pass


class _PlainDataUnpickler(pickle.Unpickler):
  """Unpickles plain data only (dicts, lists, str, int, ...): any class or
  function is refused, so no code in the file can run."""

  def find_class(self, module: str, name: str):
    raise NamesCode(f'it names {module}.{name}, and only plain data is read')


def read_vocab(path: pathlib.Path) -> list[str]:
  """The vocabulary (id -> character) of a meta.json as jaxgpt writes it, or
  of a meta.pkl as nanoGPT's prepare.py writes it ({'vocab_size', 'itos':
  {id: char}, 'stoi'}), read as plain data."""
  try:
    if path.suffix == '.pkl':
      with path.open('rb') as f:
        meta = _PlainDataUnpickler(f).load()
      itos = [meta['itos'][i] for i in range(len(meta['itos']))]
      if 'stoi' in meta and meta['stoi'] != {ch: i for i, ch in enumerate(itos)}:  # what prompts are encoded with
        raise ValueError('stoi is not itos inverted')
    else:
      meta = json.loads(path.read_text(encoding='utf-8'))
      itos = meta['itos']
    if not isinstance(itos, list) or not all(isinstance(ch, str) and len(ch) == 1 for ch in itos):
      raise ValueError('itos is not a list of single characters')
    if len(set(itos)) != len(itos):
      raise ValueError('itos holds a character twice')
    if meta['vocab_size'] != len(itos):
      raise ValueError(f'vocab_size={meta["vocab_size"]!r} but itos has {len(itos)} characters')
  except OSError as e:
    raise DataError(f'cannot read {path} ({e.strerror or e}): prepare the data set again') from None
  except NamesCode as e:
    raise DataError(f'{path} is not plain data ({e}): a pickle that names code is refused, as it could run it; '
                    'prepare the data set again') from None
  except (ValueError, KeyError, TypeError, EOFError, RecursionError, pickle.UnpicklingError) as e:
    raise DataError(f'{path} is corrupt ({type(e).__name__}: {e}): prepare the data set again') from None
  return itos


def load_vocab(folder: pathlib.Path) -> list[str] | None:
  """The character vocabulary (id -> character) from folder's meta.json or
  nanoGPT's meta.pkl (both: they must agree); None for GPT-2 tokens (neither
  file)."""
  # is_symlink: a broken link is a vocabulary gone missing, not GPT-2 tokens
  vocabs = {name: read_vocab(folder / name) for name in ('meta.json', 'meta.pkl')
            if (folder / name).exists() or (folder / name).is_symlink()}
  if len(set(map(tuple, vocabs.values()))) > 1:
    raise DataError(f'{folder / "meta.json"} and {folder / "meta.pkl"} hold different vocabularies: remove the one '
                    'the token files were not prepared with')
  return next(iter(vocabs.values()), None)


def vocab_size(vocab: list[str] | None) -> int:
  """How many token ids a data set's files may hold: its characters, or
  GPT-2's 50257 tokens (any id above is in no GPT-2 text; the model's
  GPT2_VOCAB_SIZE pads the table for speed, not for more tokens)."""
  return GPT2_TOKENS if vocab is None else len(vocab)


def open_tokens(path: pathlib.Path) -> np.memmap:
  """path's uint16 token ids, memory-mapped, once the file can be: a file
  of whole ids (np.memmap refuses an empty file, or a cut one, with a traceback)."""
  if path.is_dir():
    raise DataError(f'{path} is a folder, not a token file: remove it and prepare the data set again')
  try:
    size = path.stat().st_size
    if size == 0:
      raise DataError(f'{path} is empty: prepare the data set again')
    if size % 2:
      raise DataError(f'{path} holds {size:,} bytes, an odd number, so it is not uint16 token ids (2 bytes each): '
                      'it was cut short or is not a token file; prepare the data set again')
    return np.memmap(path, dtype=np.uint16, mode='r')
  except OSError as e:
    raise DataError(f'cannot read {path} ({e.strerror or e}): prepare the data set again') from None


@functools.cache
def _largest_id(path: pathlib.Path, version: tuple[int, int, int]) -> int:
  # one pass (np.max streams a memmap), once per file and version (inode, size,
  # mtime): train.py opens train.bin for training and for evaluation batches
  return int(np.memmap(path, dtype=np.uint16, mode='r').max())


def check_ids(path: pathlib.Path, vocab_size: int) -> None:
  """Every id in path is below vocab_size: one beyond would index past the
  embedding table and train to a NaN."""
  stat = path.stat()
  largest = _largest_id(path, (stat.st_ino, stat.st_size, stat.st_mtime_ns))
  if largest >= vocab_size:
    raise DataError(f'{path} holds token id {largest:,}, but its vocabulary has {vocab_size:,} tokens (ids 0 to '
                    f'{vocab_size - 1:,}): the token files and the vocabulary (meta.json, or GPT-2\'s without one) '
                    'come from different preparations; prepare the data set again')


class BatchSampler:
  """Random windows of a token file, like nanoGPT's get_batch.

  Each call draws `steps` stacks of (batch_size, block_size) inputs and the
  same windows shifted by one as targets, int32, with the numpy generator it
  is given: the generator alone decides the batches. The file is checked when
  opened: whole uint16 ids, enough for a window, each below vocab_size.
  """

  def __init__(self, path: pathlib.Path, block_size: int, batch_size: int, vocab_size: int):
    self.tokens = open_tokens(path)
    if len(self.tokens) < block_size + 1:
      raise DataError(f'{path} holds {len(self.tokens)} tokens, fewer than block_size + 1 = '
                      f'{block_size + 1}: lower --config.block_size or use more data')
    check_ids(path, vocab_size)
    # every window of block_size + 1 tokens, as a view: indexing it copies only the rows drawn
    self.windows = np.lib.stride_tricks.sliding_window_view(self.tokens, block_size + 1)
    self.batch_size = batch_size

  def __call__(self, rng: np.random.Generator, steps: int = 1) -> tuple[np.ndarray, np.ndarray]:
    # any start in [0, len - block_size), as nanoGPT's torch.randint(len(data) - block_size)
    ix = rng.integers(0, len(self.windows), size=(steps, self.batch_size))
    w = self.windows[ix].astype(np.int32)  # (steps, B, T + 1)
    return w[..., :-1], w[..., 1:]


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(prog='python -m jaxgpt.data', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('dataset', choices=PREPARABLE)
  parser.add_argument('--gpt2_dir', default='', help='a GPT-2 folder with vocab.json (default: the Hugging Face cache)')
  parser.add_argument('--overwrite', action='store_true', help='replace the data set if it is prepared already')
  args = parser.parse_args(argv[1:])
  return entry.run(lambda: prepare(args.dataset, args.gpt2_dir, args.overwrite),
                   f'interrupted: the data set in {data_dir(args.dataset)} is as it was')


if __name__ == '__main__':
  sys.exit(main(sys.argv))
