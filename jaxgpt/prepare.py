"""Data sets written: your own text as characters, and tiny Shakespeare as nanoGPT prepares it.

  python -m jaxgpt.prepare char PATH --name NAME [--overwrite]
  python train.py --config=configs/shakespeare_char.py --config.dataset=NAME

Writes data/NAME/train.bin and val.bin (uint16 ids: the first 90% of the
characters, then the last 10%) and meta.json (the vocabulary: the file's
characters, sorted), as nanoGPT's shakespeare_char/prepare.py does for tiny
Shakespeare. The file is read twice in chunks, once for the vocabulary and
once to write the ids, so it may be larger than memory; so it must be a
file, not a pipe, which can be read only once. A leading UTF-8 byte order
mark is not text, and is dropped.

  python -m jaxgpt.data shakespeare_char   # tiny Shakespeare, characters as tokens
  python -m jaxgpt.data shakespeare [--gpt2_dir=FOLDER]   # the same in GPT-2 tokens

train.py prepares these two on first use (ensure_prepared). A prepared data
set is replaced only with --overwrite, and then whole (jaxgpt.files): the new
files move in when complete, so a training reading the old ones goes on
reading them, and an interrupted preparation leaves the old data set, or none.
"""

import argparse
import codecs
import contextlib
import http.client
import json
import pathlib
import stat
import sys
import urllib.request
from typing import BinaryIO, Iterator, Sequence

import numpy as np
from rich import progress

from jaxgpt import entry, files
from jaxgpt.config import check_dataset_name
from jaxgpt.data import DATASET_FILES, DataError, data_dir

SHAKESPEARE_URL = 'https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt'
PREPARABLE = ('shakespeare_char', 'shakespeare')

CHUNK_BYTES = 1 << 24  # 16 MB of the file at a time
MAX_VOCAB = 65_535  # ids are uint16, as in nanoGPT's token files


# -- writing -------------------------------------------------------------------


def refuse_to_replace(folder: pathlib.Path, fix: str) -> None:
  """Raises DataError when folder holds a data set's files."""
  found = [name for name in DATASET_FILES if (folder / name).exists()]
  if found:
    raise DataError(f'{folder} already holds a data set ({", ".join(found)}): {fix}')


@contextlib.contextmanager
def replacing(folder: pathlib.Path, names: Sequence[str], stale: Sequence[str] = ()) -> Iterator[dict[str, BinaryIO]]:
  """Files opened to write folder/<name> for each name, moved into place whole
  (files.replacing, in the order named) when the block ends without error.
  A reader's memmap keeps the old file it opened, and no reader sees a
  half-written one. stale: files removed as the new ones move in (those of the
  data set being replaced that are not written again)."""
  if folder.exists() and not folder.is_dir():
    raise DataError(f'{folder} is a file, where a data set is a folder: move the file away, or choose another name')
  for name in names:
    if (folder / name).is_dir():
      raise DataError(f'{folder / name} is a folder: remove it and run again')
  try:
    with files.replacing(*(folder / name for name in names), removing=tuple(folder / name for name in stale)) as temps:
      with contextlib.ExitStack() as stack:
        yield {name: stack.enter_context(temp.open('wb')) for name, temp in zip(names, temps)}
  except OSError as e:
    raise DataError(f'cannot write to {folder} ({e.strerror or e}): free some space or fix its permissions, '
                    'then run again; its files are as they were') from None


# -- reading text ----------------------------------------------------------------


def _kind(mode: int) -> str:
  if stat.S_ISFIFO(mode):
    return 'a pipe'
  if stat.S_ISSOCK(mode):
    return 'a socket'
  return 'a device'


def check_text_file(path: pathlib.Path) -> None:
  """Raises DataError unless path is a file that can be read twice (the
  vocabulary, then the ids): a pipe (`cmd | ... /dev/stdin`, `<(cmd)`, a
  FIFO) gives its text once, and a device may have no end."""
  try:
    mode = path.stat().st_mode
  except OSError as e:
    raise DataError(f'cannot read {path} ({e.strerror}): give the path of a UTF-8 text file') from None
  if stat.S_ISDIR(mode):
    raise DataError(f'{path} is a folder: give the path of a UTF-8 text file')
  if not stat.S_ISREG(mode):
    raise DataError(f'{path} is {_kind(mode)}, not a file: its text is read twice (the vocabulary, then the ids), '
                    'so save it to a file first (e.g. cmd > input.txt) and give that path')


def text_chunks(path: pathlib.Path, description: str) -> Iterator[str]:
  """The text of path, CHUNK_BYTES at a time (a character cut by a chunk's end
  waits for the next), without a leading byte order mark, with a progress
  bar on a terminal."""
  check_text_file(path)
  decoder = codecs.getincrementaldecoder('utf-8')()
  offset = 0  # of the chunk being decoded, in the file
  try:
    with path.open('rb') as f, progress.wrap_file(f, path.stat().st_size, description=description, transient=True,
                                                  disable=not sys.stdout.isatty()) as f:
      while True:
        raw = f.read(CHUNK_BYTES)
        if offset == 0 and raw.startswith(codecs.BOM_UTF8):  # Windows' mark of UTF-8, not a character of the text
          raw = raw[len(codecs.BOM_UTF8):]
          offset = len(codecs.BOM_UTF8)
        carried = len(decoder.getstate()[0])  # bytes of a character the last chunk cut
        try:
          text = decoder.decode(raw, final=not raw)
        except UnicodeDecodeError as e:
          raise DataError(f'{path} is not UTF-8 text ({e.reason} at byte {offset - carried + e.start:,}): '
                          'convert it first, e.g. iconv -f latin1 -t utf-8') from None
        offset += len(raw)
        if text:
          yield text
        if not raw:
          return
  except OSError as e:
    raise DataError(f'cannot read {path} ({e.strerror}): give the path of a UTF-8 text file') from None


def _code_points(text: str) -> np.ndarray:
  return np.frombuffer(text.encode('utf-32-le'), dtype=np.uint32)


def write_char_set(path: pathlib.Path, out: pathlib.Path) -> None:
  """Writes out/train.bin, val.bin and meta.json from the UTF-8 text file at
  path, replacing those there."""
  chars, length = set(), 0
  for chunk in text_chunks(path, 'reading'):
    chars.update(chunk)
    length += len(chunk)
  if length == 0:
    raise DataError(f'{path} is empty: a data set needs text')
  if len(chars) > MAX_VOCAB:
    raise DataError(f'{path} has {len(chars):,} distinct characters, more than the {MAX_VOCAB:,} that '
                    'uint16 token ids can number: use a tokenizer (GPT-2\'s BPE) for such text')
  vocab = sorted(chars)
  print(f'length of dataset in characters: {length:,}')
  print(f'vocab size: {len(vocab):,}')
  code_points = _code_points(''.join(vocab))  # sorted, so an id is a position in it

  split = int(length * 0.9)
  written = 0
  # train.bin moves in last: ensure_prepared takes it for a whole data set
  with replacing(out, ('val.bin', 'meta.json', 'train.bin'), stale=('meta.pkl',)) as outputs:
    for chunk in text_chunks(path, 'writing'):
      ids = np.searchsorted(code_points, _code_points(chunk)).astype(np.uint16)
      to_train = min(max(split - written, 0), len(ids))
      outputs['train.bin'].write(ids[:to_train])  # not tofile: its error on a full disk loses the reason
      outputs['val.bin'].write(ids[to_train:])
      written += len(ids)
    if written != length:  # raised inside the block: the data set there is left as it was
      raise DataError(f'{path} changed while it was read ({length:,} characters, then {written:,}): '
                      'prepare it again once it is no longer being written')
    meta = {'vocab_size': len(vocab), 'itos': vocab}
    outputs['meta.json'].write(json.dumps(meta, ensure_ascii=False).encode('utf-8'))
  print(f'train has {split:,} tokens')
  print(f'val has {length - split:,} tokens')


def prepare_char(path: pathlib.Path, name: str, overwrite: bool = False) -> pathlib.Path:
  """Writes data/<name> from the UTF-8 text file at path; returns the folder.
  An existing data set there is replaced only with overwrite."""
  out = data_dir(name)
  if not overwrite:
    refuse_to_replace(out, 'pass --overwrite to replace it, or another --name')
  write_char_set(path, out)
  return out


# -- tiny Shakespeare ------------------------------------------------------------


def prepare_shakespeare_char(out: pathlib.Path) -> None:
  """nanoGPT's data/shakespeare_char/prepare.py: characters as tokens.

  Reads out/input.txt (downloading it first when absent) and writes train.bin
  and val.bin (first 90% / last 10%) and meta.json. The vocabulary is the
  sorted set of characters, so the ids are nanoGPT's.
  """
  input_path = out / 'input.txt'
  if not input_path.exists():
    _download(SHAKESPEARE_URL, input_path)
  write_char_set(input_path, out)


def prepare_shakespeare(out: pathlib.Path, gpt2_dir: str = '') -> None:
  """nanoGPT's data/shakespeare/prepare.py: tiny Shakespeare in GPT-2 tokens
  (the first 90% of the characters for train, the rest for val), for
  finetuning GPT-2. The tokenizer comes from gpt2_dir or the Hugging Face cache."""
  from jaxgpt import gpt2  # tiktoken: only for GPT-2 tokens
  tokenizer = gpt2.tokenizer(gpt2_dir)
  input_path = out / 'input.txt'
  if not input_path.exists():
    _download(SHAKESPEARE_URL, input_path)
  text = ''.join(text_chunks(input_path, 'reading'))
  if not text:
    raise DataError(f'{input_path} is empty: a data set needs text')
  split = int(len(text) * 0.9)
  # train.bin moves in last: ensure_prepared takes it for a whole data set
  with replacing(out, ('val.bin', 'train.bin'), stale=('meta.json', 'meta.pkl')) as outputs:
    for name, part in (('train', text[:split]), ('val', text[split:])):
      ids = np.array(tokenizer.encode_ordinary(part), dtype=np.uint16)
      print(f'{name} has {len(ids):,} tokens')
      outputs[f'{name}.bin'].write(ids)


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
  with replacing(path.parent, (path.name,)) as outputs:
    outputs[path.name].write(text)


def prepare(dataset: str, gpt2_dir: str = '', overwrite: bool = False) -> None:
  """Prepares data/<dataset> (one of PREPARABLE); gpt2_dir: where GPT-2's
  tokenizer is. An existing data set is replaced only with overwrite."""
  if not overwrite:
    refuse_to_replace(data_dir(dataset), 'pass --overwrite to prepare it again')
  if dataset == 'shakespeare_char':
    prepare_shakespeare_char(data_dir(dataset))
  else:
    prepare_shakespeare(data_dir(dataset), gpt2_dir)


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


# -- the commands ------------------------------------------------------------------


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(prog='python -m jaxgpt.prepare', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  kinds = parser.add_subparsers(dest='kind', required=True)
  char = kinds.add_parser('char', help='characters as tokens')
  char.add_argument('path', type=pathlib.Path, help='a UTF-8 text file')
  char.add_argument('--name', required=True, help='the data set: written to data/NAME, trained with --config.dataset=NAME')
  char.add_argument('--overwrite', action='store_true', help='replace data/NAME if it holds a data set')
  args = parser.parse_args(argv[1:])

  def prepare() -> None:
    check_dataset_name(args.name, '--name')
    out = prepare_char(args.path, args.name, args.overwrite)
    print(f'wrote {out}: train with --config.dataset={args.name}')

  return entry.run(prepare, f'interrupted: the data set in {data_dir(args.name)} is as it was', uses_jax=False)


def dataset_main(argv: list[str]) -> int:
  """python -m jaxgpt.data: tiny Shakespeare prepared as nanoGPT does."""
  parser = argparse.ArgumentParser(prog='python -m jaxgpt.data', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('dataset', choices=PREPARABLE)
  parser.add_argument('--gpt2_dir', default='', help='a GPT-2 folder with vocab.json (default: the Hugging Face cache)')
  parser.add_argument('--overwrite', action='store_true', help='replace the data set if it is prepared already')
  args = parser.parse_args(argv[1:])
  return entry.run(lambda: prepare(args.dataset, args.gpt2_dir, args.overwrite),
                   f'interrupted: the data set in {data_dir(args.dataset)} is as it was', uses_jax=False)


if __name__ == '__main__':
  sys.exit(main(sys.argv))
