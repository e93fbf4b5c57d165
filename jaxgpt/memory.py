"""The memory a training run needs, checked before it starts.

A run too big for the machine should end in seconds with one line, not hours
later by the kernel's hand. Two estimates, each held against what the
machine has (`available_bytes`):

- before anything is built, from the config alone (`batches_bytes`,
  `state_bytes`): the token batches drawn at once, the weights, their
  gradients and AdamW's two moments, and one layer's attention scores, which
  the forward pass forms whatever else is recomputed;
- once the train and eval programs are compiled, before they run
  (`run_estimate`): XLA's own account of each program's working memory
  (`memory_analysis()`), on top of the state and of this process as it stands.
"""

import dataclasses
import math
import pathlib

import jax
from flax import nnx

from jaxgpt.model import GPTConfig
from jaxgpt.errors import JaxGPTError
from jaxgpt.model import Block

GB = 1e9
BYTES_OF_STATE_PER_PARAM = 4 * 4  # float32 weight, gradient, and AdamW's first and second moments


class OutOfMemoryError(JaxGPTError):
  pass


def _read(path: str) -> str | None:
  try:
    return pathlib.Path(path).read_text()
  except OSError:
    return None


def _field(text: str, name: str) -> int:
  """The number after `name` in a /proc or cgroup listing ('MemAvailable:  123 kB')."""
  for line in text.splitlines():
    words = line.replace(':', ' ').split()
    if words and words[0] == name:
      return int(words[1])
  raise KeyError(name)


def available_bytes() -> tuple[int, str] | None:
  """What this process may still allocate, and where that figure comes from:
  the kernel's MemAvailable, or the cgroup's limit less its use (page cache
  not counted) where that leaves less. None where neither can be read."""
  found = []
  meminfo = _read('/proc/meminfo')
  if meminfo:
    found.append((_field(meminfo, 'MemAvailable') * 1024, 'MemAvailable'))
  limit, usage, stat = (_read(f'/sys/fs/cgroup/memory.{name}') for name in ('max', 'current', 'stat'))
  if limit and usage and stat and limit.strip() != 'max':  # cgroup v2 with a limit
    in_use = int(usage) - _field(stat, 'inactive_file')
    found.append((int(limit) - in_use, 'the cgroup memory limit'))
  return min(found) if found else None


def process_rss_bytes() -> int:
  status = _read('/proc/self/status')
  return _field(status, 'VmRSS') * 1024 if status else 0


def num_params(config: GPTConfig) -> int:
  """GPT(config)'s parameter count (wte, wpe, the blocks, ln_f), from one
  abstract block: instant, however many layers the config asks for."""
  block = nnx.eval_shape(lambda: Block(config, rngs=nnx.Rngs(0)))
  per_block = sum(p.size for p in jax.tree.leaves(nnx.state(block, nnx.Param)))
  ln_f = config.n_embd * (2 if config.bias else 1)
  return (config.vocab_size + config.block_size) * config.n_embd + config.n_layer * per_block + ln_f


def state_bytes(config: GPTConfig, rows: int) -> int:
  """What any train step of this model holds: the state of every parameter,
  and one layer's attention scores for `rows` sequences (batch_size x the
  devices of this process)."""
  scores = rows * config.n_head * config.block_size ** 2 * 4
  return num_params(config) * BYTES_OF_STATE_PER_PARAM + scores


def batches_bytes(batches: int, rows: int, block_size: int) -> int:
  """`batches` batches of `rows` windows drawn at once: block_size + 1
  uint16 ids each, made into int32 inputs and targets."""
  return batches * rows * ((block_size + 1) * 2 + block_size * 4 * 2)


@dataclasses.dataclass(frozen=True)
class RunEstimate:
  process: int  # this process now: the runtime, the compiled programs, the data
  state: int  # weights and AdamW state
  working: int  # the largest program's working memory and unaliased outputs (a step's gradients among them)

  @property
  def total(self) -> int:
    return self.process + self.state + self.working

  def __str__(self) -> str:
    return (f'~{self.total / GB:.2f} GB estimated (this process {self.process / GB:.2f} GB, weights and AdamW '
            f'state {self.state / GB:.2f} GB, a step\'s working memory {self.working / GB:.2f} GB)')


def run_estimate(programs: list[tuple[jax.stages.Compiled, int]], state) -> RunEstimate:
  """The run's peak from its compiled programs, each with how many copies
  of it run at once (threads), and its state (params and optimizer state:
  arrays or ShapeDtypeStructs)."""
  def working(program: jax.stages.Compiled, copies: int) -> int:  # per device
    m = program.memory_analysis()
    return (m.temp_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes) * copies

  def in_this_process(a) -> int:  # replicated or split over the devices
    shard = a.sharding.shard_shape(a.shape)
    return math.prod(shard) * a.dtype.itemsize * len(a.sharding.addressable_devices)
  return RunEstimate(process_rss_bytes(), sum(map(in_this_process, jax.tree.leaves(state))),
                     max(working(*program) for program in programs) * jax.local_device_count())


TRY_ANYWAY = '; or pass --config.check_memory=False to try anyway'  # train.py's way past its check


def check(needed: int, what: str, fix: str) -> None:
  """Raises OutOfMemoryError when `needed` bytes (`what` they are for: 'for
  this run') exceed what is available, with `fix`: what lowers the need."""
  available = available_bytes()
  if available is None or needed <= available[0]:
    return
  raise OutOfMemoryError(
      f'not enough memory {what}: ~{needed / GB:.2f} GB needed, {available[0] / GB:.2f} GB available '
      f'({available[1]}): {fix}')


def smaller_run(remat: bool) -> str:
  """The keys that make a run need less memory."""
  remat_hint = '' if remat else ', --config.remat=True (recompute activations rather than keep them)'
  return ('lower --config.batch_size (a larger --config.gradient_accumulation_steps keeps the tokens per '
          f'iteration), --config.block_size, or --config.n_layer / --config.n_embd{remat_hint}')


def out_of_memory(e: jax.errors.JaxRuntimeError, remat: bool) -> OutOfMemoryError | None:
  """XLA's failure to allocate (with check_memory=False, or beyond the
  estimate) as one line; None for any other runtime error."""
  message = str(e)
  if 'RESOURCE_EXHAUSTED' not in message:
    return None
  return OutOfMemoryError(f'out of memory ({message.splitlines()[0].strip()}): {smaller_run(remat)}; '
                          'the checkpoints in out_dir are as they were')
