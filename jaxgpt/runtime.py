"""CPU runtime set-up. Imported first by `jaxgpt/__init__.py`, before jax.

The settings were measured on the seed model (../shared/reference/
xla-cpu-performance.md, docs/performance.md) with the two jax versions that
pyproject.toml pins (0.10.2 on Python 3.11, 0.12.0.1 on 3.12 and newer);
`python -m jaxgpt.bench` catches a regression.
"""

import ctypes
import ctypes.util
import os
import warnings


def _disable_barrier_expander() -> None:
  """Keep `lax.optimization_barrier` alive on XLA:CPU.

  The model puts barriers at residual boundaries (`model.residual_barrier`) so
  that XLA does not recompute the whole residual stream inside every
  weight-gradient transpose (O(n_layer^2) work). XLA:CPU's pass
  `cse_barrier_expander` deletes barriers; this switches it off. XLA reads the
  flag when the backend starts, so it must be set before the first jax array.
  """
  flag = '--xla_disable_hlo_passes=cse_barrier_expander'
  flags = os.environ.get('XLA_FLAGS', '')
  if flag not in flags:
    os.environ['XLA_FLAGS'] = f'{flags} {flag}'.strip()


def _libc() -> ctypes.CDLL | None:
  """glibc, whose malloc takes mallopt settings; None elsewhere (macOS, musl)."""
  libc_name = ctypes.util.find_library('c')
  libc = ctypes.CDLL(libc_name) if libc_name else None
  return libc if hasattr(libc, 'mallopt') else None


def _keep_freed_memory() -> None:
  """Stop glibc returning XLA's per-step temp buffer to the OS.

  XLA allocates a ~50 MB temp buffer per step on a worker thread; above the
  mmap threshold glibc maps and unmaps it every step: 12.6k page faults and
  ~30 ms of system time a step, 62 instead of 48 ms/iter on the seed model.
  One arena, no mmap and a high trim threshold keep it reused. Same as MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0
  MALLOC_TRIM_THRESHOLD_=1073741824, but without needing a wrapper script.
  """
  libc = _libc()
  if libc is None:
    return
  m_trim_threshold, m_mmap_max, m_arena_max = -1, -4, -8  # from glibc's malloc.h
  libc.mallopt(m_arena_max, 1)
  libc.mallopt(m_mmap_max, 0)
  libc.mallopt(m_trim_threshold, 1 << 30)


# A step whose working memory is above this gets it from fresh pages each time
# (`map_large_buffers`)
LARGE_BUFFER_BYTES = 1 << 30


def map_large_buffers() -> None:
  """Let glibc map large buffers afresh and unmap them when freed, undoing
  `_keep_freed_memory`'s no-mmap for a step with gigabytes of temp buffers.

  Kept in the heap, such buffers fragment it: glibc places small allocations
  in a freed one, the next step's is taken from fresh heap, and the process
  grows. nanoGPT's GPU recipe on this CPU (2.4 GB of temp buffers a step)
  peaked at 8.2 GB that way, at 3.4 GB mapped afresh; faulting the pages in
  costs ~1 s of its ~12 s step, where for the seed model's 45 MB buffer it
  cost a quarter of the step.
  """
  libc = _libc()
  if libc is not None:
    m_mmap_max = -4  # from glibc's malloc.h
    libc.mallopt(m_mmap_max, 65536)  # glibc's default


def _cache_compiled_programs() -> None:
  """Keep XLA's compiled programs on disk, so a rerun does not compile again.

  Compiling the train and eval steps and the initialisation's ops takes ~9 s
  of a seed-command run here, and the compiler's working memory ~70 MB of its
  peak RSS; a rerun of the same config loads them instead (26 -> 17 s and
  572 -> 498 MB for 300 iterations). JAX's own persistent cache, in
  ~/.cache/jaxgpt/xla (or $XDG_CACHE_HOME/jaxgpt/xla); every program is
  kept, not only those that took a second to compile. Setting
  JAX_COMPILATION_CACHE_DIR yourself picks another place ('' turns it off).
  """
  cache_home = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(cache_home, 'jaxgpt', 'xla'))
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')


# XLA:CPU cannot serialise a program with oneDNN matmuls (`compiler_options`),
# so the compilation cache warns that it could not keep it, once per program
# and run; the program is compiled afresh each run instead.
UNCACHEABLE_ONEDNN_PROGRAM = r'Error writing persistent compilation cache entry .*onednn-fusion'


def compiler_options(dtype: str) -> dict[str, str | bool]:
  """XLA options for the train and eval programs of a model computing in dtype.

  Float32 matmuls run faster as oneDNN's than as YNNPACK's, XLA:CPU's default:
  the seed command's iterations take 41-48 instead of 51-57 ms with jax 0.10.2
  (docs/performance.md). Bfloat16 ones run slower under oneDNN (42 against 27
  ms/iter), and so does sampling's small decode step: those keep the default.
  INDIVIDUAL_DOT hands oneDNN the bare dots; with DOT it also takes attention's
  mask and scale into them, and XLA aborted compiling a 2-layer, 32-wide model
  ("partition compile failed").
  """
  if dtype != 'float32':
    return {}
  return {'xla_cpu_use_onednn': True,
          'xla_cpu_experimental_onednn_fusion_type': 'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT'}


def setup() -> None:
  _disable_barrier_expander()
  _keep_freed_memory()
  _cache_compiled_programs()
  warnings.filterwarnings('ignore', message=UNCACHEABLE_ONEDNN_PROGRAM, category=UserWarning)
