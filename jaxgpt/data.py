"""Data: token files as nanoGPT writes them, and random batches drawn from them.

A data set is a folder data/<dataset>/ holding train.bin and val.bin (uint16
token ids, memory-mapped) and, for character-level sets, meta.json with the
vocabulary (nanoGPT's meta.pkl is read too, as plain data: no class, no
code). Without either the tokens are GPT-2's.

  python -m jaxgpt.data shakespeare_char   # tiny Shakespeare, characters as tokens
  python -m jaxgpt.data shakespeare [--gpt2_dir=FOLDER]   # the same in GPT-2 tokens
"""

import argparse
import json
import pathlib
import pickle
import sys
import urllib.request

import numpy as np

from jaxgpt.config import JaxGPTError

SHAKESPEARE_URL = 'https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt'
GPT2_VOCAB_SIZE = 50304  # GPT-2's 50257 rounded up to a multiple of 64, as nanoGPT does


class DataError(JaxGPTError):
  pass


def data_dir(dataset: str) -> pathlib.Path:
  return pathlib.Path('data') / dataset


# -- preparation ---------------------------------------------------------------


def prepare_shakespeare_char(out: pathlib.Path) -> None:
  """nanoGPT's data/shakespeare_char/prepare.py: characters as tokens.

  Reads out/input.txt (downloading it first when absent) and writes train.bin
  and val.bin (first 90% / last 10%) and meta.json. The vocabulary is the
  sorted set of characters, so the ids are nanoGPT's.
  """
  out.mkdir(parents=True, exist_ok=True)
  input_path = out / 'input.txt'
  if not input_path.exists():
    _download(SHAKESPEARE_URL, input_path)
  text = input_path.read_text(encoding='utf-8')
  chars = sorted(set(text))
  print(f'length of dataset in characters: {len(text):,}')
  print(f'vocab size: {len(chars):,}')
  stoi = {ch: i for i, ch in enumerate(chars)}
  ids = np.array([stoi[ch] for ch in text], dtype=np.uint16)
  n = len(ids)
  split = int(n * 0.9)
  print(f'train has {split:,} tokens')
  print(f'val has {n - split:,} tokens')
  ids[:split].tofile(out / 'train.bin')
  ids[split:].tofile(out / 'val.bin')
  meta = {'vocab_size': len(chars), 'itos': chars}
  (out / 'meta.json').write_text(json.dumps(meta, ensure_ascii=False), encoding='utf-8')


def prepare_shakespeare(out: pathlib.Path, gpt2_dir: str = '') -> None:
  """nanoGPT's data/shakespeare/prepare.py: tiny Shakespeare in GPT-2 tokens
  (the first 90% of the characters for train, the rest for val), for
  finetuning GPT-2. The tokenizer comes from gpt2_dir or the Hugging Face cache."""
  from jaxgpt import gpt2  # tiktoken: only for GPT-2 tokens
  tokenizer = gpt2.tokenizer(gpt2_dir)
  out.mkdir(parents=True, exist_ok=True)
  input_path = out / 'input.txt'
  if not input_path.exists():
    _download(SHAKESPEARE_URL, input_path)
  text = input_path.read_text(encoding='utf-8')
  split = int(len(text) * 0.9)
  for name, part in (('train', text[:split]), ('val', text[split:])):
    ids = np.array(tokenizer.encode_ordinary(part), dtype=np.uint16)
    print(f'{name} has {len(ids):,} tokens')
    ids.tofile(out / f'{name}.bin')


def _download(url: str, path: pathlib.Path) -> None:
  print(f'downloading {url}')
  try:
    with urllib.request.urlopen(url, timeout=30) as response:
      data = response.read()
  except OSError as e:
    raise DataError(f'could not download {url} ({e}); offline, put the file at {path} '
                    f'and run again') from None
  path.write_bytes(data)


PREPARABLE = ('shakespeare_char', 'shakespeare')


def prepare(dataset: str, gpt2_dir: str = '') -> None:
  """Prepares data/<dataset> (one of PREPARABLE); gpt2_dir: where GPT-2's tokenizer is."""
  if dataset == 'shakespeare_char':
    prepare_shakespeare_char(data_dir(dataset))
  else:
    prepare_shakespeare(data_dir(dataset), gpt2_dir)


# -- loading -------------------------------------------------------------------


def ensure_prepared(dataset: str, gpt2_dir: str = '') -> pathlib.Path:
  """The data set's folder, prepared first when it can be (see PREPARABLE)."""
  folder = data_dir(dataset)
  if not (folder / 'train.bin').exists() and dataset in PREPARABLE:
    print(f'preparing {dataset} in {folder}')
    prepare(dataset, gpt2_dir)
  for split in ('train', 'val'):
    if not (folder / f'{split}.bin').exists():
      raise DataError(f'{folder / f"{split}.bin"} not found: prepare the data set first '
                      f'(nanoGPT\'s data/{dataset}/prepare.py writes the same files)')
  return folder


class _PlainDataUnpickler(pickle.Unpickler):
  """Unpickles plain data only (dicts, lists, str, int, ...): any class or
  function is refused, so no code in the file can run."""

  def find_class(self, module: str, name: str):
    raise pickle.UnpicklingError(f'it names {module}.{name}, and only plain data is read')


def read_vocab(path: pathlib.Path) -> list[str]:
  """The vocabulary (id -> character) of a meta.json as jaxgpt writes it, or
  of a meta.pkl as nanoGPT's prepare.py writes it ({'vocab_size', 'itos':
  {id: char}, 'stoi'}), read as plain data."""
  try:
    if path.suffix == '.pkl':
      with path.open('rb') as f:
        meta = _PlainDataUnpickler(f).load()
      itos = [meta['itos'][i] for i in range(len(meta['itos']))]
    else:
      meta = json.loads(path.read_text(encoding='utf-8'))
      itos = meta['itos']
    if meta['vocab_size'] != len(itos) or not all(isinstance(ch, str) for ch in itos):
      raise ValueError('vocab_size does not match itos')
  except OSError as e:
    raise DataError(f'cannot read {path} ({e.strerror or e}): prepare the data set again') from None
  except pickle.UnpicklingError as e:
    raise DataError(f'{path} is not plain data ({e}): a pickle that names code is refused, as it could run it; '
                    'prepare the data set again') from None
  except (ValueError, KeyError, TypeError, EOFError) as e:
    raise DataError(f'{path} is corrupt ({type(e).__name__}: {e}): prepare the data set again') from None
  return itos


def load_vocab(folder: pathlib.Path) -> list[str] | None:
  """The character vocabulary (id -> character) from folder's meta.json, else
  nanoGPT's meta.pkl; None for GPT-2 tokens (neither file)."""
  for name in ('meta.json', 'meta.pkl'):
    if (folder / name).exists():
      return read_vocab(folder / name)
  return None


class BatchSampler:
  """Random windows of a token file, like nanoGPT's get_batch.

  Each call draws `steps` stacks of (batch_size, block_size) inputs and the
  same windows shifted by one as targets, int32, with the numpy generator it
  is given: the generator alone decides the batches.
  """

  def __init__(self, path: pathlib.Path, block_size: int, batch_size: int):
    self.tokens = np.memmap(path, dtype=np.uint16, mode='r')
    if len(self.tokens) < block_size + 1:
      raise DataError(f'{path} holds {len(self.tokens)} tokens, fewer than block_size + 1 = '
                      f'{block_size + 1}: lower --config.block_size or use more data')
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
  args = parser.parse_args(argv[1:])
  try:
    prepare(args.dataset, args.gpt2_dir)
  except JaxGPTError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv))
