"""GPT-2 in Hugging Face's layout, against transformers: the BPE tokenizer,
loading weights (init_from=gpt2*), writing them (python -m jaxgpt.gpt2
export), the hub cache, and the finetune recipe end to end.

A tiny randomly initialised GPT2LMHeadModel (exact GELU, as nanoGPT runs
GPT-2) and a tiny byte-level BPE vocabulary stand in for OpenAI's files: the
tests never download.
"""

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from safetensors import numpy as safetensors_numpy

from conftest import REPO_ROOT, TINY, file_size_limit, finish, make_workdir
from jaxgpt import files, gpt2
from jaxgpt.checkpoint import Checkpoints
from jaxgpt.model import GPTConfig
from jaxgpt.errors import JaxGPTError
from jaxgpt.step import abstract_params, init_model
from jaxgpt.tokenizer import GPT2Tokenizer, _byte_of_symbol

# merges of the tiny BPE, in rank order ('Ġ' is how GPT-2's vocab.json spells a space)
MERGES = [('Ġ', 't'), ('h', 'e'), ('Ġt', 'he'), ('e', 'r'), ('Ġ', 'a'), ('i', 'n'), ('o', 'u'),
          ('Ġ', 's'), ('Ġ', 'w'), ('o', 'r'), ('Ġa', 'n'), ('Ġan', 'd'), ('e', 'n'), ('l', 'l')]
LAYERS, HEADS, WIDTH, POSITIONS = 2, 2, 32, 32
TEXT = 'ROMEO:\nBut soft, what light through yonder window breaks?\n<|endoftext|> naïve café — ünïcödé'


def write_vocabulary(folder) -> int:
  """vocab.json and merges.txt of a tiny GPT-2 BPE in folder; returns its size."""
  # ids of the single bytes in tiktoken's order: the printable ones first
  vocab = {symbol: i for i, symbol in enumerate(sorted(_byte_of_symbol(), key=lambda s: _rank(s)))}
  for first, second in MERGES:
    vocab[first + second] = len(vocab)
  vocab['<|endoftext|>'] = len(vocab)
  (folder / 'vocab.json').write_text(json.dumps(vocab, ensure_ascii=False), encoding='utf-8')
  (folder / 'merges.txt').write_text('#version: 0.2\n' + ''.join(f'{a} {b}\n' for a, b in MERGES),
                                     encoding='utf-8')
  return len(vocab)


def _rank(symbol: str) -> int:
  """A byte's id in GPT-2's vocabulary: printable bytes in byte order, then the rest."""
  byte = _byte_of_symbol()[symbol]
  printable = [b for b in range(256) if chr(b).isprintable() and chr(b) != ' ']
  return printable.index(byte) if byte in printable else len(printable) + ord(symbol) - 256


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory):
  """(folder, transformers model): a tiny GPT-2 saved with save_pretrained, plus its tokenizer files."""
  folder = tmp_path_factory.mktemp('tiny-gpt2')
  vocab_size = write_vocabulary(folder)
  torch.manual_seed(0)
  hf_config = transformers.GPT2Config(n_layer=LAYERS, n_head=HEADS, n_embd=WIDTH, n_positions=POSITIONS,
                                      vocab_size=vocab_size, activation_function='gelu')
  model = transformers.GPT2LMHeadModel(hf_config).eval()
  with torch.no_grad():  # transformers initialises biases and LayerNorms to 0 and 1: make them count
    for name, p in model.named_parameters():
      if name.endswith('bias') or '.ln_' in name:
        p.add_(0.1 * torch.randn_like(p))
  model.save_pretrained(folder)
  return folder, model


def tokens(seed, shape, vocab_size):
  return np.random.default_rng(seed).integers(0, vocab_size, shape).astype(np.int32)


def jaxgpt_logits(config: GPTConfig, params, idx) -> np.ndarray:
  graphdef, _ = abstract_params(config)
  logits, _ = nnx.merge(graphdef, params)(idx)
  return np.asarray(logits)


def hf_logits(model, idx) -> np.ndarray:
  with torch.no_grad():
    return model(torch.from_numpy(idx).long()).logits.numpy()


# the tokenizer

def test_tokenizer_is_transformers_gpt2_tokenizer(pretrained):
  folder, _ = pretrained
  ours = GPT2Tokenizer(folder)
  theirs = transformers.GPT2Tokenizer(str(folder / 'vocab.json'), str(folder / 'merges.txt'))
  ids = ours.encode(TEXT)
  assert ids == theirs.encode(TEXT)
  assert ours.decode(ids) == TEXT
  assert len(ids) < len(TEXT.encode()) - 10  # merges happened: ' the', ' and', 'er', ...
  end_of_text = ours.encoding.eot_token
  assert ids.count(end_of_text) == 1  # as nanoGPT's sample.py: the special token is allowed
  assert end_of_text not in ours.encode_ordinary(TEXT)  # data sets: it is plain text


def test_tokenizer_errors(tmp_path):
  (tmp_path / 'vocab.json').write_text('{"a": 0}')  # no <|endoftext|>
  with pytest.raises(JaxGPTError, match=r'vocab\.json is not GPT-2\'s vocabulary \(KeyError'):
    GPT2Tokenizer(tmp_path)
  with pytest.raises(JaxGPTError, match=r'gpt2_dir .* lacks vocab\.json: point it at a GPT-2 folder'):
    gpt2.tokenizer(str(tmp_path / 'nowhere'))


# weights in

def test_loaded_weights_give_transformers_logits(pretrained):
  folder, model = pretrained
  config = gpt2.pretrained_config(folder)
  assert (config.n_layer, config.n_head, config.n_embd, config.block_size, config.bias) == (
      LAYERS, HEADS, WIDTH, POSITIONS, True)
  _, like = abstract_params(config)
  params = gpt2.load_params(folder, config, like)
  idx = tokens(0, (2, POSITIONS), config.vocab_size)
  expected = hf_logits(model, idx)
  np.testing.assert_allclose(jaxgpt_logits(config, params, idx), expected, rtol=0, atol=1e-4)
  assert np.abs(expected).max() > 0.1  # logits that mean something


def test_smaller_block_size_crops_the_positions(pretrained):
  folder, model = pretrained
  config = GPTConfig(**(vars(gpt2.pretrained_config(folder)) | {'block_size': 8}))
  params = gpt2.load_params(folder, config, abstract_params(config)[1])
  assert params['wpe']['embedding'].shape == (8, WIDTH)
  idx = tokens(1, (2, 8), config.vocab_size)
  np.testing.assert_allclose(jaxgpt_logits(config, params, idx), hf_logits(model, idx), rtol=0, atol=1e-4)


def test_hub_file_layout_loads_the_same(pretrained, tmp_path):
  """The hub's model.safetensors names tensors without `transformer.` and
  older ones carry the attention mask buffers."""
  folder, _ = pretrained
  tensors = safetensors_numpy.load_file(folder / gpt2.WEIGHTS)
  hub = {name.removeprefix('transformer.'): array for name, array in tensors.items()}
  for i in range(LAYERS):
    hub[f'h.{i}.attn.bias'] = np.tril(np.ones((1, 1, POSITIONS, POSITIONS), np.float32))
    hub[f'h.{i}.attn.masked_bias'] = np.array(-1e4, np.float32)
  safetensors_numpy.save_file(hub, tmp_path / gpt2.WEIGHTS)
  shutil.copy(folder / gpt2.CONFIG, tmp_path / gpt2.CONFIG)
  config = gpt2.pretrained_config(folder)
  like = abstract_params(config)[1]
  ours = gpt2.load_params(tmp_path, config, like)
  theirs = gpt2.load_params(folder, config, like)
  for path, array in nnx.traversals.flatten_mapping(theirs).items():
    np.testing.assert_array_equal(nnx.traversals.flatten_mapping(ours)[path], array, err_msg=str(path))


def test_weights_errors(pretrained, tmp_path):
  folder, _ = pretrained
  (tmp_path / gpt2.CONFIG).write_text('{"n_layer": 2}')
  with pytest.raises(JaxGPTError, match=r'config\.json is not a GPT-2 config \(KeyError'):
    gpt2.pretrained_config(tmp_path)
  (tmp_path / gpt2.WEIGHTS).write_bytes(b'not safetensors')
  config = gpt2.pretrained_config(folder)
  with pytest.raises(JaxGPTError, match=r'model\.safetensors cannot be read'):
    gpt2.load_params(tmp_path, config, abstract_params(config)[1])
  wider = GPTConfig(**(vars(config) | {'n_embd': 2 * WIDTH}))
  with pytest.raises(JaxGPTError, match=r'model\.safetensors: transformer\.\S+: shape \(.+\) does not match the model\'s \(.+\)'):
    gpt2.load_params(folder, wider, abstract_params(wider)[1])
  with pytest.raises(JaxGPTError, match=r"'gpt3' is not a GPT-2 model: choose one of gpt2, gpt2-medium"):
    gpt2.locate('gpt3')


# weights out

def test_saved_folder_loads_in_transformers_with_the_same_logits(tmp_path):
  config = dataclasses.replace(TINY, vocab_size=70)  # not GPT-2's: any vocabulary saves
  _, _, params = init_model(config, seed=3)
  gpt2.save_pretrained(tmp_path, config, params)
  assert json.loads((tmp_path / gpt2.CONFIG).read_text())['activation_function'] == 'gelu'
  model = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
  idx = tokens(2, (2, 16), config.vocab_size)
  np.testing.assert_allclose(hf_logits(model, idx), jaxgpt_logits(config, params, idx), rtol=0, atol=1e-4)
  back = gpt2.load_params(tmp_path, config, abstract_params(config)[1])  # and the round trip is exact
  for path, array in nnx.traversals.flatten_mapping(params).items():
    np.testing.assert_array_equal(nnx.traversals.flatten_mapping(back)[path], array, err_msg=str(path))


def test_saving_a_model_without_biases_is_an_error(tmp_path):
  config = dataclasses.replace(TINY, n_layer=1, bias=False)
  with pytest.raises(JaxGPTError, match='GPT-2 has biases in every Linear and LayerNorm'):
    gpt2.save_pretrained(tmp_path, config, init_model(config, seed=0)[2])
  assert not list(tmp_path.iterdir())


def test_saved_files_have_the_umask_mode_and_a_killed_export_leaves_nothing(tmp_path):
  """Each file as a plain write makes it (0666 less the umask; safetensors'
  own save_file makes 0600), and a killed export's temporary file is removed
  by the next export."""
  params = init_model(TINY, seed=0)[2]
  folder = tmp_path / 'exported'
  folder.mkdir()
  proc = subprocess.Popen([sys.executable, '-c', ''])
  proc.wait()  # its id: of a process gone, as one killed with kill -9 mid-write
  files.temp_path(folder / gpt2.WEIGHTS, pid=proc.pid).write_bytes(b'half a model')
  umask = os.umask(0o027)
  try:
    gpt2.save_pretrained(folder, TINY, params)
  finally:
    os.umask(umask)
  assert {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir()} == {gpt2.WEIGHTS: 0o640, gpt2.CONFIG: 0o640}


def test_save_on_a_full_disk_is_one_error_and_leaves_no_folder(tmp_path):
  folder = tmp_path / 'new' / 'exported'
  with file_size_limit(20_000), pytest.raises(JaxGPTError, match=re.escape(
      f'cannot write {folder} (File too large): free some space or pick another folder; nothing was written')):
    gpt2.save_pretrained(folder, TINY, init_model(TINY, seed=0)[2])
  assert os.listdir(tmp_path) == []


# the hub cache

def hub_cache(cache, pretrained_folder):
  """A Hugging Face hub cache holding pretrained_folder as openai-community/gpt2."""
  repo = cache / 'models--openai-community--gpt2'
  revision = '0123456789abcdef0123456789abcdef01234567'
  snapshot = repo / 'snapshots' / revision
  snapshot.mkdir(parents=True)
  for name in (gpt2.CONFIG, gpt2.WEIGHTS, gpt2.TOKENIZER):
    shutil.copy(pretrained_folder / name, snapshot / name)
  (repo / 'refs').mkdir()
  (repo / 'refs' / 'main').write_text(revision)


def run(workdir, script, *args, env=None, timeout=300):
  """Runs one of the repo's scripts (or `-m module`) with cwd=workdir."""
  command = [sys.executable, *(['-m'] if script == '-m' else [str(REPO_ROOT / script)]), *map(str, args)]
  return finish(subprocess.Popen(command, cwd=workdir, env=os.environ | (env or {}), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True), timeout=timeout)


@pytest.mark.slow
def test_sample_from_gpt2_in_the_hub_cache_offline(pretrained, tmp_path):
  folder, _ = pretrained
  hub_cache(tmp_path / 'hub', folder)
  offline = {'HF_HUB_CACHE': str(tmp_path / 'hub'), 'HF_HUB_OFFLINE': '1'}
  proc = run(tmp_path, 'sample.py', '--init_from=gpt2', '--start=But the', '--num_samples=2',
             '--max_new_tokens=5', env=offline)
  assert proc.returncode == 0, proc.stderr
  samples = proc.stdout.split('---------------\n')
  assert len(samples) == 3 and samples[2] == '', proc.stdout
  assert all(s.startswith('But the') and len(s) > len('But the\n') for s in samples[:2]), proc.stdout
  assert re.fullmatch(r'[\d,]+ tokens/s generating 2 x 5 tokens in \d+\.\d\d s \(compiling took \d+\.\d s before\), '
                      r'from gpt2, with the key/value cache\n', proc.stderr), proc.stderr

  empty = offline | {'HF_HUB_CACHE': str(tmp_path / 'empty')}
  proc = run(tmp_path, 'sample.py', '--init_from=gpt2-medium', env=empty)
  assert proc.returncode == 1
  assert proc.stderr.startswith('error: gpt2-medium is not in the Hugging Face cache and could not be '
                                'downloaded ('), proc.stderr
  assert proc.stderr.rstrip().endswith('run `hf download openai-community/gpt2-medium` where you are online, '
                                       'or pass --config.gpt2_dir=FOLDER with its config.json and model.safetensors')
  assert len(proc.stderr.splitlines()) == 1


@pytest.mark.slow
def test_sample_through_nanogpts_eval_config_samples_its_gpt2(pretrained, tmp_path, nanogpt_dir):
  # as nanoGPT's `python sample.py config/eval_gpt2.py`: the GPT-2 it names, not a checkpoint in out_dir (none)
  folder, _ = pretrained
  hub_cache(tmp_path / 'hub', folder)
  offline = {'HF_HUB_CACHE': str(tmp_path / 'hub'), 'HF_HUB_OFFLINE': '1'}
  proc = run(tmp_path, 'sample.py', nanogpt_dir / 'config' / 'eval_gpt2.py', '--start=But the', '--num_samples=2',
             '--max_new_tokens=5', '--seed=3', env=offline)
  assert proc.returncode == 0, proc.stderr
  assert re.fullmatch(r'[\d,]+ tokens/s generating 2 x 5 tokens in .*, from gpt2, with the key/value cache\n',
                      proc.stderr), proc.stderr
  flags = run(tmp_path, 'sample.py', '--init_from=gpt2', '--start=But the', '--num_samples=2', '--max_new_tokens=5',
              '--seed=3', env=offline)
  assert proc.stdout.startswith('But the') and proc.stdout == flags.stdout  # the samples of --init_from=gpt2
  assert not (tmp_path / 'out').exists()


# the finetune recipe, end to end

FINETUNE = REPO_ROOT / 'configs' / 'finetune_shakespeare.py'


@pytest.fixture(scope='module')
def finetuned(pretrained, tmp_path_factory, shakespeare):
  """train.py with the finetune recipe from the tiny GPT-2, block_size 16, then its export."""
  folder, _ = pretrained
  workdir = make_workdir(tmp_path_factory.mktemp('finetune'), shakespeare, 'shakespeare')
  train = run(workdir, 'train.py', f'--config={FINETUNE}', '--config.init_from=gpt2', f'--config.gpt2_dir={folder}',
              '--config.block_size=16', '--config.batch_size=4', '--config.gradient_accumulation_steps=2',
              '--config.max_iters=4', '--config.eval_interval=2', '--config.eval_iters=2',
              '--config.learning_rate=1e-3')
  return workdir, train


@pytest.mark.slow
def test_finetune_recipe_trains_from_gpt2_and_samples(finetuned, pretrained):
  workdir, train = finetuned
  assert train.returncode == 0, train.stderr
  lines = train.stdout.splitlines()
  assert 'Initializing from OpenAI GPT-2 weights: gpt2' in lines
  assert 'tokens per iteration will be: 128' in lines
  assert any(line.startswith('train has ') for line in lines)  # data/shakespeare prepared in GPT-2 tokens
  assert 'saving checkpoint to out-shakespeare' in lines
  sample = run(workdir, 'sample.py', '--out_dir=out-shakespeare', '--start=But the', '--num_samples=1',
               '--max_new_tokens=8')
  assert sample.returncode == 0, sample.stderr
  assert sample.stdout.startswith('But the') and sample.stdout.endswith('\n---------------\n')


@pytest.mark.slow
def test_export_of_the_finetuned_run_loads_in_transformers(finetuned, pretrained):
  workdir, _ = finetuned
  proc = run(workdir, '-m', 'jaxgpt.gpt2', 'export', '--out_dir=out-shakespeare', 'exported')
  assert proc.returncode == 0, proc.stderr
  checkpoints = Checkpoints(workdir / 'out-shakespeare', read_only=True)
  step = checkpoints.best_step()
  assert proc.stdout == f'exported step {step} of out-shakespeare to exported\n'
  config = GPTConfig(**checkpoints.meta(step)['model_args'])
  assert config.block_size == 16  # cropped from the tiny GPT-2's 32
  params = checkpoints.params(step, abstract_params(config)[1])
  checkpoints.close()
  model = transformers.GPT2LMHeadModel.from_pretrained(workdir / 'exported').eval()
  idx = tokens(4, (2, 16), config.vocab_size)
  ours = jaxgpt_logits(config, params, idx)
  np.testing.assert_allclose(hf_logits(model, idx), ours, rtol=0, atol=1e-4)
  assert np.abs(ours - hf_logits(pretrained[1], idx)).max() > 1e-2  # finetuning moved the weights


@pytest.mark.slow
def test_gpt2_init_errors(pretrained, tmp_path, shakespeare):
  folder, _ = pretrained
  make_workdir(tmp_path, shakespeare)
  proc = run(tmp_path, 'train.py', f'--config={FINETUNE}', '--config.init_from=gpt2', f'--config.gpt2_dir={folder}',
             '--config.dataset=shakespeare_char')
  assert proc.returncode == 1
  assert proc.stderr.splitlines()[-1] == ('error: dataset shakespeare_char is character-level; gpt2 reads GPT-2 '
                                          'tokens: prepare the data set in GPT-2 tokens (as data/shakespeare)')
  make_workdir(tmp_path, shakespeare, 'shakespeare')
  proc = run(tmp_path, 'train.py', f'--config={FINETUNE}', '--config.init_from=gpt2', f'--config.gpt2_dir={folder}',
             '--config.n_layer=3')
  assert proc.returncode == 1
  assert proc.stderr.splitlines()[-1] == ('error: --config.n_layer=3 conflicts with gpt2, which has n_layer=2: drop '
                                          'the override (only block_size may be smaller, to crop the context)')
  assert not (tmp_path / 'out-shakespeare').exists() or not any((tmp_path / 'out-shakespeare').iterdir())


@pytest.mark.slow
def test_export_refuses_a_folder_holding_a_model_and_replaces_it_whole_with_overwrite(finetuned, capsys):
  """An export over a GPT-2 folder: refused, then, with --overwrite, replaced
  file by file, each moved in whole."""
  workdir, _ = finetuned
  exported = workdir / 'exported-twice'
  exported.mkdir()
  (exported / gpt2.CONFIG).write_text('{"kept": true}')
  assert gpt2.main(['gpt2', 'export', '--out_dir=' + str(workdir / 'out-shakespeare'), str(exported)]) == 1
  assert capsys.readouterr().err.splitlines() == [
      f'error: {exported} holds a model (config.json): export to another folder, or pass --overwrite to replace it']
  assert (exported / gpt2.CONFIG).read_text() == '{"kept": true}'
  assert gpt2.main(['gpt2', 'export', '--out_dir=' + str(workdir / 'out-shakespeare'), str(exported),
                    '--overwrite']) == 0
  assert sorted(p.name for p in exported.iterdir()) == [gpt2.CONFIG, gpt2.WEIGHTS]  # no temporary file left
  assert json.loads((exported / gpt2.CONFIG).read_text())['model_type'] == 'gpt2'
