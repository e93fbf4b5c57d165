"""The process's CPU runtime: its set-up, XLA's options for the model's
matmuls (`compiler_options`), and the device jax runs on.

`setup` is process-wide (it checks XLA_FLAGS, and sets glibc's malloc,
jax's dispatch and compilation cache, a warning filter), so importing jaxgpt
does not run it: the command-line entry points do (jaxgpt/entry.py), and a
notebook or script that trains through the library calls
`jaxgpt.runtime.setup()` itself, before its first jax array, to run at the
speed docs/performance.md reports.
`python -m jaxgpt.bench` catches a regression of these settings.
"""

import contextlib
import ctypes
import functools
import ctypes.util
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Iterator

import jax
import jax.numpy as jnp

from jaxgpt.errors import JaxGPTError


M_MMAP_MAX = -4  # mallopt's parameter, from glibc's malloc.h
_freed_memory_kept = False  # whether setup has glibc keep freed memory (`_keep_freed_memory`)


@functools.cache
def _libc() -> ctypes.CDLL | None:
  """glibc, whose malloc takes mallopt settings; None elsewhere (macOS, musl).
  Looked up once: find_library runs a search, and the heap is trimmed
  around every evaluation."""
  libc_name = ctypes.util.find_library('c')
  libc = ctypes.CDLL(libc_name) if libc_name else None
  return libc if hasattr(libc, 'mallopt') else None


def usable_cores() -> int:
  """The CPUs this process may run on: its affinity, where the OS has one."""
  return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1


def _keep_freed_memory() -> None:
  """Stop glibc returning XLA's per-step temp buffers to the OS.

  XLA allocates a program's temp buffer (tens of MB) per call; above the
  mmap threshold glibc maps and unmaps it every step, and the page faults
  cost a fifth of the seed model's step (docs/performance.md). No mmap and
  a high trim threshold keep it reused. Arenas as glibc counts them by
  default, 8 a core, so that each thread running programs has one of its
  own: programs that run at once on threads sharing an arena (the sharded
  step's) interleave their buffers, and the arena grew without end, or
  churned its pages in the kernel with fewer arenas (docs/performance.md,
  "Memory: one malloc arena no longer fits"). Same as
  MALLOC_ARENA_MAX=<8 x cores> MALLOC_MMAP_MAX_=0
  MALLOC_TRIM_THRESHOLD_=1073741824, without needing a wrapper script.
  """
  global _freed_memory_kept
  libc = _libc()
  if libc is None:
    return
  m_trim_threshold, m_arena_max = -1, -8  # from glibc's malloc.h
  libc.mallopt(m_arena_max, 8 * usable_cores())
  libc.mallopt(M_MMAP_MAX, 0)
  libc.mallopt(m_trim_threshold, 1 << 30)
  _freed_memory_kept = True


# A step whose working memory is above this gets it from fresh pages each time
# (`large_buffers_mapped`)
LARGE_BUFFER_BYTES = 1 << 30


@contextlib.contextmanager
def large_buffers_mapped() -> Iterator[None]:
  """Within: glibc maps large buffers afresh and unmaps them when freed,
  undoing `_keep_freed_memory`'s no-mmap for a step with gigabytes of temp
  buffers; on leaving, the no-mmap is back. A process that `setup` did not
  set up is left as it was.

  Kept in the heap, such buffers fragment it: glibc places small allocations
  in a freed one, the next step's is taken from fresh heap, and the process
  grows to several times its need (nanoGPT's GPU recipe on a CPU,
  docs/performance.md). For a step that long, faulting the pages in costs
  little of it.
  """
  if not _freed_memory_kept:
    yield
    return
  libc = _libc()
  libc.mallopt(M_MMAP_MAX, 65536)  # glibc's default
  try:
    yield
  finally:
    libc.mallopt(M_MMAP_MAX, 0)


def release_free_memory() -> None:
  """Hand the free pages of glibc's heap back to the OS (malloc_trim).

  `_keep_freed_memory` keeps freed memory in the heap, to be reused without
  page faults. Compiling leaves tens of MB of it behind, freed by the
  compiler and never reused by a run this small; and as small allocations
  settle in the space a step's temp buffer freed, the next step's buffer
  takes fresh heap, so that a seed run's heap grows every few hundred
  steps, all of it resident (docs/performance.md). Released after compiling, and before
  and after each evaluation (the steps' buffers, held in their threads'
  arenas, would otherwise stay beside the evaluation's), these pages no
  longer count towards the run's resident memory; the next step faults its
  buffer's pages in again, once (docs/performance.md).
  """
  libc = _libc()
  if libc is not None:
    libc.malloc_trim(0)


def _cache_compiled_programs() -> None:
  """Keep XLA's compiled programs on disk, so a rerun does not compile again.

  Compiling the train and eval steps and the initialisation's ops takes
  seconds of a seed-command run, and the compiler's working memory tens of
  MB of its peak RSS (docs/performance.md); a rerun of the same config loads
  them instead. JAX's own persistent cache, in ~/.cache/jaxgpt/xla (or
  $XDG_CACHE_HOME/jaxgpt/xla); every program is kept, not only those that
  took a second to compile. JAX_COMPILATION_CACHE_DIR and the other
  JAX_... variables of these settings win: jax read them when it was
  imported, so a setting one names is left alone ('' turns the cache off).
  A cache folder that cannot be written (a read-only home) leaves the cache
  off, with one line saying so, rather than jax's warning at each program.
  """
  users_dir = os.environ.get('JAX_COMPILATION_CACHE_DIR')
  if users_dir and not _writable_folder(users_dir, 'JAX_COMPILATION_CACHE_DIR'):
    jax.config.update('jax_compilation_cache_dir', None)
    return
  cache_home = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  cache_dir = os.path.join(cache_home, 'jaxgpt', 'xla')
  if users_dir is None and not _writable_folder(cache_dir, 'XDG_CACHE_HOME'):
    return
  for setting, value in (('jax_compilation_cache_dir', cache_dir),
                         ('jax_persistent_cache_min_compile_time_secs', 0),
                         ('jax_persistent_cache_min_entry_size_bytes', 0)):
    if setting.upper() not in os.environ:
      jax.config.update(setting, value)


def _writable_folder(path: str, variable: str) -> bool:
  """Whether path is, or could be made, a folder this process writes in; if
  not, one line on stderr says that the cache is off (every run compiles),
  and which variable to set to turn it on."""
  try:
    os.makedirs(path, exist_ok=True)
    with tempfile.TemporaryFile(dir=path):  # written, not asked (os.access): a read-only mount says why, as jax would
      return True
  except OSError as e:
    reason = e.strerror
  print(f'compilation cache off: cannot write {path} ({reason}); set {variable} to a writable folder',
        file=sys.stderr)
  return False


# XLA:CPU cannot serialise a program with oneDNN matmuls (`compiler_options`),
# so the compilation cache warns that it could not keep it, once per program
# and run; the program is compiled afresh each run instead.
UNCACHEABLE_ONEDNN_PROGRAM = r'Error writing persistent compilation cache entry .*onednn-fusion'


# oneDNN's matmuls for a program's dots; INDIVIDUAL_DOT hands oneDNN the bare
# dots: with DOT it also takes attention's mask and scale into them, and XLA
# aborted compiling a 2-layer, 32-wide model ("partition compile failed")
ONEDNN_OPTIONS = {'xla_cpu_use_onednn': True,
                  'xla_cpu_experimental_onednn_fusion_type': 'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT'}


@functools.cache
def has_onednn() -> bool:
  """Whether this jaxlib's XLA:CPU turns dots into oneDNN matmuls, asked
  once by compiling one. The x86-64 Linux wheels do; a jaxlib built without
  oneDNN (other platforms') either refuses the options or compiles the dots
  as XLA's own, and then the options are left out."""
  if jax.default_backend() != 'cpu':
    return False
  operand = jax.ShapeDtypeStruct((64, 64), jnp.float32)
  try:
    program = jax.jit(jnp.matmul, compiler_options=ONEDNN_OPTIONS).lower(operand, operand).compile()
  except (RuntimeError, ValueError):  # an option this XLA does not know, or oneDNN failing to compile
    return False
  return '__onednn_fusion' in program.as_text()


def prefers_onednn(n_embd: int) -> bool:
  """Whether a model this wide runs its float32 matmuls faster as oneDNN's
  than as YNNPACK's (XLA:CPU's default), by what was measured: the fused
  step by turns (docs/performance.md). Under jax 0.12, always. Under jax
  0.10.2 (Python 3.11's newest), from 384 wide; at 256 they are level and at
  128 YNNPACK is the faster, and the compilation cache keeps YNNPACK's
  programs, which it cannot keep with oneDNN's."""
  return jax.__version_info__ >= (0, 12) or n_embd > 256


def _wants_onednn(dtype: str, n_embd: int) -> bool:
  return dtype == 'float32' and prefers_onednn(n_embd)


def compiler_options(dtype: str, n_embd: int) -> dict[str, str | bool]:
  """XLA options for the train and eval programs of a model n_embd wide
  computing in dtype.

  oneDNN's matmuls for float32 where they are the faster (`prefers_onednn`);
  bfloat16 ones run slower under oneDNN, and so does sampling's small decode
  step: those keep XLA's default (docs/performance.md). Where this jaxlib has
  no oneDNN (`has_onednn`), float32 keeps the default too: XLA's own dots, or
  YNNPACK's where it has that.
  """
  return ONEDNN_OPTIONS if _wants_onednn(dtype, n_embd) and has_onednn() else {}


def lacks_onednn(dtype: str, n_embd: int) -> bool:
  """Whether a model n_embd wide computing in dtype would take oneDNN's
  matmuls, but this jaxlib has none (train.py says so)."""
  return _wants_onednn(dtype, n_embd) and not has_onednn()


def _run_programs_inline() -> None:
  """Run each XLA:CPU program on the thread that calls it, returning when it
  has finished (jax's `jax_cpu_enable_async_dispatch` off).

  Dispatched asynchronously, a program's outputs are ready a moment before
  XLA frees its temp buffer, and the next step, dispatched at once, now and
  then allocates its own while the last one's is still held: the heap grows
  by a temp buffer each time (tens of MB, docs/performance.md). Inline, the
  buffer is freed before the call returns. The steps take as long either
  way. JAX_CPU_ENABLE_ASYNC_DISPATCH, when set, wins.
  """
  if 'JAX_CPU_ENABLE_ASYNC_DISPATCH' not in os.environ:
    jax.config.update('jax_cpu_enable_async_dispatch', False)


# a line of XLA's log (glog's): severity and date, time, thread, source file, then the message
XLA_LOG_LINE = re.compile(r'^([EF])\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] (.*)$')


def _check_xla_flags() -> None:
  """Stops at an XLA_FLAGS that XLA refuses, in one line.

  XLA parses XLA_FLAGS when jax starts its first backend, and a flag it
  does not know, or a value it cannot read, aborts the process from C++
  (nothing Python can catch), its reason in a line among its list of flags.
  So a forked copy of this process starts the CPU backend first and exits:
  if it dies, its reason is read from it. Only where XLA_FLAGS is set, since
  the backend's start is then paid twice. Checking names against a list of
  XLA's flags instead would go stale with each jaxlib.
  """
  flags = os.environ.get('XLA_FLAGS')
  if not flags:
    return
  read_end, write_end = os.pipe()
  pid = os.fork()
  if pid == 0:  # the copy: its output goes to the pipe; whatever happens, it exits here
    try:
      os.dup2(write_end, 1)
      os.dup2(write_end, 2)
      jax.devices('cpu')
    finally:
      os._exit(0)
  os.close(write_end)
  with os.fdopen(read_end, errors='replace') as output:
    lines = output.read().splitlines()
  _, status = os.waitpid(pid, 0)
  if status == 0:
    return
  logged = [match for match in map(XLA_LOG_LINE.match, lines) if match]
  # an error line names the flag and value; the fatal line that follows only says that parsing failed
  reason = next((m[2] for m in logged if m[1] == 'E'), logged[0][2] if logged else 'the process died')
  raise JaxGPTError(f'XLA does not accept XLA_FLAGS={flags!r}: {reason.rstrip(".")}; fix or unset XLA_FLAGS')


def setup() -> None:
  """Sets the process up for training and sampling. Before jax starts its
  CPU backend (the first array or device query): jax reads its dispatch
  setting then, and XLA its flags."""
  _check_xla_flags()
  _keep_freed_memory()
  _run_programs_inline()
  _cache_compiled_programs()
  warnings.filterwarnings('ignore', message=UNCACHEABLE_ONEDNN_PROGRAM, category=UserWarning)


def size_thread_pool(step_threads: int, dtypes: list[str]) -> None:
  """XLA's thread pool at the cores each of the train step's threads has
  (PJRT_NPROC, read when jax starts: call it before), for float32 steps.
  One program on each core leaves a pool thread a core nothing to do but
  contend with them: the seed command's iterations spread less. bfloat16's
  matmuls need the pool (they take far longer without it), so a process
  that runs any bfloat16 step keeps it (docs/performance.md). A
  PJRT_NPROC already set (jaxgpt.launch sets it) wins."""
  if step_threads > 1 and set(dtypes) == {'float32'} and 'PJRT_NPROC' not in os.environ:
    os.environ['PJRT_NPROC'] = str(max(1, usable_cores() // step_threads))


def pin_device(device: str) -> None:
  """Pins jax to the CPU, or checks that it has a GPU. Before any array exists."""
  if device == 'cpu':
    jax.config.update('jax_platforms', 'cpu')
    return
  try:
    jax.devices('gpu')
  except RuntimeError:
    raise JaxGPTError(f'device={device} but jax sees no GPU: install jax with CUDA '
                      '(pip install "jax[cuda12]") or pass --config.device=cpu') from None
