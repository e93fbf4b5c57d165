"""The loss over every token of a split: the same number at every call.

train.py's estimate, like nanoGPT's, averages eval_iters random batches, and
moves by about 0.01 from one draw to the next. Here the split is cut into
windows of `context` tokens that do not overlap, each token predicted from
the ones before it in its window, and the loss is the mean over every token
of the split but the first (nothing predicts it). The tokens past the last
whole window are predicted by one more window, the split's last `context`
tokens, of which only those not yet counted count.

Run as a command, it evaluates the best (or latest) checkpoint of a jaxgpt
out_dir, or nanoGPT's ckpt.pt (with the torch extra), always in float32
(whatever dtype it trained in: the number is the model's), on
data/<dataset>/<split>.bin in the current folder, the data set the model
was trained on unless --dataset names another (prepared first where jaxgpt
can, as train.py does):

  python -m jaxgpt.evaluate out-shakespeare-char [--checkpoint=latest] [--context=64] [--split=train]
  python -m jaxgpt.evaluate ../nanoGPT/out-shakespeare-char/ckpt.pt

train.py evaluates so at its evaluation points with --config.full_val_context.
"""

import argparse
import dataclasses
import functools
import math
import pathlib
import sys
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxgpt import data, entry, prepare, runtime
from jaxgpt.checkpoint import CHOICES, Checkpoints
from jaxgpt.config import CHOICES as CONFIG_CHOICES, check_dataset_name
from jaxgpt.errors import JaxGPTError
from jaxgpt.model import GPTConfig
from jaxgpt.step import Params, abstract_params

# the windows' tokens a program call takes: its activations stay in the caches (the speedrun's model took 20% longer
# over the val split in calls of 8192 tokens)
TOKENS_PER_CALL = 2048
LOGITS_PER_CALL = 1 << 24  # float32 logits a call may hold (64 MB): fewer windows for GPT-2's 50304 tokens


def windows(num_tokens: int, context: int) -> tuple[np.ndarray, np.ndarray]:
  """(starts, counted): where each window begins, and from which of its
  positions on its targets count, so that the windows' targets are tokens
  1 .. num_tokens - 1, each once. A window at s reads tokens s .. s + context
  - 1 and predicts tokens s + 1 .. s + context."""
  if num_tokens < context + 1:
    raise ValueError(f'{num_tokens} tokens hold no window of {context} tokens and its targets')
  whole = (num_tokens - 1) // context
  starts = list(range(0, whole * context, context))
  counted = [0] * whole
  left = num_tokens - 1 - whole * context  # targets past the last whole window
  if left:
    starts.append(num_tokens - 1 - context)
    counted.append(context - left)
  return np.array(starts), np.array(counted)


def windows_per_call(num_tokens: int, context: int, vocab_size: int) -> int:
  """The rows of every program call over a split of num_tokens: one shape,
  so one compiled program; no more than the split's windows."""
  most = max(1, min(TOKENS_PER_CALL, LOGITS_PER_CALL // vocab_size) // context)
  return min(most, math.ceil((num_tokens - 1) / context))  # windows()'s count


def make_token_losses(graphdef: nnx.GraphDef, compiler_options: dict | None = None
                      ) -> Callable[[Params, jax.Array, jax.Array, jax.Array], jax.Array]:
  """Returns sum_losses(params, x, y, weight): the sum of the model's losses
  on targets y (B, T) after inputs x (B, T), each weighted by weight (B, T)
  (0 or 1), in one jitted program."""

  @functools.partial(jax.jit, compiler_options=compiler_options)
  def sum_losses(params, x, y, weight):
    logits, _ = nnx.merge(graphdef, params)(x)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y)
    return jnp.sum(losses * weight, axis=1)  # a row's sum: the rows are added up in float64 on the host
  return sum_losses


def call_shapes(params: Params, num_tokens: int, context: int) -> tuple[jax.ShapeDtypeStruct, ...]:
  """(x, y, weight) of every call of sum_losses on a split of num_tokens, in windows of `context`: to compile it
  ahead."""
  shape = (windows_per_call(num_tokens, context, vocab_size(params)), context)
  return jax.ShapeDtypeStruct(shape, jnp.int32), jax.ShapeDtypeStruct(shape, jnp.int32), jax.ShapeDtypeStruct(
      shape, jnp.float32)


def vocab_size(params: Params) -> int:
  return params['wte']['embedding'].shape[0]


def split_loss(params: Params, graphdef: nnx.GraphDef, tokens: np.ndarray, context: int,
               compiler_options: dict | None = None, sum_losses=None,
               stop: Callable[[], bool] | None = None, helper: Executor | None = None) -> float | None:
  """The mean loss over every token of `tokens` (a split) but the first,
  from windows of `context` tokens (see the module's docstring). sum_losses:
  make_token_losses' program, where one is kept across calls. stop: asked
  before each program call (each pair, with a helper); True abandons the
  evaluation: None. helper: a thread that makes every other program call
  while this one makes the next: what XLA:CPU runs on a call's own thread
  (all but its larger dots, which its pool shares out) then overlaps with
  the other call. The calls' sums are added in the calls' order whichever
  thread made them: the same number with a helper or without."""
  sum_losses = sum_losses or make_token_losses(graphdef, compiler_options)
  starts, counted = windows(len(tokens), context)
  rows = windows_per_call(len(tokens), context, vocab_size(params))
  positions = np.arange(context)

  def call_sum(first: int) -> float:
    """The sum of the losses of the call whose windows begin at starts[first], in float64."""
    batch_starts, batch_counted = starts[first:first + rows], counted[first:first + rows]
    weight = (positions >= batch_counted[:, None]).astype(np.float32)
    pad = rows - len(batch_starts)  # the last call's rows filled up with weight 0: one program for all calls
    index = np.pad(batch_starts, (0, pad))[:, None] + positions
    weight = np.pad(weight, ((0, pad), (0, 0)))
    x = tokens[index].astype(np.int32)
    y = tokens[index + 1].astype(np.int32)
    return float(np.sum(np.asarray(sum_losses(params, x, y, weight), dtype=np.float64)))

  firsts = list(range(0, len(starts), rows))
  at_once = 2 if helper else 1
  total = 0.0
  for pair in range(0, len(firsts), at_once):
    if stop and stop():
      return None
    helped = helper.submit(call_sum, firsts[pair + 1]) if helper and pair + 1 < len(firsts) else None
    total += call_sum(firsts[pair])
    if helped:
      total += helped.result()
  return total / (len(tokens) - 1)


def float32_model(config: GPTConfig) -> GPTConfig:
  """The model as evaluated: in float32, whatever the run computes in (the number is the model's, not the
  fast path's), without dropout or rematerialisation."""
  return dataclasses.replace(config, dtype='float32', dropout=0.0, remat=False)


def check_context(context: int, block_size: int, flag: str) -> None:
  """A context the model takes: 1 to its block_size. flag: how the user gave it."""
  if not 1 <= context <= block_size:
    raise JaxGPTError(f'{flag}={context} is not a context the model takes (1 to its block_size, {block_size}): '
                      f'pass {flag}={block_size} or less')


def split_tokens(path: pathlib.Path, context: int, flag: str) -> np.ndarray:
  """The split at path, memory-mapped, holding at least one window of
  `context` tokens and its targets. flag: the context's, to lower it."""
  tokens = data.open_tokens(path)
  if len(tokens) < context + 1:
    raise data.DataError(f'{path} holds {len(tokens):,} tokens, too few for one window of {context} tokens and '
                         f'its targets ({context + 1}): lower {flag}, or use a longer split')
  return tokens


class SplitEvaluator:
  """split_loss of one split at one context, in float32, its program built
  once and compiled ahead of the first call (`compile`): train.py's
  full_val_context and the command's. helper: split_loss's, a thread of the
  caller's that makes every other call (on one device; None: one at a time)."""

  def __init__(self, model_config: GPTConfig, tokens: np.ndarray, context: int, helper: Executor | None = None):
    self.config = float32_model(model_config)
    self.tokens, self.context, self.helper = tokens, context, helper
    self.graphdef, _ = abstract_params(self.config)
    self.sum_losses = make_token_losses(self.graphdef, runtime.compiler_options(self.config.dtype,
                                                                                self.config.n_embd))

  def compile(self, params: Params) -> jax.stages.Compiled:
    """Compiles the program for params (arrays, or their shapes and shardings); later calls find it compiled."""
    return self.sum_losses.lower(params, *call_shapes(params, len(self.tokens), self.context)).compile()

  def __call__(self, params: Params, stop: Callable[[], bool] | None = None) -> float | None:
    return split_loss(params, self.graphdef, self.tokens, self.context, sum_losses=self.sum_losses, stop=stop,
                      helper=self.helper)


# -- the command ----------------------------------------------------------------------


@dataclasses.dataclass
class Model:
  """A trained model read for evaluation: its config (float32), params, the
  data set it was trained on, its vocabulary (None: GPT-2's tokens, or not
  known, as in a ckpt.pt) and what it is (`step 2000 of out-shakespeare-char`)."""
  config: GPTConfig
  params: Params
  dataset: str | None
  vocab: list[str] | None
  what: str


def read_checkpoint(out_dir: str, which: str) -> Model:
  """The best or latest checkpoint of a jaxgpt out_dir."""
  with Checkpoints(out_dir, read_only=True) as checkpoints:

    def read(step: int) -> Model:
      meta = checkpoints.meta(step)
      config = float32_model(GPTConfig(**meta['model_args']))
      return Model(config, checkpoints.params(step, abstract_params(config)[1]), meta['config'].get('dataset'),
                   meta['vocab'], f'step {step} of {out_dir}')
    return checkpoints.read(which, read)


def read_ckpt_pt(path: str) -> Model:
  """nanoGPT's checkpoint at path (its train.py's ckpt.pt)."""
  from jaxgpt import ckpt_pt  # imported for a ckpt.pt alone: it may need torch
  ckpt_path = pathlib.Path(path)
  ckpt = ckpt_pt.read_nanogpt_ckpt(ckpt_path)
  config = float32_model(ckpt_pt.nanogpt_model_config(ckpt, ckpt_path))
  _, params = ckpt_pt.ckpt_weights(ckpt, ckpt_path, config)
  settings = ckpt.get('config') if isinstance(ckpt.get('config'), dict) else {}
  try:
    iter_num = int(ckpt.get('iter_num', 0))
  except (TypeError, ValueError, RuntimeError):
    raise JaxGPTError(f"{path}'s iter_num is not a number: not a nanoGPT ckpt.pt") from None
  return Model(config, params, settings.get('dataset'), None, f'step {iter_num} of {path}')


def is_ckpt_pt(path: str) -> bool:
  """Whether path names nanoGPT's ckpt.pt (a file), not a jaxgpt out_dir (a folder)."""
  return path.endswith('.pt') or pathlib.Path(path).is_file()


def check_vocabulary(model: Model, dataset: str, folder: pathlib.Path, split_path: pathlib.Path) -> None:
  """The split's tokens are the model's: ids of its vocabulary (the data
  set's own, checked too), not of another data set's."""
  vocab = data.load_vocab(folder)
  data.check_ids(split_path, data.vocab_size(vocab))
  size = model.config.vocab_size
  # a jaxgpt checkpoint keeps its vocabulary; a ckpt.pt only its size (GPT-2's, or its characters')
  another = (model.vocab is not None and model.vocab != vocab) or \
      (vocab is None and size not in data.GPT2_VOCAB_SIZES) or (vocab is not None and len(vocab) != size)
  if another:
    words = f'{len(vocab)} characters' if vocab is not None else "GPT-2's tokens"
    raise JaxGPTError(f'data/{dataset} holds {words}, not the vocabulary {model.what} was trained on '
                      f'(vocab_size {size}): pass --dataset=<the data set it was trained on>')


@dataclasses.dataclass
class Evaluation:
  """What `evaluate` found, and its line."""
  loss: float
  split: str
  path: pathlib.Path  # the split's tokens
  targets: int  # the tokens predicted: all of the split's but the first
  context: int
  what: str  # the model: `step 2000 of out-shakespeare-char`
  seconds: float  # the evaluation's, its compile left out

  def line(self) -> str:
    return (f'{self.split} loss {self.loss:.4f} over {self.targets:,} tokens of {self.path} (windows of '
            f'{self.context}), {self.what}, in {self.seconds:.1f} s')


def evaluate(source: str, checkpoint: str | None = None, context: int | None = None, split: str = 'val',
             dataset: str | None = None) -> Evaluation:
  """The loss of the model at source (a jaxgpt out_dir, or nanoGPT's ckpt.pt)
  over the whole split, in windows of `context` tokens (None: its block_size)."""
  if is_ckpt_pt(source):
    if checkpoint is not None:
      raise JaxGPTError(f'{source} is one checkpoint, nanoGPT\'s ckpt.pt: drop --checkpoint (it chooses among the '
                        "checkpoints of a jaxgpt out_dir)")
    model = read_ckpt_pt(source)
  else:
    model = read_checkpoint(source, checkpoint or 'best')
  context = model.config.block_size if context is None else context
  check_context(context, model.config.block_size, '--context')
  dataset = dataset or model.dataset
  if not dataset:
    raise JaxGPTError(f'{model.what} names no data set: pass --dataset=NAME (data/NAME/{split}.bin)')
  check_dataset_name(dataset, '--dataset')  # the flag's, or the one a ckpt.pt names: a folder of data/
  folder = prepare.ensure_prepared(dataset)
  path = folder / f'{split}.bin'
  tokens = split_tokens(path, context, '--context')
  check_vocabulary(model, dataset, folder, path)
  with ThreadPoolExecutor(1, thread_name_prefix='eval') as helper:  # the command runs on one device
    evaluator = SplitEvaluator(model.config, tokens, context, helper)
    evaluator.compile(model.params)  # ahead: the time is the evaluation's
    t0 = time.perf_counter()
    loss = evaluator(model.params)
  return Evaluation(loss, split, path, len(tokens) - 1, context, model.what, time.perf_counter() - t0)


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m jaxgpt.evaluate',
      description='The loss of a trained model over every token of a split, in windows of --context tokens that do '
                  'not overlap: the same number at every call. In float32, whatever dtype the model trained in.',
      epilog='The split is data/<dataset>/<split>.bin in the current folder, prepared first where jaxgpt can '
             '(shakespeare_char), as train.py does.')
  parser.add_argument('source', metavar='OUT_DIR|CKPT.pt',
                      help="a training run's out_dir (e.g. out-shakespeare-char), or nanoGPT's ckpt.pt (needs torch: "
                           "pip install -e '.[torch]')")
  parser.add_argument('--checkpoint', choices=CHOICES, help="which of the out_dir's checkpoints (default: best)")
  parser.add_argument('--context', type=int, metavar='N',
                      help="the windows' length in tokens (default: the model's block_size)")
  parser.add_argument('--split', choices=('val', 'train'), default='val', help='default: val')
  parser.add_argument('--dataset', metavar='NAME',
                      help='the data set in data/ (default: the one the model was trained on)')
  parser.add_argument('--device', choices=CONFIG_CHOICES['device'], default='cpu', help='default: cpu')
  args = parser.parse_args(argv[1:])

  def work() -> None:
    runtime.pin_device(args.device)
    print(evaluate(args.source, args.checkpoint, args.context, args.split, args.dataset).line())

  return entry.run(work, 'interrupted: nothing was evaluated')


if __name__ == '__main__':
  sys.exit(main(sys.argv))
