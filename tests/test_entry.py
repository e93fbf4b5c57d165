"""What every entry point answers: --help and -h with its usage, a user's
mistake as one `error:` line (exit 1), Ctrl-C as one line (exit 130)."""

import signal
import subprocess
import sys

import pytest

from conftest import REPO_ROOT
from jaxgpt import entry
from jaxgpt.cli import main as train_main
from jaxgpt.config import base_config, load_config_file
from jaxgpt.errors import JaxGPTError, optional_import
from jaxgpt.sample import main as sample_main, sample_config


def listed(text: str, key: str, value) -> bool:
  """Whether --help's text lists key in both spellings, with value and a meaning on the next line."""
  lines = text.splitlines()
  entry_line = f'  --config.{key}, --{key} = {value!r}'
  return entry_line in lines and lines[lines.index(entry_line) + 1].startswith('      ') and \
      lines[lines.index(entry_line) + 1].strip() != ''


@pytest.mark.parametrize('flag', ['--help', '-h'])
def test_train_help_lists_every_config_key_with_its_default_and_meaning(flag, capsys):
  assert train_main(['train.py', flag]) == 0
  out = capsys.readouterr().out
  assert out.startswith('usage: python train.py [--config=FILE] [--config.KEY=VALUE ...]\n'
                        '       python train.py [FILE] [--KEY=VALUE ...]')
  missing = [key for key, value in base_config().items() if not listed(out, key, value)]
  assert not missing
  assert '  --config.seed, --seed = 1337\n      draws the initial weights, the batches and dropout\n' in out


def test_train_help_shows_the_values_of_the_config_file_named(monkeypatch, capsys):
  monkeypatch.chdir(REPO_ROOT)
  recipe = load_config_file('configs/shakespeare_char.py')
  for argv in (['--config=configs/shakespeare_char.py', '--help'], ['configs/shakespeare_char.py', '-h']):
    assert train_main(['train.py'] + argv) == 0
    out = capsys.readouterr().out
    assert 'The config keys, as configs/shakespeare_char.py sets them:' in out
    assert listed(out, 'out_dir', 'out-shakespeare-char') and listed(out, 'n_layer', recipe.n_layer)


@pytest.mark.parametrize('flag', ['--help', '-h'])
def test_sample_help_lists_every_flag_with_its_default_and_meaning(flag, capsys):
  assert sample_main(['sample.py', flag]) == 0
  out = capsys.readouterr().out
  assert out.startswith('usage: python sample.py [--KEY=VALUE ...]')
  assert not [key for key, value in sample_config().items() if not listed(out, key, value)]


@pytest.mark.slow
@pytest.mark.parametrize('command', [['train.py'], ['sample.py']] + [
    ['-m', f'jaxgpt.{module}'] for module in ('bench', 'ckpt_pt', 'data', 'gpt2', 'launch', 'parity', 'plot', 'prepare')])
def test_every_entry_point_answers_help(command):
  for flag in ('--help', '-h'):
    proc = subprocess.run([sys.executable, *command, flag], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith('usage:') and proc.stderr == '', (command, flag, proc)


@pytest.mark.slow
@pytest.mark.parametrize('command', [['ckpt_pt'], ['ckpt_pt', 'import'], ['ckpt_pt', 'export'], ['launch'], ['plot']])
def test_help_names_the_module_as_it_is_run(command):
  """usage: python -m jaxgpt.ckpt_pt ..., not the file's name (ckpt_pt.py, __main__.py)."""
  module, *subcommand = command
  proc = subprocess.run([sys.executable, '-m', f'jaxgpt.{module}', *subcommand, '--help'], cwd=REPO_ROOT,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0 and proc.stdout.startswith(' '.join(['usage: python -m', f'jaxgpt.{module}', *subcommand,
                                                                  '[-h]'])), proc.stdout


def test_a_user_mistake_is_one_error_line_and_exit_1(capsys):
  def work():
    raise JaxGPTError('the problem: the fix')
  assert entry.run(work, 'interrupted') == 1
  assert capsys.readouterr().err == 'error: the problem: the fix\n'


def test_ctrl_c_and_sigterm_are_one_line_and_exit_130(capsys):
  def work():
    signal.raise_signal(signal.SIGTERM)  # as Ctrl-C: the harness turns it into KeyboardInterrupt
  previous = signal.getsignal(signal.SIGTERM)
  assert entry.run(work, 'interrupted: nothing was written') == 130
  assert capsys.readouterr().err == 'interrupted: nothing was written\n'
  assert signal.getsignal(signal.SIGTERM) is previous  # the handler is restored on the way out
  assert entry.run(lambda: (_ for _ in ()).throw(KeyboardInterrupt('SIGINT')), lambda e: f'{e}: stopped') == 130
  assert capsys.readouterr().err == 'SIGINT: stopped\n'


def test_a_closed_terminal_sighup_is_one_line_and_exit_130(capsys):
  previous = signal.getsignal(signal.SIGHUP)
  assert entry.run(lambda: signal.raise_signal(signal.SIGHUP), 'interrupted: nothing was written') == 130
  assert capsys.readouterr().err == 'interrupted: nothing was written\n'  # stderr is no terminal here: kept
  assert signal.getsignal(signal.SIGHUP) is previous


def test_stop_signals_noted_note_the_first_and_raise_the_second():
  said = []

  class Said(entry.StopSignals):
    def on_noted(self, signum):
      said.append(signum)

  previous = {s: signal.getsignal(s) for s in entry.STOP_SIGNALS}
  with Said(noted=True) as stop:
    signal.raise_signal(signal.SIGTERM)  # noted, not raised: the work goes on to a point of its choosing
    assert (stop.received, said, stop.first_signal()) == ([signal.SIGTERM], [signal.SIGTERM], 'SIGTERM')
    with pytest.raises(KeyboardInterrupt, match='^SIGINT$'):  # a second: at once
      signal.raise_signal(signal.SIGINT)
  assert stop.received == [signal.SIGTERM] and said == [signal.SIGTERM]
  assert {s: signal.getsignal(s) for s in entry.STOP_SIGNALS} == previous  # given back


def test_stop_signals_raise_at_once_unless_noted():
  with entry.StopSignals() as stop, pytest.raises(KeyboardInterrupt, match='^SIGHUP$'):
    signal.raise_signal(signal.SIGHUP)
  assert stop.received == []


def test_stop_signals_can_leave_an_ignored_signal_ignored():
  previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as in a background job
  try:
    with entry.StopSignals(noted=True, keep_ignored=True) as stop:
      assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
      signal.raise_signal(signal.SIGINT)
      assert stop.received == []
      assert signal.getsignal(signal.SIGTERM) == stop._stop  # the others handled
    with entry.StopSignals(noted=True) as stop:  # train.py's: every stop signal is heard
      signal.raise_signal(signal.SIGINT)
      assert stop.received == [signal.SIGINT]
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
  finally:
    signal.signal(signal.SIGINT, previous)


def test_an_ignored_sighup_stays_ignored_under_nohup():
  """nohup: the user asked for the work to outlive the terminal; entry.run and a StopSignals that hears every
  other ignored signal (train.py's) leave SIGHUP ignored, and the work goes on past one."""
  previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGHUP, signal.SIGINT)}
  try:
    def work():
      with entry.StopSignals(noted=True) as stop:
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        signal.raise_signal(signal.SIGHUP)
        assert stop.received == []
        signal.raise_signal(signal.SIGINT)  # ignored too, but heard: only SIGHUP is kept ignored
        assert stop.received == [signal.SIGINT]
      return 7
    assert entry.run(work, 'interrupted', uses_jax=False) == 7
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)


# each command on what it needs: a data set to prepare from a small text, or a folder with no metrics.jsonl to plot
COMMANDS_WITHOUT_JAX = {'prepare': ['jaxgpt.prepare', 'char', 'input.txt', '--name', 'tiny'],
                        'data': ['jaxgpt.data', 'shakespeare_char'],
                        'plot': ['jaxgpt.plot', 'no_run']}


@pytest.mark.parametrize('command', COMMANDS_WITHOUT_JAX)
def test_commands_that_run_no_jax_leave_it_unloaded(command, tmp_path):
  """Preparing data and plotting run through entry.run, but do not set jax up (runtime.setup imports it)."""
  (tmp_path / 'input.txt').write_text('To be, or not to be: that is the question.\n' * 50)
  (tmp_path / 'no_run').mkdir()
  module, *args = COMMANDS_WITHOUT_JAX[command]
  program = ('import runpy, sys\n'
             f'sys.argv = [{module!r}, *{args!r}]\n'
             'try:\n'
             f'  runpy.run_module({module!r}, run_name="__main__", alter_sys=True)\n'
             'finally:\n'
             '  print("jax loaded:", "jax" in sys.modules, file=sys.stderr)\n')
  proc = subprocess.run([sys.executable, '-c', program], cwd=tmp_path, capture_output=True, text=True, timeout=300)
  assert proc.stderr.splitlines()[-1] == 'jax loaded: False', proc.stderr
  assert 'Traceback' not in proc.stderr


def test_work_returns_its_exit_status():
  assert entry.run(lambda: None, '') == 0
  assert entry.run(lambda: 3, '') == 3


def test_a_missing_extra_names_what_needs_it_and_how_to_install_it():
  with pytest.raises(JaxGPTError) as e:
    optional_import('jaxgpt_no_such_module.sub', 'reading X', 'x', instead='pass --config.x=False')
  assert str(e.value) == 'reading X needs jaxgpt_no_such_module: pip install -e ".[x]", or pass --config.x=False'
  assert optional_import('json', 'reading X', 'x').dumps([1]) == '[1]'
