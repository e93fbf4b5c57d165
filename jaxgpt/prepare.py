"""Your own text as a character-level data set:

  python -m jaxgpt.prepare char PATH --name NAME [--overwrite]
  python train.py --config=configs/shakespeare_char.py --config.dataset=NAME

Writes data/NAME/train.bin and val.bin (uint16 ids: the first 90% of the
characters, then the last 10%) and meta.json (the vocabulary: the file's
characters, sorted), as nanoGPT's shakespeare_char/prepare.py does for tiny
Shakespeare. The file is read twice in chunks, once for the vocabulary and
once to write the ids, so it may be larger than memory.

An existing data/NAME is replaced only with --overwrite, and then whole: the
new files move in when complete, so a training reading the old ones goes on
reading them, and an interrupted preparation leaves the old data set.
"""

import argparse
import codecs
import json
import pathlib
import sys
from typing import Iterator

import numpy as np
from rich import progress

from jaxgpt import entry
from jaxgpt.config import check_dataset_name
from jaxgpt.data import DataError, data_dir, refuse_to_replace, replacing

CHUNK_BYTES = 1 << 24  # 16 MB of the file at a time
MAX_VOCAB = 65_535  # ids are uint16, as in nanoGPT's token files


def text_chunks(path: pathlib.Path, description: str) -> Iterator[str]:
  """The text of path, CHUNK_BYTES at a time (a character cut by a chunk's end
  waits for the next), with a progress bar on a terminal."""
  if path.is_char_device() or path.is_block_device():  # /dev/zero: no end to read
    raise DataError(f'{path} is a device, not a text file: give the path of a UTF-8 text file')
  decoder = codecs.getincrementaldecoder('utf-8')()
  offset = 0  # of the chunk being decoded, in the file
  try:
    with path.open('rb') as f, progress.wrap_file(f, path.stat().st_size, description=description, transient=True,
                                                  disable=not sys.stdout.isatty()) as f:
      while True:
        raw = f.read(CHUNK_BYTES)
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
  with replacing(out, ('val.bin', 'meta.json', 'train.bin'), stale=('meta.pkl',)) as files:
    for chunk in text_chunks(path, 'writing'):
      ids = np.searchsorted(code_points, _code_points(chunk)).astype(np.uint16)
      to_train = min(max(split - written, 0), len(ids))
      files['train.bin'].write(ids[:to_train])  # not tofile: its error on a full disk loses the reason
      files['val.bin'].write(ids[to_train:])
      written += len(ids)
    meta = {'vocab_size': len(vocab), 'itos': vocab}
    files['meta.json'].write(json.dumps(meta, ensure_ascii=False).encode('utf-8'))
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

  return entry.run(prepare, f'interrupted: the data set in {data_dir(args.name)} is as it was')


if __name__ == '__main__':
  sys.exit(main(sys.argv))
