"""The training loop, with nanoGPT's semantics and log lines.

Iterations 0..max_iters inclusive; train and val loss estimated every
eval_interval iterations (and at 0); a checkpoint when val improves (or
always, with always_save_checkpoint), never at iteration 0, and the final state when
training ends; eval_only stops after the first evaluation (a resumed run's
too: it evaluates the checkpoint, and saves nothing). Before any weight exists, the run's memory is
estimated from the compiled programs and held against the machine's
(jaxgpt/memory.py). Ctrl-C or SIGTERM stops after the step or evaluation
batch in flight, with a checkpoint.
"""

import builtins
import contextlib
import dataclasses
import json
import math
import pathlib
import signal
import sys
import time

import jax
import ml_collections
from jax.experimental import multihost_utils

from jaxgpt import data, gpt2, memory, parallel, runtime, step
from jaxgpt.checkpoint import Checkpoints, holds_checkpoints
from jaxgpt.config import GPT2_MODELS
from jaxgpt.model import SHAPE_KEYS, GPTConfig
from jaxgpt.errors import JaxGPTError
from jaxgpt.optim import lr_schedule, make_optimizer
from jaxgpt.progress import TrainingProgress
from jaxgpt.step import StepMetrics

A100_BF16_PEAK_FLOPS = 312e12  # nanoGPT reports MFU against this; kept so the numbers compare


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


def estimate_mfu(config: GPTConfig, num_params: int, tokens_per_iter: int, dt: float) -> float:
  """nanoGPT's model flops utilization, from the PaLM paper's appendix B."""
  L, H, Q, T = config.n_layer, config.n_head, config.n_embd // config.n_head, config.block_size
  flops_per_token = 6 * num_params + 12 * L * H * Q * T
  return flops_per_token * tokens_per_iter / dt / A100_BF16_PEAK_FLOPS


RUN_SHAPE_KEYS = tuple(key for key in SHAPE_KEYS if key != 'vocab_size')  # vocab_size: the data set's


def import_wandb():
  """wandb, for wandb_log=True (WANDB_MODE=offline logs to ./wandb without an account)."""
  try:
    import wandb
  except ImportError:
    raise JaxGPTError('wandb_log=True needs wandb: pip install -e ".[wandb]", or pass --config.wandb_log=False') from None
  return wandb


def pretrained_model_config(c: ml_collections.ConfigDict, pretrained: GPTConfig,
                            overridden: frozenset[str], vocab: list[str] | None) -> GPTConfig:
  """GPT-2's model shape, also written back into c, as nanoGPT's
  from_pretrained: only dropout is the run's, and a smaller block_size crops
  the position embeddings. A conflicting override is an error."""
  if vocab is not None:
    raise JaxGPTError(f'dataset {c.dataset} is character-level; {c.init_from} reads GPT-2 tokens: '
                      'prepare the data set in GPT-2 tokens (as data/shakespeare)')
  for key in RUN_SHAPE_KEYS:
    pretrained_value = getattr(pretrained, key)
    if key in overridden and c[key] != pretrained_value and not (key == 'block_size' and c[key] < pretrained_value):
      raise JaxGPTError(f'--config.{key}={c[key]} conflicts with {c.init_from}, which has {key}={pretrained_value}: '
                        f'drop the override (only block_size may be smaller, to crop the context)')
    if key != 'block_size' or c[key] > pretrained_value:
      c[key] = pretrained_value
  return dataclasses.replace(pretrained, block_size=c.block_size, dropout=c.dropout, dtype=c.dtype, remat=c.remat)


def resumed_model_config(c: ml_collections.ConfigDict, meta: dict, overridden: frozenset[str],
                         vocab: list[str] | None) -> GPTConfig:
  """The checkpoint's model shape, also written back into c. An override on
  the command line that disagrees with it is an error, not a silent change."""
  saved = meta['model_args']
  for key in RUN_SHAPE_KEYS + ('seed',):
    saved_value = saved[key] if key in saved else meta['config'][key]
    if key in overridden and c[key] != saved_value:
      raise JaxGPTError(f'--config.{key}={c[key]} conflicts with the checkpoint in {c.out_dir}, '
                        f'which has {key}={saved_value}: drop the override to resume, or train '
                        'from scratch in another --config.out_dir')
    c[key] = saved_value
  if meta['vocab'] != vocab:
    raise JaxGPTError(f'the vocabulary of dataset {c.dataset} differs from the one the checkpoint in '
                      f'{c.out_dir} was trained on: resume with the same --config.dataset')
  return GPTConfig.from_run_config(c, saved['vocab_size'])


def run(c: ml_collections.ConfigDict, overridden: frozenset[str] = frozenset()) -> dict[str, float]:
  """Trains as the config says; returns the last evaluation's losses.
  `overridden`: the keys set on the command line (they must agree with a
  checkpoint being resumed)."""
  with contextlib.ExitStack() as cleanup:  # on every way out: out_dir's lock, the log files, the signal handlers
    try:
      return train(c, overridden, cleanup)
    except jax.errors.JaxRuntimeError as e:
      raise memory.out_of_memory(e, c.remat) or e


def train(c: ml_collections.ConfigDict, overridden: frozenset[str], cleanup: contextlib.ExitStack) -> dict[str, float]:
  pin_device(c.device)
  parallel.initialize(c.coordinator_address, c.num_processes, c.process_id, c.device, c.coordinator_timeout)
  mesh = parallel.make_mesh()
  micro_steps = parallel.micro_steps(c.gradient_accumulation_steps, mesh)
  main_process = jax.process_index() == 0
  wandb = import_wandb() if c.wandb_log and main_process else None  # before anything is written
  print = builtins.print if main_process else lambda *args, **kwargs: None  # only process 0 logs

  # Ctrl-C or SIGTERM is noted, and acted on between steps (or evaluation
  # batches): the step in flight finishes, a checkpoint is saved, the run
  # stops. Before training begins it stops at the next such point, with
  # nothing written; raised in the middle of jax's start-up it could crash
  # the interpreter on its way out. A second one raises at once.
  stop_signal, training = [], []

  def request_stop(signum, frame):
    if stop_signal:
      raise KeyboardInterrupt
    stop_signal.append(signum)
    doing = ('finishing this iteration or evaluation batch, then saving a checkpoint' if training else
             'stopping before training begins')
    print(f'{signal.Signals(signum).name}: {doing} (again to stop at once, unsaved)', flush=True)

  def stop_if_requested_before_training() -> None:
    if stop_signal:
      raise KeyboardInterrupt

  for signum in (signal.SIGINT, signal.SIGTERM):
    cleanup.callback(signal.signal, signum, signal.signal(signum, request_stop))
  # nanoGPT's count: micro-batches of the whole world, each batch_size rows
  tokens_per_iter = c.gradient_accumulation_steps * c.batch_size * c.block_size
  print(f'tokens per iteration will be: {tokens_per_iter:,}')
  if mesh.size > 1:
    print(f'data parallel over {mesh.size} devices in {jax.process_count()} process(es), params '
          f'{"split (fsdp)" if c.fsdp else "replicated"}')

  if main_process:  # prepares the data set when it can; the others wait for it
    data.ensure_prepared(c.dataset, c.gpt2_dir)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('data prepared')
  folder = data.ensure_prepared(c.dataset, c.gpt2_dir)
  vocab = data.load_vocab(folder)
  if vocab is None:
    vocab_size = data.GPT2_VOCAB_SIZE
    print(f'defaulting to vocab_size of GPT-2 to {vocab_size} (50257 rounded up for efficiency)')
  else:
    vocab_size = len(vocab)
    print(f'found vocab_size = {vocab_size} (inside {folder / "meta.json"})')
  stop_if_requested_before_training()

  if c.init_from == 'resume':
    print(f'Resuming training from {c.out_dir}')
    checkpoints = cleanup.enter_context(Checkpoints(c.out_dir, create=False, locked=main_process))
    resume_step = checkpoints.latest_step()
    meta = checkpoints.meta(resume_step)
    if meta['iter_num'] > c.max_iters and not c.eval_only:  # nanoGPT would train one step on, and never save it
      raise JaxGPTError(f'the checkpoint in {c.out_dir} is at iteration {meta["iter_num"]}, past '
                        f'max_iters={c.max_iters}: raise --config.max_iters to train on')
    config = resumed_model_config(c, meta, overridden, vocab)
  else:
    if holds_checkpoints(c.out_dir):
      raise JaxGPTError(f'{c.out_dir} holds checkpoints of an earlier run: pass --config.init_from=resume '
                        'to continue it, or another --config.out_dir to start afresh')
    if c.init_from == 'scratch':
      print('Initializing a new model from scratch')
      config = GPTConfig.from_run_config(c, vocab_size)
    else:
      print(f'Initializing from OpenAI GPT-2 weights: {c.init_from}')
      pretrained_folder = gpt2.locate(c.init_from, c.gpt2_dir)
      config = pretrained_model_config(c, gpt2.pretrained_config(pretrained_folder), overridden, vocab)

  # every batch is drawn from (seed, stream, iteration, device): streams apart,
  # so that eval_iters does not change the training batches
  train_batches = parallel.Batches(data.BatchSampler(folder / 'train.bin', c.block_size, c.batch_size,
                                                     data.vocab_size(vocab)),
                                   mesh, c.seed, stream=0)
  eval_batches = {split: parallel.Batches(data.BatchSampler(folder / f'{split}.bin', c.block_size, c.batch_size,
                                                            data.vocab_size(vocab)),
                                          mesh, c.seed, stream=stream)
                  for stream, split in ((1, 'train'), (2, 'val'))}
  iter_num, best_val_loss = (meta['iter_num'], meta['best_val_loss']) if c.init_from == 'resume' else (0, math.inf)

  # the memory check: from the config alone, then from the compiled programs,
  # before any weight exists or anything is written
  if c.check_memory:
    rows = c.batch_size * jax.local_device_count()
    drawn = micro_steps + c.eval_iters  # a step's micro-batches and an evaluation's, each drawn at once
    batches = memory.batches_bytes(drawn, rows, c.block_size)
    memory.check(batches, f'for {drawn:,} batches of {rows} x {c.block_size} tokens drawn at once ({micro_steps:,} '
                 f'micro-batches of a step, {c.eval_iters:,} of an evaluation)',
                 'lower --config.eval_iters, --config.gradient_accumulation_steps, --config.batch_size or '
                 '--config.block_size' + memory.TRY_ANYWAY)
    memory.check(batches + memory.state_bytes(config, rows),
                 "for the weights, gradients and AdamW state, with one layer's attention scores",
                 memory.smaller_run(c.remat) + memory.TRY_ANYWAY)
  graphdef, abstract_params = step.abstract_params(config)
  tx = make_optimizer(c)
  train_step = step.TrainStep(graphdef, tx, dtype=c.dtype, dropout=c.dropout > 0, seed=c.seed, fused=c.compile)
  eval_loss = step.make_eval_loss(graphdef, c.dtype)
  abstract_state = parallel.abstract_state(mesh, abstract_params, c.fsdp), \
      parallel.abstract_state(mesh, jax.eval_shape(tx.init, abstract_params), c.fsdp)
  xs, ys = train_batches(iter_num, micro_steps)
  programs = train_step.compile(*abstract_state, xs, ys, iter_num) + \
      [eval_loss.lower(abstract_state[0], *eval_batches['val'](0, c.eval_iters), 0).compile()]
  estimate = memory.run_estimate(programs, abstract_state)
  available = memory.available_bytes()
  print(f'memory: {estimate}' + (f', {available[0] / memory.GB:.2f} GB available' if available else ''))
  if c.check_memory:
    memory.check(estimate.total, 'for this run', memory.smaller_run(c.remat) + memory.TRY_ANYWAY)
  if estimate.working > runtime.LARGE_BUFFER_BYTES:
    runtime.map_large_buffers()

  stop_if_requested_before_training()
  if c.init_from != 'resume':  # out_dir made only now that the data and the memory proved enough
    checkpoints = cleanup.enter_context(Checkpoints(c.out_dir, locked=main_process))
  model, _, params = step.init_model(config, c.seed)
  if c.init_from in GPT2_MODELS:
    params = gpt2.load_params(pretrained_folder, config, params)
  num_params = model.num_params()
  print(f'number of parameters: {num_params / 1e6:.2f}M')
  del model  # from here on the params pytree is the model's only state

  params = parallel.place_state(mesh, params, c.fsdp)
  opt_state = parallel.init_optimizer_state(mesh, tx, params, c.fsdp)
  if c.init_from == 'resume':
    params, opt_state = checkpoints.state(resume_step, params, opt_state)

  def stop_requested() -> bool:
    return parallel.all_processes_agree(bool(stop_signal))  # all stop at the same point

  def estimate_loss() -> dict[str, float] | None:
    """The mean loss of eval_iters batches of each split, read batch by
    batch, so that a stop ends it at once: then None."""
    drawn_at = 0 if c.eval_fixed else iter_num  # eval_fixed: the same batches at every evaluation
    losses = {}
    for split, batches in eval_batches.items():
      split_xs, split_ys = batches(drawn_at, c.eval_iters)
      total = 0.0
      for i in range(c.eval_iters):
        if stop_requested():
          return None
        total += float(eval_loss(params, split_xs, split_ys, i))
      losses[split] = total / c.eval_iters
    return losses

  # every logged iteration and evaluation, one JSON object a line (appended on resume)
  metrics_file = cleanup.enter_context((pathlib.Path(c.out_dir) / 'metrics.jsonl').open(
      'a' if c.init_from == 'resume' else 'w')) if main_process else None
  learning_rate = jax.jit(lr_schedule(c))  # for the log: eager, its ops would compile one by one (0.4 s)
  if wandb:
    wandb.init(project=c.wandb_project, name=c.wandb_run_name, config=c.to_dict())  # as nanoGPT
    cleanup.callback(wandb.finish)

  def record(**fields) -> None:
    if metrics_file:
      metrics_file.write(json.dumps(fields) + '\n')
      metrics_file.flush()

  losses = {}
  first_iter, running_mfu = iter_num, -1.0
  t0, last_timed = time.time(), iter_num - 1  # the clock started after iteration last_timed
  last_finite = None  # (iteration, loss) of the last step with a finite loss
  last_finish = time.time()  # when the last step's loss was read

  def finish(done_iter: int, metrics: StepMetrics) -> None:
    """Reads a step's loss (waiting for the step): stops at a non-finite one,
    before anything is saved, and prints nanoGPT's line when it is due."""
    nonlocal t0, last_timed, running_mfu, last_finite, last_finish
    lossf = float(metrics.loss)
    if not math.isfinite(lossf):
      last = f'the last finite loss was {last_finite[1]:.4f} at iteration {last_finite[0]}' if last_finite else \
          'no iteration had a finite loss'
      raise JaxGPTError(f'loss is {lossf} at iteration {done_iter} ({last}); stopped, the checkpoints in '
                        f'{c.out_dir} are as they were: lower --config.learning_rate or raise --config.warmup_iters')
    last_finite = (done_iter, lossf)
    if bar.enabled:  # the lr is a jax computation (~0.15 ms): not worth it per step for nobody
      now = time.time()
      bar.update(done_iter, lossf, float(learning_rate(done_iter)), tokens_per_iter / max(now - last_finish, 1e-9))
      last_finish = now
    if done_iter % c.log_interval:
      return
    t1 = time.time()
    dt = (t1 - t0) / (done_iter - last_timed)  # mean over the iterations since the last line
    t0, last_timed = t1, done_iter
    if done_iter - first_iter >= 5:  # let the training loop settle a bit
      mfu = estimate_mfu(config, num_params, tokens_per_iter, dt)
      running_mfu = mfu if running_mfu == -1.0 else 0.9 * running_mfu + 0.1 * mfu
    print(f'iter {done_iter}: loss {lossf:.4f}, time {dt * 1000:.2f}ms, mfu {running_mfu * 100:.2f}%')
    record(iter=done_iter, loss=lossf, lr=float(learning_rate(done_iter)), ms=dt * 1000,
           tokens_per_s=tokens_per_iter / dt, mfu=running_mfu if running_mfu >= 0 else None)

  def save(val_loss: float) -> None:
    """A checkpoint of the state before iteration iter_num (every process takes part)."""
    checkpoints.save(iter_num, params, opt_state, {
        'iter_num': iter_num, 'val_loss': val_loss, 'best_val_loss': best_val_loss,
        'model_args': dataclasses.asdict(config), 'config': c.to_dict(), 'vocab': vocab})

  def save_unsaved() -> bool:
    """Saves the state before iteration iter_num unless a checkpoint holds it
    (the one resumed from, or one just saved): True if it saved."""
    if iter_num in checkpoints.manager.all_steps():
      return False
    save(math.inf)  # no val loss for this state: inf keeps it out of the running for best
    return True

  def save_final() -> None:
    # the iterations since the last evaluation (all of them, when eval_interval
    # exceeds max_iters) are kept, and a resume continues where this run ended
    if save_unsaved():
      print(f'saving checkpoint to {c.out_dir} (the final state, before iteration {iter_num})')

  def save_on_stop() -> None:
    save_unsaved()
    reason = signal.Signals(stop_signal[0]).name if stop_signal else 'a stop in another process'
    print(f'{reason} at iteration {iter_num}: saved a checkpoint to '
          f'{c.out_dir}; continue with --config.init_from=resume')

  stop_if_requested_before_training()
  training.append(True)
  bar = TrainingProgress(iter_num, c.max_iters, enabled=main_process and sys.stdout.isatty())
  with bar:
    while True:
      if iter_num % c.eval_interval == 0 or c.eval_only:
        losses = estimate_loss()
        if losses is None:  # stopped mid-evaluation: the state is the one before it
          save_on_stop()
          break
        print(f'step {iter_num}: train loss {losses["train"]:.4f}, val loss {losses["val"]:.4f}')
        record(iter=iter_num, train_loss=losses['train'], val_loss=losses['val'])
        if wandb:  # the keys nanoGPT logs
          wandb.log({'iter': iter_num, 'train/loss': losses['train'], 'val/loss': losses['val'],
                     'lr': float(learning_rate(iter_num)), 'mfu': running_mfu * 100})
        if losses['val'] < best_val_loss or c.always_save_checkpoint:
          best_val_loss = min(best_val_loss, losses['val'])
          if iter_num > 0 and iter_num not in checkpoints.manager.all_steps():  # not the one resumed from
            print(f'saving checkpoint to {c.out_dir}')
            save(losses['val'])
        t0, last_timed = time.time(), iter_num - 1  # iteration times leave evaluation out
      if c.eval_only:  # nanoGPT's `iter_num == 0 and eval_only` would let a resumed run train on
        break

      params, opt_state, metrics = train_step(params, opt_state, xs, ys, iter_num)
      xs, ys = train_batches(iter_num + 1, micro_steps)  # drawn while the step runs
      # waits for the step: the next is dispatched only once this one is
      # done, so a stop is honoured within one step
      finish(iter_num, metrics)
      iter_num += 1
      if iter_num > c.max_iters:
        save_final()
        break
      if stop_requested():
        save_on_stop()
        break
  return losses
