"""Data sets read: token files as nanoGPT writes them, and random batches drawn from them.

A data set is a folder data/<dataset>/ holding train.bin and val.bin (uint16
token ids, memory-mapped) and, for character-level sets, meta.json with the
vocabulary (nanoGPT's meta.pkl is read too, as plain data: no class, no
code). Without either the tokens are GPT-2's. When a data set is opened its
files are checked: whole uint16 ids, each within the vocabulary.

Data sets are written by jaxgpt/prepare.py, which reads them with this
module; the command that prepares tiny Shakespeare keeps its name:

  python -m jaxgpt.data shakespeare_char   # tiny Shakespeare, characters as tokens
  python -m jaxgpt.data shakespeare [--gpt2_dir=FOLDER]   # the same in GPT-2 tokens
"""

import functools
import json
import pathlib
import pickle
import sys

import numpy as np

from jaxgpt.errors import JaxGPTError

GPT2_VOCAB_SIZE = 50304  # GPT-2's 50257 rounded up to a multiple of 64, as nanoGPT does
GPT2_TOKENS = 50257  # the ids GPT-2's tokenizer gives: 0 to 50256 (<|endoftext|>)
GPT2_VOCAB_SIZES = (GPT2_TOKENS, GPT2_VOCAB_SIZE)  # a model's vocab_size that says its tokens are GPT-2's
DATASET_FILES = ('train.bin', 'val.bin', 'meta.json', 'meta.pkl')


class DataError(JaxGPTError):
  pass


def data_dir(dataset: str) -> pathlib.Path:
  return pathlib.Path('data') / dataset


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


if __name__ == '__main__':
  # the command prepares a data set: preparation (prepare.py) reads data sets with this module, never the reverse
  from jaxgpt import prepare
  sys.exit(prepare.dataset_main(sys.argv))
