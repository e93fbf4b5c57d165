"""python -m jaxgpt.prepare char: any UTF-8 text as a character data set,
read in chunks; the same files as shakespeare_char's preparation; clean
errors that write nothing; and train.py on the result."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT, run_in_terminal
from jaxgpt import data, prepare


def read_set(folder):
  return ({split: np.fromfile(folder / f'{split}.bin', dtype=np.uint16) for split in ('train', 'val')},
          json.loads((folder / 'meta.json').read_text(encoding='utf-8')))


def test_char_set_is_shakespeare_chars_preparation(shakespeare, tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)
  (tmp_path / 'data' / 'shakespeare_char').mkdir(parents=True)
  shutil.copy(shakespeare, tmp_path / 'data' / 'shakespeare_char' / 'input.txt')
  data.prepare_shakespeare_char(tmp_path / 'data' / 'shakespeare_char')
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


def test_progress_on_a_terminal(shakespeare, tmp_path):
  status, text = run_in_terminal([sys.executable, '-m', 'jaxgpt.prepare', 'char', str(shakespeare), '--name', 'tty'],
                                 cwd=tmp_path)
  assert status == 0, text
  assert 'reading' in text and 'writing' in text and '1.1/1.1 MB' in text, text
  assert 'wrote data/tty: train with --config.dataset=tty' in text
