"""The tests' own inputs (conftest.py): the corpus and nanoGPT's files found in the order documented, downloaded
once with their checksum checked, never half written, and skipped with one line when nowhere to be had. No network:
the downloads here read file:// URLs."""

import hashlib
import io
import urllib.error
import urllib.request

import pytest

import conftest
from conftest import ChecksumError, InputMissing, fetch, fetch_nanogpt, find_input, required

TEXT = b'First Citizen:\nBefore we proceed any further, hear me speak.\n'
TEXT_SHA256 = hashlib.sha256(TEXT).hexdigest()


def remote(tmp_path, content=TEXT):
  """A file:// URL serving content, and its file."""
  path = tmp_path / 'remote' / 'input.txt'
  path.parent.mkdir(exist_ok=True)
  path.write_bytes(content)
  return path.as_uri(), path


def test_fetch_downloads_once_then_reuses_the_file(tmp_path):
  url, served = remote(tmp_path)
  cached = tmp_path / 'cache' / 'tinyshakespeare' / 'input.txt'
  assert fetch(url, cached, TEXT_SHA256) == cached
  assert cached.read_bytes() == TEXT
  assert [p.name for p in cached.parent.iterdir()] == ['input.txt']  # no temporary file left
  served.unlink()  # offline from now on: the cached file serves
  assert fetch(url, cached, TEXT_SHA256) == cached and cached.read_bytes() == TEXT


def test_fetch_replaces_a_cached_file_that_is_not_the_one_recorded(tmp_path):
  url, _ = remote(tmp_path)
  cached = tmp_path / 'cache' / 'input.txt'
  cached.parent.mkdir()
  cached.write_bytes(TEXT[:10])
  assert fetch(url, cached, TEXT_SHA256).read_bytes() == TEXT


def test_fetch_refuses_another_file_and_keeps_nothing(tmp_path):
  url, _ = remote(tmp_path, TEXT.replace(b'speak', b'shout'))
  cached = tmp_path / 'cache' / 'input.txt'
  with pytest.raises(ChecksumError) as e:
    fetch(url, cached, TEXT_SHA256)
  assert str(e.value).startswith(f'{url} has sha256 ')
  assert str(e.value).endswith(f'not the {TEXT_SHA256} recorded in tests/conftest.py: not used')
  assert list(cached.parent.iterdir()) == []


class BrokenResponse(io.BytesIO):
  """A download whose connection drops after its first bytes."""

  def read(self, size=-1):
    if self.tell():
      raise ConnectionResetError('connection reset by peer')
    return super().read(10)


def test_interrupted_fetch_leaves_no_half_file(tmp_path, monkeypatch):
  monkeypatch.setattr(urllib.request, 'urlopen', lambda url, timeout: BrokenResponse(TEXT))
  cached = tmp_path / 'cache' / 'input.txt'
  with pytest.raises(ConnectionResetError):
    fetch('https://example.com/input.txt', cached, TEXT_SHA256)
  assert list(cached.parent.iterdir()) == []
  # as the tests see it: nothing to be had (they skip), and still nothing written
  assert find_input('JAXGPT_NO_SUCH_VARIABLE', tmp_path / 'shared' / 'input.txt',
                    lambda: fetch('https://example.com/input.txt', cached, TEXT_SHA256)) is None
  assert list(cached.parent.iterdir()) == []


def test_offline_fetch_writes_nothing(tmp_path):
  cached = tmp_path / 'cache' / 'tinyshakespeare' / 'input.txt'
  with pytest.raises(urllib.error.URLError):
    fetch((tmp_path / 'offline' / 'input.txt').as_uri(), cached, TEXT_SHA256)
  assert list(tmp_path.iterdir()) == []


def test_fetch_nanogpt_lays_out_its_files(tmp_path, monkeypatch):
  files = {'train.py': b'# train\n', 'config/train_shakespeare_char.py': b"out_dir = 'out-shakespeare-char'\n"}
  for name, content in files.items():
    (tmp_path / 'repo' / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / 'repo' / name).write_bytes(content)
  monkeypatch.setattr(conftest, 'NANOGPT_URL', (tmp_path / 'repo').as_uri() + '/')
  monkeypatch.setattr(conftest, 'NANOGPT_FILES', {name: hashlib.sha256(c).hexdigest() for name, c in files.items()})
  folder = fetch_nanogpt(tmp_path / 'cache' / 'nanogpt')
  assert {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob('*') if p.is_file()} == files


def test_nanogpt_files_recorded_are_those_of_the_commit():
  # the list ../shared/reference/nanogpt holds (and a clone has, less its notebooks, assets and README)
  assert set(conftest.NANOGPT_FILES) == {
      'LICENSE', 'model.py', 'train.py', 'sample.py', 'configurator.py', 'bench.py',
      *(f'config/{name}.py' for name in ('eval_gpt2', 'eval_gpt2_large', 'eval_gpt2_medium', 'eval_gpt2_xl',
                                         'finetune_shakespeare', 'train_gpt2', 'train_shakespeare_char')),
      *(f'data/{name}/prepare.py' for name in ('openwebtext', 'shakespeare', 'shakespeare_char'))}
  assert conftest.NANOGPT_URL == f'https://raw.githubusercontent.com/karpathy/nanoGPT/{conftest.NANOGPT_COMMIT}/'


def test_nanogpt_dir_holds_the_files_recorded(nanogpt_dir):
  # ../shared's, a named checkout's or the download's: nanoGPT's files as they are at the commit
  changed = [name for name, sha256 in conftest.NANOGPT_FILES.items()
             if conftest.file_sha256(nanogpt_dir / name) != sha256]
  assert changed == []


def test_the_corpus_is_the_one_recorded(shakespeare):
  assert conftest.file_sha256(shakespeare) == conftest.CORPUS_SHA256


def test_inputs_are_found_in_the_order_documented(tmp_path, monkeypatch):
  named, shared, downloaded = (tmp_path / name for name in ('named.txt', 'shared.txt', 'downloaded.txt'))
  named.write_text('named')
  shared.write_text('shared')

  def download():
    downloaded.write_text('downloaded')
    return downloaded

  def offline():
    raise urllib.error.URLError('[Errno -3] Temporary failure in name resolution')

  monkeypatch.setenv('JAXGPT_TEST_INPUT', str(named))
  assert find_input('JAXGPT_TEST_INPUT', shared, download) == named
  monkeypatch.setenv('JAXGPT_TEST_INPUT', '')
  assert find_input('JAXGPT_TEST_INPUT', shared, download) == shared
  assert not downloaded.exists()
  assert find_input('JAXGPT_TEST_INPUT', tmp_path / 'no-shared.txt', download) == downloaded
  assert find_input('JAXGPT_TEST_INPUT', tmp_path / 'no-shared.txt', offline) is None


def test_a_variable_naming_nothing_or_a_bad_download_fails(tmp_path, monkeypatch):
  monkeypatch.setenv('JAXGPT_TEST_INPUT', str(tmp_path / 'missing.txt'))
  with pytest.raises(pytest.fail.Exception, match=f'^JAXGPT_TEST_INPUT={tmp_path}/missing.txt: no such file or fol'):
    find_input('JAXGPT_TEST_INPUT', tmp_path, lambda: tmp_path)
  monkeypatch.delenv('JAXGPT_TEST_INPUT')
  url, _ = remote(tmp_path, b'not tiny Shakespeare')
  with pytest.raises(pytest.fail.Exception, match=f'^{url} has sha256 .* not used$'):
    find_input('JAXGPT_TEST_INPUT', tmp_path / 'no-shared.txt', lambda: fetch(url, tmp_path / 'x.txt', TEXT_SHA256))


def test_a_missing_input_skips_or_under_ci_fails(tmp_path, monkeypatch):
  monkeypatch.delenv('JAXGPT_REQUIRE_TEST_INPUTS', raising=False)
  assert required(tmp_path, 'corpus not found') == tmp_path
  with pytest.raises(InputMissing, match='^corpus not found$'):
    required(None, 'corpus not found')
  monkeypatch.setenv('JAXGPT_REQUIRE_TEST_INPUTS', '1')
  with pytest.raises(pytest.fail.Exception, match=r'^corpus not found \(JAXGPT_REQUIRE_TEST_INPUTS=1\)$'):
    required(None, 'corpus not found')
