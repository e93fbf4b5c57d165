"""Every command of the README runs as written, in the order written, in a
fresh copy of the repository: a newcomer's first hour, on a small schedule.

The README's `sh` blocks are run line by line (a trailing backslash joins
lines) with these changes, and no others:
- what needs the network is already done: `pip install ...` (the test runs in
  the installed environment), tiny Shakespeare (copied into data/ as a user
  offline would), GPT-2 (a tiny random one in a Hugging Face cache, offline),
  a nanoGPT checkout (JAXGPT_NANOGPT_DIR, as the README allows);
- `python -m pytest` is this test's own command, and is left out;
- the schedules are cut a hundredfold (max_iters=2000 runs 20 iterations), and
  keys a command does not set get a small schedule (SMALL_SCHEDULE); the
  benchmarks get a few iterations (BENCH_FLAGS).
"""

import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys

import pytest
import torch
import transformers

from conftest import REPO_ROOT, make_workdir
from test_gpt2 import hub_cache, write_vocabulary

README = REPO_ROOT / 'README.md'
# what a command that trains gets for the keys it does not set itself
SMALL_SCHEDULE = dict(max_iters=20, lr_decay_iters=20, eval_interval=10, eval_iters=2, warmup_iters=2)
CUT = 100  # max_iters=2000 in the README runs 20 iterations here
BENCH_FLAGS = {'--nanogpt': ['--iters=12', '--rounds=1'], '--memory': ['--iters=3'],
               '--speedrun': ['--iters=12', '--seeds=1', '--config.max_iters=10', '--config.lr_decay_iters=10',
                              '--config.eval_start=10', '--config.eval_interval=10', '--config.warmup_iters=2']}


def readme_commands(text: str) -> list[str]:
  """The commands of the README's sh blocks, in order, continuation lines joined."""
  commands = []
  for block in re.findall(r'^```sh\n(.*?)^```', text, flags=re.M | re.S):
    commands += [line.strip() for line in block.replace('\\\n', ' ').splitlines() if line.strip()]
  return commands


def as_run_here(command: str) -> list[str] | None:
  """The command as this test runs it (None: left out), as argv."""
  command = re.sub(r'^pip install (-e )?\S+ && ', '', command)
  argv = shlex.split(command)
  if argv[:2] == ['pip', 'install'] or argv[:3] == ['python', '-m', 'pytest']:
    return None
  assert argv[0] == 'python', command
  argv[0] = sys.executable
  if 'train.py' in argv:
    argv = small_schedule(argv)
  if argv[1:3] == ['-m', 'jaxgpt.bench']:
    argv += next(flags for flag, flags in BENCH_FLAGS.items() if flag in argv)
  return argv


def small_schedule(argv: list[str]) -> list[str]:
  """A training command with its iteration counts cut, and SMALL_SCHEDULE for the keys it does not set."""
  prefix = '--config.' if any(arg.startswith('--config=') for arg in argv) else '--'
  cut = [re.sub(r'((?:max_iters|lr_decay_iters)=)(\d+)$', lambda m: f'{m[1]}{int(m[2]) // CUT}', arg) for arg in argv]
  given = {arg.split('=')[0].rsplit('.', 1)[-1].lstrip('-') for arg in argv if '=' in arg}
  return cut + [f'{prefix}{key}={value}' for key, value in SMALL_SCHEDULE.items() if key not in given]


def test_commands_are_found_and_kept_to_what_the_readme_says():
  commands = readme_commands(README.read_text())
  assert commands[0] == 'pip install -e . && python train.py --config=configs/shakespeare_char.py --config.device=cpu'
  assert commands[1] == "pip install -e '.[test]' && python -m pytest -q"
  assert as_run_here(commands[1]) is None
  argv = as_run_here('python train.py configs/x.py --max_iters=3000 --n_layer=2')
  assert argv[1:] == ['train.py', 'configs/x.py', '--max_iters=30', '--n_layer=2', '--lr_decay_iters=20',
                      '--eval_interval=10', '--eval_iters=2', '--warmup_iters=2']


@pytest.fixture(scope='module')
def fresh_clone(tmp_path_factory, shakespeare) -> pathlib.Path:
  """The repository's tracked files in a new folder, with tiny Shakespeare in data/ (no download)."""
  root = tmp_path_factory.mktemp('newcomer')
  clone = root / 'jaxgpt'
  subprocess.run(['git', 'clone', '-q', str(REPO_ROOT), str(clone)], check=True)
  for name in subprocess.run(['git', 'ls-files', '--others', '--exclude-standard', '--modified'], cwd=REPO_ROOT,
                             capture_output=True, text=True, check=True).stdout.split():
    if (REPO_ROOT / name).is_file():  # this checkout's uncommitted work: what the test is about
      (clone / name).parent.mkdir(parents=True, exist_ok=True)
      shutil.copy(REPO_ROOT / name, clone / name)
  make_workdir(clone, shakespeare)
  make_workdir(clone, shakespeare, 'shakespeare')
  return clone


@pytest.fixture(scope='module')
def offline_gpt2(tmp_path_factory) -> dict[str, str]:
  """A tiny random GPT-2 (1024 positions, as OpenAI's) as openai-community/gpt2 in a hub cache, offline."""
  folder = tmp_path_factory.mktemp('tiny-gpt2')
  torch.manual_seed(0)
  hf_config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=write_vocabulary(folder),
                                      activation_function='gelu')
  transformers.GPT2LMHeadModel(hf_config).save_pretrained(folder)
  cache = tmp_path_factory.mktemp('hub')
  hub_cache(cache, folder)
  return {'HF_HUB_CACHE': str(cache), 'HF_HUB_OFFLINE': '1'}


@pytest.mark.slow
def test_every_readme_command_runs_in_a_fresh_clone(fresh_clone, offline_gpt2, nanogpt_dir):
  env = os.environ | offline_gpt2 | {'JAXGPT_NANOGPT_DIR': str(nanogpt_dir)}
  outputs = {}
  for command in readme_commands(README.read_text()):
    argv = as_run_here(command)
    if argv is None:
      continue
    proc = subprocess.run(argv, cwd=fresh_clone, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f'{command}\nexit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}'
    outputs[command] = proc.stdout
  # a few of what each promises, beyond its exit status
  assert any('step 20: train loss' in out for command, out in outputs.items() if 'init_from=resume' not in command)
  listing = next(out for command, out in outputs.items() if 'jaxgpt.checkpoint' in command)
  assert 'best' in listing and 'latest' in listing, listing
  assert (fresh_clone / 'out-seed' / 'loss.png').is_file()
  assert (fresh_clone.parent / 'nanoGPT' / 'out-jaxgpt' / 'ckpt.pt').is_file()
  assert any(out.startswith('ROMEO:') for command, out in outputs.items() if 'out-imported' in command)
