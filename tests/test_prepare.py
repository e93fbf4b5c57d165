"""python -m jaxgpt.prepare char: any UTF-8 text as a character data set,
read in chunks; the same files as shakespeare_char's preparation; clean
errors that write nothing; and train.py on the result."""

import errno
import json
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO_ROOT, file_size_limit, make_workdir, run_in_terminal
from jaxgpt import prepare


def read_set(folder):
  return ({split: np.fromfile(folder / f'{split}.bin', dtype=np.uint16) for split in ('train', 'val')},
          json.loads((folder / 'meta.json').read_text(encoding='utf-8')))


def test_char_set_is_shakespeare_chars_preparation(shakespeare, tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)
  make_workdir(tmp_path, shakespeare)
  prepare.prepare_shakespeare_char(tmp_path / 'data' / 'shakespeare_char')
  monkeypatch.setattr(prepare, 'CHUNK_BYTES', 100_003)  # 12 chunks, the split inside one of them
  assert prepare.main(['prepare', 'char', str(shakespeare), '--name', 'mine']) == 0
  assert capsys.readouterr().out.splitlines()[-1] == 'wrote data/mine: train with --config.dataset=mine'
  (ours, our_meta), (theirs, their_meta) = read_set(tmp_path / 'data' / 'mine'), read_set(
      tmp_path / 'data' / 'shakespeare_char')
  assert our_meta == their_meta and our_meta['vocab_size'] == 65
  for split in ('train', 'val'):
    np.testing.assert_array_equal(ours[split], theirs[split])
  assert len(ours['train']) == 1_003_854 and len(ours['val']) == 111_540


@pytest.mark.parametrize('content, message', [
    (b'', 'is empty: a data set needs text'),
    ('caf\u00e9'.encode('latin-1'), 'is not UTF-8 text (unexpected end of data at byte 3): convert it first'),
    ('caf\u00e9 au lait'.encode('latin-1'), 'is not UTF-8 text (invalid continuation byte at byte 3): convert it first'),
    (''.join(chr(c) for c in range(0x10000, 0x20000)).encode('utf-8'),
     'has 65,536 distinct characters, more than the 65,535 that uint16 token ids can number'),
])
def test_bad_text_is_one_error_and_writes_nothing(tmp_path, monkeypatch, capsys, content, message):
  monkeypatch.chdir(tmp_path)
  path = tmp_path / 'text.txt'
  path.write_bytes(content)
  assert prepare.main(['prepare', 'char', str(path), '--name', 'bad']) == 1
  err = capsys.readouterr().err
  assert err.startswith(f'error: {path} ') and message in err and len(err.splitlines()) == 1
  assert not (tmp_path / 'data').exists()


@pytest.mark.slow
def test_train_on_a_prepared_text(tmp_path):
  text = 'the quick brown fox jumps over the lazy dog. ' * 400 + 'ünïcödé ✓\n' * 50
  (tmp_path / 'fox.txt').write_text(text, encoding='utf-8')
  proc = subprocess.run([sys.executable, '-m', 'jaxgpt.prepare', 'char', 'fox.txt', '--name', 'fox'], cwd=tmp_path,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  vocab_size = len(set(text))
  assert f'vocab size: {vocab_size:,}' in proc.stdout.splitlines()
  proc = subprocess.run([sys.executable, str(REPO_ROOT / 'train.py'), f'--config={REPO_ROOT / "configs" / "shakespeare_char.py"}',
                         '--config.dataset=fox', '--config.n_layer=1', '--config.n_head=2', '--config.n_embd=16',
                         '--config.block_size=16', '--config.batch_size=4', '--config.max_iters=4',
                         '--config.eval_interval=2', '--config.eval_iters=2', '--config.log_interval=1',
                         '--config.out_dir=out-fox'], cwd=tmp_path, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr
  assert f'found vocab_size = {vocab_size} (inside data/fox/meta.json)' in proc.stdout.splitlines()
  assert 'iter 4: loss ' in proc.stdout


@pytest.mark.slow
def test_progress_on_a_terminal(shakespeare, tmp_path):
  status, text = run_in_terminal([sys.executable, '-m', 'jaxgpt.prepare', 'char', str(shakespeare), '--name', 'tty'],
                                 cwd=tmp_path)
  assert status == 0, text
  assert 'reading' in text and 'writing' in text and '1.1/1.1 MB' in text, text
  assert 'wrote data/tty: train with --config.dataset=tty' in text


def prepare_text(folder, name, text, *flags):
  """python -m jaxgpt.prepare char on text, in folder; the exit status."""
  (folder / f'{name}.txt').write_text(text, encoding='utf-8')
  return prepare.main(['prepare', 'char', f'{name}.txt', '--name', name, *flags])


def files_of(folder):
  return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.mark.parametrize('existing', ['train.bin', 'val.bin', 'meta.json', 'meta.pkl'])
def test_an_existing_data_set_is_not_replaced(tmp_path, monkeypatch, capsys, existing):
  """Any file of a data set (nanoGPT's meta.pkl too) keeps it from being replaced without --overwrite."""
  monkeypatch.chdir(tmp_path)
  (tmp_path / 'data' / 'mine').mkdir(parents=True)
  (tmp_path / 'data' / 'mine' / existing).write_bytes(b'\0\0')
  before = files_of(tmp_path / 'data' / 'mine')
  assert prepare_text(tmp_path, 'mine', 'to be or not to be\n') == 1
  assert capsys.readouterr().err.splitlines() == [
      f'error: data/mine already holds a data set ({existing}): pass --overwrite to replace it, or another --name']
  assert files_of(tmp_path / 'data' / 'mine') == before


def test_overwrite_leaves_a_readers_memmap_on_the_old_tokens(tmp_path, monkeypatch, capsys):
  """A training reading the data set while it is replaced goes on reading
  the old tokens (the old file, whole), where it died of a Bus error when
  the file was truncated and written again under its memmap."""
  monkeypatch.chdir(tmp_path)
  assert prepare_text(tmp_path, 'mine', 'abcd' * 1000) == 0
  folder = tmp_path / 'data' / 'mine'
  (folder / 'meta.pkl').write_bytes(b'stale')  # nanoGPT's, of the data set replaced
  reading = np.memmap(folder / 'train.bin', dtype=np.uint16, mode='r')
  old = np.array(reading)
  assert prepare_text(tmp_path, 'mine', 'xy' * 3000, '--overwrite') == 0
  np.testing.assert_array_equal(reading, old)
  new, meta = read_set(folder)
  assert meta['itos'] == ['x', 'y'] and len(new['train']) == 5400
  assert sorted(p.name for p in folder.iterdir()) == ['meta.json', 'train.bin', 'val.bin']  # no temporary file, no stale meta.pkl


@pytest.mark.parametrize('signum', [signal.SIGINT, signal.SIGTERM], ids=['SIGINT', 'SIGTERM'])
def test_overwrite_interrupted_leaves_the_old_data_set(tmp_path, monkeypatch, capsys, signum):
  """Ctrl-C or SIGTERM midway through writing the ids: the old data set,
  whole, and no temporary file."""
  monkeypatch.chdir(tmp_path)
  def unhandled(signum, frame):  # what the test sees of a main that leaves SIGTERM's default: death
    raise AssertionError('main did not handle SIGTERM')

  sigterm_handler = signal.signal(signal.SIGTERM, unhandled)  # main installs its own: put back after
  assert prepare_text(tmp_path, 'mine', 'abcd' * 1000) == 0
  before = files_of(tmp_path / 'data' / 'mine')
  monkeypatch.setattr(prepare, 'CHUNK_BYTES', 1000)
  code_points = prepare._code_points
  calls = []

  def interrupted_midway(text):
    calls.append(text)
    if len(calls) == 5:  # the vocabulary, then the chunks: the 4th chunk being written
      signal.raise_signal(signum)  # the handler (Python's for SIGINT, main's for SIGTERM) runs here
    return code_points(text)

  monkeypatch.setattr(prepare, '_code_points', interrupted_midway)
  capsys.readouterr()
  try:
    assert prepare_text(tmp_path, 'mine', 'xy' * 3000, '--overwrite') == 130
  finally:
    signal.signal(signal.SIGTERM, sigterm_handler)
  assert capsys.readouterr().err == 'interrupted: the data set in data/mine is as it was\n'
  assert files_of(tmp_path / 'data' / 'mine') == before


def test_disk_full_midway_leaves_the_old_data_set(tmp_path, monkeypatch, capsys):
  """A write that fails midway (a file size limit, as a full disk would):
  one line, the old data set whole, no temporary file."""
  monkeypatch.chdir(tmp_path)
  assert prepare_text(tmp_path, 'mine', 'abcd' * 1000) == 0
  before = files_of(tmp_path / 'data' / 'mine')
  (tmp_path / 'big.txt').write_text('xy' * 100_000, encoding='utf-8')
  capsys.readouterr()
  with file_size_limit(100_000):  # train.bin would be 360,000 bytes
    status = prepare.main(['prepare', 'char', 'big.txt', '--name', 'mine', '--overwrite'])
  assert status == 1
  assert capsys.readouterr().err.splitlines() == [
      'error: cannot write to data/mine (File too large): free some space or fix its permissions, then run again; '
      'its files are as they were']
  assert files_of(tmp_path / 'data' / 'mine') == before


def test_data_folder_not_writable(tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)

  def permission_denied(self, *args, **kwargs):
    raise PermissionError(errno.EACCES, 'Permission denied', str(self))

  monkeypatch.setattr(pathlib.Path, 'mkdir', permission_denied)
  assert prepare_text(tmp_path, 'mine', 'abc') == 1
  assert capsys.readouterr().err.splitlines() == [
      'error: cannot write to data/mine (Permission denied): free some space or fix its permissions, then run again; '
      'its files are as they were']


def prepare_command(folder, shell_command, **kwargs):
  """python -m jaxgpt.prepare run by bash in folder, PREPARE standing for the command."""
  return subprocess.run(['bash', '-c', shell_command.replace('PREPARE', f'{sys.executable} -m jaxgpt.prepare')],
                        cwd=folder, capture_output=True, text=True, timeout=60, **kwargs)


@pytest.mark.parametrize('shell_command, path', [
    ('cat fox.txt | PREPARE char /dev/stdin --name mine --overwrite', '/dev/stdin'),
    ('PREPARE char <(cat fox.txt) --name mine --overwrite', '/dev/fd/63'),
    ('mkfifo pipe && PREPARE char pipe --name mine --overwrite', 'pipe'),  # no writer: opening it would wait
], ids=['pipe', 'process substitution', 'FIFO'])
def test_text_read_once_is_refused_and_the_data_set_kept(tmp_path, monkeypatch, shell_command, path):
  """A pipe gives its text once, and the text is read twice (the vocabulary,
  then the ids): one line, exit 1, and the data set there as it was, byte
  for byte, where it was replaced with empty token files (or, from a FIFO,
  the command hung on its second read)."""
  monkeypatch.chdir(tmp_path)
  assert prepare_text(tmp_path, 'mine', 'abcd' * 1000) == 0
  before = files_of(tmp_path / 'data' / 'mine')
  (tmp_path / 'fox.txt').write_text('the quick brown fox\n' * 100, encoding='utf-8')
  proc = prepare_command(tmp_path, shell_command)
  assert proc.returncode == 1, proc.stderr
  assert proc.stderr == (f'error: {path} is a pipe, not a file: its text is read twice (the vocabulary, then the ids), '
                         'so save it to a file first (e.g. cmd > input.txt) and give that path\n')
  assert proc.stdout == ''
  assert files_of(tmp_path / 'data' / 'mine') == before


def test_dev_stdin_of_a_file_is_the_file(tmp_path, monkeypatch):
  """`< fox.txt` makes /dev/stdin the file itself, which can be read twice:
  the data set is the one of the file's path."""
  monkeypatch.chdir(tmp_path)
  text = 'the quick brown fox\n' * 100
  assert prepare_text(tmp_path, 'fox', text) == 0
  proc = prepare_command(tmp_path, 'PREPARE char /dev/stdin --name stdin < fox.txt')
  assert proc.returncode == 0, proc.stderr
  assert files_of(tmp_path / 'data' / 'stdin') == files_of(tmp_path / 'data' / 'fox')
  assert len(read_set(tmp_path / 'data' / 'stdin')[0]['train']) == int(len(text) * 0.9)


def test_a_leading_byte_order_mark_is_not_a_character(tmp_path, monkeypatch):
  """Windows' UTF-8 files begin with U+FEFF: dropped there, so the data set
  is the one of the same text without it (one inside the text is a
  character of it, and stays)."""
  monkeypatch.chdir(tmp_path)
  (tmp_path / 'bom.txt').write_bytes(b'\xef\xbb\xbf' + 'to be or not\n'.encode('utf-8') * 50)
  assert prepare.main(['prepare', 'char', 'bom.txt', '--name', 'bom']) == 0
  assert prepare_text(tmp_path, 'plain', 'to be or not\n' * 50) == 0
  assert files_of(tmp_path / 'data' / 'bom') == files_of(tmp_path / 'data' / 'plain')
  assert read_set(tmp_path / 'data' / 'bom')[1]['itos'] == ['\n', ' ', 'b', 'e', 'n', 'o', 'r', 't']
  assert prepare_text(tmp_path, 'inner', 'to be\ufeffor not\n') == 0
  assert '\ufeff' in read_set(tmp_path / 'data' / 'inner')[1]['itos']


def test_a_byte_order_mark_counts_in_the_byte_of_an_error(tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)
  (tmp_path / 'bom.txt').write_bytes(b'\xef\xbb\xbf' + 'caf\u00e9 au lait'.encode('latin-1'))
  assert prepare.main(['prepare', 'char', 'bom.txt', '--name', 'bom']) == 1
  assert capsys.readouterr().err == ('error: bom.txt is not UTF-8 text (invalid continuation byte at byte 6): convert '
                                     'it first, e.g. iconv -f latin1 -t utf-8\n')


def test_text_that_changes_between_its_two_reads_keeps_the_data_set(tmp_path, monkeypatch, capsys):
  """A file still being written when it is prepared: the ids would not be
  those of the vocabulary's text, so nothing is replaced."""
  monkeypatch.chdir(tmp_path)
  assert prepare_text(tmp_path, 'mine', 'abcd' * 1000) == 0
  before = files_of(tmp_path / 'data' / 'mine')
  (tmp_path / 'log.txt').write_text('line one\n', encoding='utf-8')
  chunks = prepare.text_chunks

  def appended_after_the_first_read(path, description):
    if description == 'writing':
      with path.open('a', encoding='utf-8') as f:
        f.write('line two\n')
    return chunks(path, description)

  monkeypatch.setattr(prepare, 'text_chunks', appended_after_the_first_read)
  capsys.readouterr()
  assert prepare.main(['prepare', 'char', 'log.txt', '--name', 'mine', '--overwrite']) == 1
  assert capsys.readouterr().err == ('error: log.txt changed while it was read (9 characters, then 18): prepare it '
                                     'again once it is no longer being written\n')
  assert files_of(tmp_path / 'data' / 'mine') == before


def test_the_leftovers_of_a_killed_preparation_go_with_the_next(tmp_path):
  """kill -9 while the files are written leaves its temporary files (nothing
  can remove them then); the next preparation of the data set removes them."""
  (tmp_path / 'fox.txt').write_text('the quick brown fox\n' * 1000, encoding='utf-8')
  stalled = ('import json, sys, time; json.dumps = lambda *args, **kwargs: time.sleep(600); '  # after the ids
             'from jaxgpt import prepare; prepare.main(["prepare", "char", "fox.txt", "--name", "fox"])')
  killed = subprocess.Popen([sys.executable, '-c', stalled], cwd=tmp_path, stdout=subprocess.DEVNULL)
  folder = tmp_path / 'data' / 'fox'
  try:
    for _ in range(600):  # the three temporary files made, then the ids written into them
      if len(list(folder.glob('.*.tmp'))) == 3:
        break
      time.sleep(0.1)
  finally:
    killed.kill()
    killed.wait()
  leftovers = sorted(p.name for p in folder.iterdir())
  assert [name.split('.')[1:3] for name in leftovers] == [['meta', 'json'], ['train', 'bin'], ['val', 'bin']]
  assert all(name.split('.')[-3] == str(killed.pid) for name in leftovers)
  proc = prepare_command(tmp_path, 'PREPARE char fox.txt --name fox')
  assert proc.returncode == 0, proc.stderr
  assert sorted(p.name for p in folder.iterdir()) == ['meta.json', 'train.bin', 'val.bin']
