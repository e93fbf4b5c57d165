"""Replay a nanoGPT trace and hold jaxgpt against it, number by number.

  python -m jaxgpt.parity TRACE.npz [--compile=False] [--threads=K] [--data_parallel [--fsdp]]

A trace (format `nanogpt-trace/1`, described in tests/fixtures/README.md) holds
nanoGPT's initial weights, the batches of every step, and what nanoGPT
computed: logits of the first batch, loss, lr and gradient norm of every step,
and the final weights. This loads the weights through the nanoGPT name map,
builds the optimizer and train step with the code train.py uses, replays the
batches and prints the differences, then PASS or FAIL (exit 0 or 1; a file
that is not a trace, or flags that do not fit it: one error line, exit 1).
"""

import argparse
import json
import pathlib
import sys
import zipfile

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxgpt import entry, nanogpt, parallel, runtime
from jaxgpt.config import base_config
from jaxgpt.errors import JaxGPTError
from jaxgpt.optim import lr_schedule, make_optimizer
from jaxgpt.model import GPTConfig
from jaxgpt.step import init_model, ShardedTrainStep, TrainStep

# Tolerances (tests/fixtures/README.md): a faithful float32
# reimplementation lands within 2e-6 of nanoGPT's loss and 1e-6 of its logits
# (float32 summation order is all that differs), so 1e-5 leaves 5x headroom.
# Small differences show in logits0 and the final weights before the loss: the
# tanh GELU moves seed_model.npz's logits0 by 5e-5 but its loss by only 3e-6.
LOGITS_TOL = 1e-5
LOSS_TOL = 1e-5
LR_REL_TOL = 1e-6
GRAD_NORM_REL_TOL = 1e-4
WEIGHTS_MIN_TOL = 1e-5  # final weights: max(this, 10 x float32's own drift from float64)
# the figures a trace holds beside its init/ and final/ weights (tests/fixtures/README.md)
TRACE_FIGURES = {'meta', 'x', 'y', 'loss', 'loss_fp64', 'lr', 'grad_norm', 'grad_norm_fp64', 'logits0',
                 'final_fp64_max_abs_diff'}


def trace_config(meta: dict):
  """The run config a trace was recorded with."""
  c = base_config()
  settings = meta['model'] | meta['optim']
  c.update({k: v for k, v in settings.items() if k != 'vocab_size'})
  c.batch_size = meta['batch_size']
  return c


def _max_abs(a, b) -> float:
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def _max_rel(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-30)))


def replay(trace: dict, fused: bool = True, mesh: Mesh | None = None, fsdp: bool = False,
           threads: int = 1) -> dict[str, float]:
  """Replays the trace through jaxgpt; returns the worst difference of each
  figure. With a mesh: data parallel over its devices, each batch split
  across them (fsdp: params and optimizer state split too). threads > 1:
  each batch's rows split over that many threads (ShardedTrainStep)."""
  meta = json.loads(str(trace['meta']))
  c = trace_config(meta)
  init = {k.removeprefix('init/'): trace[k] for k in trace if k.startswith('init/')}
  config = GPTConfig.from_run_config(c, meta['model']['vocab_size'])
  model, graphdef, params = init_model(config, seed=0)
  params = nanogpt.from_nanogpt(init, params)

  full_logits = jax.jit(lambda p, x: nnx.merge(graphdef, p)(x)[0])
  logits0 = full_logits(params, trace['x'][0, 0])

  tx = make_optimizer(c)
  batches = trace['x'], trace['y']
  if mesh is not None:
    params = parallel.place_state(mesh, params, fsdp)
    batches = jax.device_put(batches, NamedSharding(mesh, PartitionSpec(None, None, parallel.DATA)))
    opt_state = parallel.init_optimizer_state(mesh, tx, params, fsdp)
  else:
    opt_state = jax.jit(tx.init)(params)
  options = runtime.compiler_options(config.dtype, config.n_embd)
  if threads > 1:
    step = ShardedTrainStep(graphdef, tx, mesh=parallel.make_mesh(), shards=threads, dropout=False, seed=c.seed,
                            compiler_options=options)
  else:
    step = TrainStep(graphdef, tx, dropout=False, seed=c.seed, fused=fused, compiler_options=options)
  losses, grad_norms = [], []
  for i in range(meta['steps']):
    params, opt_state, metrics = step(params, opt_state, batches[0][i], batches[1][i], i)
    losses.append(float(metrics.loss))
    grad_norms.append(float(metrics.grad_norm))
  schedule = lr_schedule(c)
  lrs = [float(schedule(i)) for i in range(meta['steps'])]

  final = nanogpt.to_nanogpt(params)
  return {
      'logits0': _max_abs(logits0, trace['logits0']),
      'loss': _max_abs(losses, trace['loss']),
      'lr': _max_rel(lrs, trace['lr']),
      'grad_norm': _max_rel(grad_norms, trace['grad_norm']),
      'weights': max(_max_abs(final[k], trace[f'final/{k}']) for k in final),
  }


def tolerances(trace: dict) -> dict[str, float]:
  return {
      'logits0': LOGITS_TOL,
      'loss': LOSS_TOL,
      'lr': LR_REL_TOL,
      'grad_norm': GRAD_NORM_REL_TOL,
      'weights': max(WEIGHTS_MIN_TOL, 10 * float(trace['final_fp64_max_abs_diff'])),
  }


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m jaxgpt.parity', description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('trace', help='a nanogpt-trace/1 .npz file')
  parser.add_argument('--compile', default='True', choices=['True', 'False'],
                      help='False: replay through the staged (compile=False) train step')
  parser.add_argument('--threads', type=int, default=1,
                      help="split each batch's rows over this many threads (it must divide the trace's batch)")
  parser.add_argument('--data_parallel', action='store_true',
                      help='split each batch across all devices (e.g. XLA_FLAGS=--xla_force_host_platform_device_count=4)')
  parser.add_argument('--fsdp', action='store_true', help='with --data_parallel: split params and AdamW state too')
  args = parser.parse_args(argv)
  return entry.run(lambda: compare(args), f'interrupted: the replay of {args.trace} stopped, nothing was written')


def read_trace(path: str) -> dict[str, np.ndarray]:
  """The arrays of the trace at path, its keys checked against the format's."""
  try:
    if pathlib.Path(path).is_file() and not zipfile.is_zipfile(path):  # numpy would advise allow_pickle
      raise ValueError('not a .npz file, or one cut short')
    with np.load(path) as npz:
      trace = {k: npz[k] for k in npz.files}
  except (OSError, ValueError, zipfile.BadZipFile) as e:
    raise JaxGPTError(f'cannot read {path} as a nanoGPT trace: {getattr(e, "strerror", None) or e}') from None
  figures = {k for k in trace if '/' not in k}
  init, final = ({k.removeprefix(prefix) for k in trace if k.startswith(prefix)} for prefix in ('init/', 'final/'))
  problems = [f'{what} {", ".join(sorted(keys))}' for what, keys in
              (('missing', TRACE_FIGURES - figures), ('unexpected', figures - TRACE_FIGURES)) if keys]
  if not init:
    problems.append('no init/ weights')
  elif init != final:
    problems.append(f'init/ and final/ weights named otherwise ({", ".join(sorted(init ^ final))})')
  if problems:
    raise JaxGPTError(f'{path} is not a nanogpt-trace/1 file ({"; ".join(problems)}): record it again as '
                      'tests/fixtures/README.md says')
  try:
    meta_format = json.loads(str(trace['meta'])).get('format')
  except (ValueError, AttributeError) as e:
    raise JaxGPTError(f'cannot read {path} as a nanoGPT trace: its meta is not a JSON object ({e})') from None
  if meta_format != 'nanogpt-trace/1':
    raise JaxGPTError(f'{path} is not a nanogpt-trace/1 file (its meta says format={meta_format!r})')
  return trace


def compare(args: argparse.Namespace) -> int:
  """Replays the trace named by args and prints each figure's difference and
  tolerance, then PASS or FAIL; 0 on PASS, 1 on FAIL."""
  trace = read_trace(args.trace)
  rows = trace['x'].shape[2]
  if args.threads < 1 or rows % args.threads:
    raise JaxGPTError(f'--threads={args.threads}: the trace\'s batches of {rows} rows do not split into that many '
                      'equal shards')
  if args.threads > 1 and args.data_parallel:
    raise JaxGPTError('--threads and --data_parallel: pick one')
  mesh = parallel.make_mesh() if args.data_parallel else None
  if mesh is not None and rows % mesh.size:
    raise JaxGPTError(f'the trace\'s batches of {rows} rows do not split across {mesh.size} devices')
  diffs = replay(trace, fused=args.compile == 'True', mesh=mesh, fsdp=args.fsdp, threads=args.threads)
  limits = tolerances(trace)
  kinds = {'lr': 'max rel', 'grad_norm': 'max rel'}
  print(f'{"figure":<10} {"difference":>12}  {"tolerance":>9}')
  for name, diff in diffs.items():
    ok = 'ok' if diff <= limits[name] else 'FAIL'
    print(f'{name:<10} {diff:12.3e}  {limits[name]:9.1e}  {kinds.get(name, "max abs")}  {ok}')
  failed = [name for name in diffs if not diffs[name] <= limits[name]]
  steps = len(trace['loss'])
  if failed:
    print(f'FAIL: {", ".join(failed)} outside tolerance ({args.trace}, {steps} steps)')
    return 1
  print(f'PASS: jaxgpt matches nanoGPT on {args.trace} ({steps} steps)')
  return 0


if __name__ == '__main__':
  sys.exit(main())
