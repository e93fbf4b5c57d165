"""The benchmark runs and prints its figures (it is timed by people, not tests)."""

import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest
from conftest import REPO_ROOT, TINY_RUN, config_flags, linux_only, make_workdir, snapshot

from jaxgpt import bench as bench_module


def bench(*args, cwd=REPO_ROOT, env=None):
  return subprocess.run([sys.executable, '-m', 'jaxgpt.bench', *args], cwd=cwd, capture_output=True,
                        text=True, timeout=300, env=env)


def bench_here(monkeypatch, capsys, cwd: pathlib.Path, *args: str, **env: str) -> subprocess.CompletedProcess:
  """bench's main with args in this process, as bench() runs it but for jax's and torch's start: from cwd, nanoGPT
  found by --nanogpt_dir alone, env's variables set (its runs, child processes, inherit them)."""
  monkeypatch.chdir(cwd)
  monkeypatch.delenv('JAXGPT_NANOGPT_DIR', raising=False)
  for name, value in env.items():
    monkeypatch.setenv(name, value)
  status = bench_module.main(['bench', *args])
  out, err = capsys.readouterr()
  return subprocess.CompletedProcess(args, status, out, err)


def is_printed_ratio(ratio: str, numerator: str, denominator: str) -> bool:
  """Whether ratio, as printed, can be numerator / denominator, each printed rounded to its decimals: the
  program divides the unrounded figures, known here only to half a unit of their last decimal."""
  def bounds(figure: str) -> tuple[float, float]:
    half = 0.5 * 10 ** -len(figure.partition('.')[2])
    return float(figure.replace(',', '')) - half, float(figure.replace(',', '')) + half
  (r_low, r_high), (n_low, n_high), (d_low, d_high) = map(bounds, (ratio, numerator, denominator))
  return r_low <= n_high / d_low and n_low / d_high <= r_high


@pytest.mark.slow
@linux_only('the CPU affinity (os.sched_getaffinity), whose cores bench reports')
def test_bench_times_float32_and_bfloat16_by_turns():
  proc = bench('--steps=25', '--config.n_layer=1', '--config.compile=True')
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.splitlines()
  cores = len(os.sched_getaffinity(0))
  threads = max(k for k in range(1, min(cores, 12) + 1) if 12 % k == 0)  # as train.py: one a core, as 12 rows split
  assert lines[2] == ('config: 1 layers, 4 heads, 128 wide, block 64, batch 12, compile=True, '
                      f'threads={threads}, jax {__import__("jax").__version__}, {cores} cores')
  for dtype in ('float32', 'bfloat16'):
    assert any(re.fullmatch(rf'{dtype}: compile \+ first step \d+\.\d\d s', line) for line in lines), lines
    assert any(re.fullmatch(rf'{dtype}: median \d+\.\d\d ms/iter \(25 steps; 10% \d+\.\d\d, 90% \d+\.\d\d\), '
                            r'[\d,]+ tokens/s', line) for line in lines), lines
  medians = {m[1]: m[2] for m in (re.match(r'(\w+): median ([\d.]+) ms/iter', line) for line in lines) if m}
  ratio = re.fullmatch(r"float32 / bfloat16: (\d+\.\d\d)x \(float32's time over bfloat16's: above 1, bfloat16 is "
                       r'the faster\)', lines[-2])
  assert ratio, lines[-2]
  assert is_printed_ratio(ratio[1], medians['float32'], medians['bfloat16']), lines
  assert re.fullmatch(r'peak RSS: \d+ MB \(this process, float32 and bfloat16 steps compiled\)', lines[-1])


@pytest.mark.slow
def test_bench_one_dtype():
  proc = bench('--steps=3', '--config.n_layer=1', '--config.dtype=bfloat16')
  assert proc.returncode == 0, proc.stderr
  assert 'float32' not in proc.stdout and 'bfloat16: median ' in proc.stdout


def usage_error(capsys, *flags: str) -> str:
  """The message of the usage error (exit status 2) that bench's flags are, checked in this process."""
  with pytest.raises(SystemExit) as e:
    bench_module.main(['bench', *flags])
  assert e.value.code == 2, flags
  return capsys.readouterr().err


def test_bench_bad_flags(capsys, tmp_path, monkeypatch):
  assert bench_module.main(['bench', '--config.n_embd=130']) == 1
  assert capsys.readouterr().err.startswith('error: n_embd=130 is not divisible by n_head=4')
  assert '--iters=4: --nanogpt times iterations 5 on, so it needs at least 5' in usage_error(capsys, '--nanogpt',
                                                                                              '--iters=4')
  assert '--nanogpt times training runs: leave out --generate' in usage_error(capsys, '--nanogpt', '--generate')
  assert 'each core count must be 1 to' in usage_error(capsys, '--cores=0')
  assert "'1,x' is not a list of core counts" in usage_error(capsys, '--cores=1,x')
  assert '--processes=1 must be 2 to the' in usage_error(capsys, '--processes=1')
  monkeypatch.chdir(tmp_path)  # nothing runs: no data set is prepared there
  assert bench_module.main(['bench', '--processes=2', '--config.batch_size=5']) == 1
  assert capsys.readouterr().err == 'error: --processes=2: batch_size=5 does not split across that many processes\n'
  assert not list(tmp_path.iterdir())


TINY_OVERRIDES = config_flags(TINY_RUN | dict(n_layer=1, batch_size=4))
# appended to the train.py of a copy of nanoGPT's files: each run of it writes where it ran from
MARKER = "\nimport os; open(os.environ['BENCH_TEST_MARKER'], 'a').write(os.path.abspath(__file__) + '\\n')\n"


def marked_copy(nanogpt_dir: pathlib.Path, folder: pathlib.Path) -> pathlib.Path:
  """folder, holding nanoGPT's files, its train.py with MARKER at the end."""
  shutil.copytree(nanogpt_dir, folder, copy_function=shutil.copyfile)  # copyfile: writable copies
  with open(folder / 'train.py', 'a') as f:
    f.write(MARKER)
  return folder


@pytest.mark.slow
@linux_only('the CPU affinity (os.sched_getaffinity), whose cores bench reports')
def test_bench_nanogpt_runs_nanogpts_own_train_py_by_turns(tmp_path, shakespeare, nanogpt_dir, monkeypatch, capsys):
  workdir = make_workdir(tmp_path / 'jaxgpt', shakespeare)
  named = marked_copy(nanogpt_dir, tmp_path / 'nanoGPT')
  before = snapshot(named)
  marker = tmp_path / 'ran'
  # no ../nanoGPT beside workdir, no JAXGPT_NANOGPT_DIR: nanoGPT is found by --nanogpt_dir alone
  proc = bench_here(monkeypatch, capsys, workdir, '--nanogpt', '--iters=6', '--rounds=2', *TINY_OVERRIDES,
                    '--config.dtype=float32', f'--nanogpt_dir={named}', BENCH_TEST_MARKER=str(marker))
  assert proc.returncode == 0, proc.stderr
  # nanoGPT's train.py of the named folder ran once a round, from a copy that is gone, and the folder is as it was
  ran = marker.read_text().splitlines()
  assert len(ran) == 2 and all(path.endswith('/train.py') and not pathlib.Path(path).exists() for path in ran), ran
  assert snapshot(named) == before
  lines = proc.stdout.splitlines()
  at = lines.index(f'nanoGPT: {named / "train.py"}, run in a scratch copy of its checkout as')
  # the seed command in nanoGPT's spelling, then the overrides that it has too (not dtype)
  assert lines[at + 1] == ('  python train.py config/train_shakespeare_char.py --device=cpu --compile=False '
                           '--eval_iters=20 --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 '
                           '--n_embd=128 --max_iters=6 --lr_decay_iters=2000 --dropout=0.0 --batch_size=4 '
                           '--block_size=32 --n_embd=32 --n_head=2 --n_layer=1 --out_dir=TEMP')
  assert lines[at + 2] == (f'jaxgpt: python {REPO_ROOT / "train.py"} --config={REPO_ROOT / "configs" / "shakespeare_char.py"} '
                           '--config.device=cpu --config.compile=False --config.eval_iters=20 --config.log_interval=1 '
                           '--config.block_size=64 --config.batch_size=12 --config.n_layer=4 --config.n_head=4 '
                           '--config.n_embd=128 --config.max_iters=6 --config.lr_decay_iters=2000 '
                           f'--config.dropout=0.0 {" ".join(TINY_OVERRIDES)} --config.dtype=float32 '
                           '--config.out_dir=TEMP --config.dtype=float32')
  for turn in (1, 2):
    assert re.fullmatch(rf'round {turn} of 2: nanoGPT \d+\.\d\d, float32 \d+\.\d\d ms/iter', lines[at + 2 + turn])
  medians = {}
  for line, name in zip(lines[at + 5:at + 7], ('nanoGPT', 'float32')):
    m = re.fullmatch(rf"{name}: median (\d+\.\d\d) ms/iter \(the median of 2 runs' medians, each over iterations "
                     r'5 to 6, 2 timed\)', line)
    assert m, line
    medians[name] = m[1]
  ratio = re.fullmatch(r"nanoGPT / float32: (\d+\.\d\d)x \(nanoGPT's time over jaxgpt's: above 1, jaxgpt is the "
                       r'faster\)', lines[at + 7])
  assert ratio, lines[at + 7]
  assert is_printed_ratio(ratio[1], medians['nanoGPT'], medians['float32']), lines
  cores = len(os.sched_getaffinity(0))
  assert re.fullmatch(rf'.+, {cores} cores; jax .+, PyTorch .+ \(eager\), Python 3\.\d+\.\d+', lines[at + 8])
  assert len(lines) == at + 9
  assert not list(workdir.glob('out*'))  # each run's out_dir was a temporary folder


@pytest.mark.slow
def test_bench_nanogpt_cores_runs_the_same_once_per_core_count(tmp_path, shakespeare, nanogpt_dir):
  workdir = make_workdir(tmp_path, shakespeare)
  proc = bench('--cores=1', '--nanogpt', '--iters=5', '--rounds=1', *TINY_OVERRIDES, '--config.dtype=float32',
               f'--nanogpt_dir={nanogpt_dir}', cwd=workdir)
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.splitlines()
  m = re.fullmatch(r'1 core\(s\): nanoGPT (\d+\.\d\d) ms/iter, float32 (\d+\.\d\d) ms/iter', lines[0])
  assert m, lines
  assert lines[-6] == ('| cores | nanoGPT ms/iter | float32 ms/iter | nanoGPT / float32 | nanoGPT on 1 / on these '
                       '| float32 on 1 / on these |')
  row = re.fullmatch(r'\| 1 \| (\d+\.\d\d) \| (\d+\.\d\d) \| (\d+\.\d\d)x \| 1\.00x \| 1\.00x \|', lines[-4])
  assert row, lines
  assert row.group(1, 2) == m.groups()
  assert is_printed_ratio(row[3], m[1], m[2]), lines
  assert lines[-2:] == ["nanoGPT / <dtype>: nanoGPT's time over jaxgpt's (above 1, jaxgpt is the faster)",
                        '<name> on 1 / on these: its time on 1 core(s) over its time on these (above 1, faster on these)']


def test_bench_without_a_nanogpt_checkout(tmp_path, monkeypatch, capsys):
  monkeypatch.delenv('JAXGPT_NANOGPT_DIR', raising=False)  # nanoGPT is looked for at --nanogpt_dir alone
  monkeypatch.chdir(tmp_path)  # nothing runs: no data set is prepared there
  # the path it was given, before any run: --memory's jaxgpt run would take minutes
  for mode in ('--nanogpt', '--memory', '--speedrun'):
    assert bench_module.main(['bench', mode, f'--nanogpt_dir={tmp_path}']) == 1, mode
    assert capsys.readouterr().err == (f"error: nanoGPT's train.py not found at {tmp_path / 'train.py'}: clone "
                                       f'https://github.com/karpathy/nanoGPT into {tmp_path}, or name a nanoGPT '
                                       'checkout with --nanogpt_dir=PATH or JAXGPT_NANOGPT_DIR=PATH\n'), mode
  assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_bench_nanogpt_without_torch(tmp_path):
  (tmp_path / 'torch.py').write_text('raise ImportError("no torch here")\n')  # shadows the installed torch
  proc = subprocess.run([sys.executable, '-m', 'jaxgpt.bench', '--nanogpt'], cwd=REPO_ROOT, capture_output=True,
                        text=True, timeout=300, env={**os.environ, 'PYTHONPATH': str(tmp_path)})
  assert proc.returncode == 1
  assert proc.stderr == 'error: --nanogpt needs torch: pip install -e ".[torch]"\n'
  proc = subprocess.run([sys.executable, '-m', 'jaxgpt.bench', '--memory'], cwd=REPO_ROOT, capture_output=True,
                        text=True, timeout=300, env={**os.environ, 'PYTHONPATH': str(tmp_path)})
  assert proc.returncode == 1
  assert proc.stderr == 'error: --memory needs torch: pip install -e ".[torch]"\n'


@pytest.mark.slow
@linux_only('the CPU affinity (os.sched_getaffinity), whose cores bench reports')
def test_bench_memory_runs_jaxgpts_and_nanogpts_own_train_py(tmp_path, shakespeare, nanogpt_dir, monkeypatch,
                                                            capsys):
  workdir = make_workdir(tmp_path / 'jaxgpt', shakespeare)
  named = marked_copy(nanogpt_dir, tmp_path / 'nanoGPT')
  before = snapshot(named)
  recipe = str(REPO_ROOT / 'configs' / 'shakespeare_char.py')
  marker = tmp_path / 'ran'
  proc = bench_here(monkeypatch, capsys, workdir, '--memory', '--iters=3', recipe, *TINY_OVERRIDES,
                    f'--nanogpt_dir={named}', BENCH_TEST_MARKER=str(marker))
  assert proc.returncode == 0, proc.stderr
  assert len(marker.read_text().splitlines()) == 1 and snapshot(named) == before
  lines = proc.stdout.splitlines()
  at = next(i for i, line in enumerate(lines) if line.startswith('shakespeare_char.py, jaxgpt: '))
  assert len(lines) == at + 9, lines
  peaks = {}
  for line, name in zip(lines[at:at + 2], ('jaxgpt', 'nanoGPT')):  # in the order they ran, each as it ended
    m = re.fullmatch(rf'shakespeare_char\.py, {name}: peak RSS ([\d,]+) MB; RSS ([\d,]+) MB at iter 2, '
                     r'([\d,]+) MB at iter 3; \d+ s', line)
    assert m, line
    peak, at_2, at_3 = (int(g.replace(',', '')) for g in m.groups())
    # the kernel updates the high-water mark lazily: a VmRSS read can pass it by a few MB
    assert 100 < peak < 4000 and 0 < at_2 <= peak + 16 and 0 < at_3 <= peak + 16, line  # python and jax or torch: >100 MB
    peaks[name] = peak
  assert lines[at + 3] == ('| recipe | jaxgpt peak RSS | nanoGPT peak RSS | nanoGPT / jaxgpt | jaxgpt RSS at iter 2, 3 '
                           '| nanoGPT RSS at iter 2, 3 |')
  row = re.fullmatch(r'\| shakespeare_char\.py \| ([\d,]+) MB \| ([\d,]+) MB \| (\d+\.\d\d)x \| [\d,]+ MB, [\d,]+ MB '
                     r'\| [\d,]+ MB, [\d,]+ MB \|', lines[at + 5])
  assert row, lines[at + 5]
  assert [int(row[1].replace(',', '')), int(row[2].replace(',', ''))] == [peaks['jaxgpt'], peaks['nanoGPT']]
  assert float(row[3]) == pytest.approx(peaks['nanoGPT'] / peaks['jaxgpt'], abs=0.01)
  assert lines[at + 7] == "nanoGPT / jaxgpt: nanoGPT's peak RSS over jaxgpt's (above 1, jaxgpt needs less)"
  assert re.fullmatch(rf'.+, {len(os.sched_getaffinity(0))} cores; 3 iterations, eval_iters=1; jax .+, '
                      r'PyTorch .+ \(eager\), Python .+', lines[at + 8]), lines[at + 8]
  # a run that fails shows the end of its stderr
  proc = bench_here(monkeypatch, capsys, workdir, '--memory', '--iters=3', recipe, *TINY_OVERRIDES,
                    '--config.block_size=200000', f'--nanogpt_dir={named}')
  assert proc.returncode == 1
  assert proc.stderr.startswith('error: shakespeare_char.py, jaxgpt failed (exit status 1), its stderr ending:\n')
  assert proc.stderr.endswith('fewer than block_size + 1 = 200001: lower --config.block_size or use more data\n')


@pytest.mark.slow
def test_bench_processes_times_one_process_against_launched_ones(tmp_path, shakespeare, monkeypatch, capsys):
  workdir = make_workdir(tmp_path, shakespeare)
  proc = bench_here(monkeypatch, capsys, workdir, '--processes=2', '--iters=6', '--rounds=1', '--config.n_layer=1')
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.splitlines()
  assert re.fullmatch(r'1 process: median \d+\.\d\d ms/iter over 6 iterations', lines[0]), lines
  assert re.fullmatch(r'2 processes: median \d+\.\d\d ms/iter over 6 iterations', lines[1]), lines
  assert re.fullmatch(r'.+, \d+ CPUs usable; 12 rows x 1 micro-batch\(es\) a step in all', lines[3]), lines
  assert lines[-6:-4] == ['| processes | ms/iter (median of 1 runs) | 1 / these |', '| ---: | ---: | ---: |']
  one = re.fullmatch(r'\| 1 \| (\d+\.\d\d) \| 1\.00x \|', lines[-4])
  many = re.fullmatch(r'\| 2 \| (\d+\.\d\d) \| (\d+\.\d\d)x \|', lines[-3])
  assert one and many, lines
  assert is_printed_ratio(many[2], one[1], many[1]), lines
  assert lines[-1] == "1 / these: 1 process's time over these processes' (above 1, these are the faster)"
  assert not list(workdir.glob('out*'))  # each run's out_dir was a temporary folder
