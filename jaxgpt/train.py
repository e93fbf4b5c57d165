"""The training loop, with nanoGPT's semantics and log lines.

Iterations 0..max_iters inclusive; train and val loss estimated every
eval_interval iterations (and at 0), from eval_start on; a checkpoint when val improves (or
always, with always_save_checkpoint), never at iteration 0, and the final
state when training ends; eval_only stops after the first evaluation (a
resumed run's too: it evaluates the checkpoint, and saves nothing). A
resumed run starts from the latest checkpoint, or from the best
(`checkpoint=best`); an out_dir holding checkpoints takes no other run unless
`overwrite=True`, which replaces them. Before any weight exists, the run's
memory is estimated from the compiled programs and held against the
machine's (jaxgpt/memory.py). Ctrl-C, SIGTERM or SIGHUP stops after the step
or evaluation batch in flight, with a checkpoint.

The parts, in the order a run meets them: `Log` (the lines printed, by
process 0), `StopSignals` (Ctrl-C, SIGTERM, SIGHUP), `StartingPoint`
(scratch, resume or GPT-2: the model's config) and `initial_state` (its
first `TrainState`), `Trainer` (everything built before the first step, held
while it trains, and the loop itself) and `TrainLogger` (what is reported of
each step and evaluation).

The process is set up by the caller, before jax starts: train.py's entry
point does it (jaxgpt.cli.set_up_process), and a library user who trains
through `run` or `Trainer` decides for their own process.
"""

import contextlib
import dataclasses
import json
import math
import os
import pathlib
import signal
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TextIO

import jax
import ml_collections
import optax
from jax.experimental import multihost_utils

from jaxgpt import data, entry, evaluate, files, gpt2, memory, parallel, prepare, runtime, step
from jaxgpt.checkpoint import Checkpoints, holds_checkpoints
from jaxgpt.errors import JaxGPTError, optional_import
from jaxgpt.model import SHAPE_KEYS, GPTConfig
from jaxgpt.optim import lr_schedule, make_optimizer
from jaxgpt.progress import TrainingProgress
from jaxgpt.step import StepMetrics

A100_BF16_PEAK_FLOPS = 312e12  # nanoGPT reports MFU against this; kept so the numbers compare

IMPORTED_AT = time.monotonic()  # process_start's stand-in where the kernel does not say

RUN_SHAPE_KEYS = tuple(key for key in SHAPE_KEYS if key != 'vocab_size')  # vocab_size: the data set's


def run(config: ml_collections.ConfigDict, overridden: frozenset[str] = frozenset()) -> dict[str, float]:
  """Trains as the config says; returns the last evaluation's losses.
  `overridden`: the keys set on the command line (they must agree with a
  checkpoint being resumed)."""
  try:
    with Trainer(config, overridden) as trainer:
      return trainer.train()
  except jax.errors.JaxRuntimeError as e:
    raise memory.out_of_memory(e, config.remat) or e


@dataclasses.dataclass
class TrainState:
  """What the loop advances and a checkpoint keeps."""
  params: step.Params
  opt_state: optax.OptState
  iter_num: int = 0  # the next iteration to run
  best_val_loss: float = math.inf


class Log:
  """The run's lines on stdout, printed by process 0 alone: a run across
  processes reports once."""

  def __init__(self, main_process: bool):
    self.main_process = main_process
    self.closed = False  # whether stdout's reader closed it (`| head`): then the run stops, as on Ctrl-C
    self.on_closed: Callable[[], None] | None = None  # StopSignals' note of it

  def print(self, *args, **kwargs) -> None:
    if self.main_process:
      try:
        print(*args, **kwargs)
      except BrokenPipeError:
        self.note_closed()

  def note_closed(self) -> None:
    """stdout's reader closed it: what is still printed goes nowhere, and the run stops."""
    entry.leave_closed_pipe()
    self.closed = True
    if self.on_closed:
      self.on_closed()

  def last_word(self, line: str) -> None:
    """The run's last line: on stderr where stdout's reader closed it, so that it is still seen."""
    if self.main_process:
      print(line, file=sys.stderr if self.closed else sys.stdout)


class StopSignals(entry.StopSignals):
  """Ctrl-C, SIGTERM or SIGHUP (the terminal closed), noted and acted on
  between steps (or evaluation batches): the step in flight finishes, a
  checkpoint is saved, the run stops. After SIGHUP, what would go to the
  closed terminal goes nowhere (entry.leave_closed_terminal). stdout closed
  by its reader (`| head`) stops the run too, as SIGPIPE (`Log.note_closed`),
  its last line on stderr. Before training begins it stops at the next such
  point, with nothing written; raised in the middle of jax's start-up it
  could crash the interpreter on its way out. A second one raises at once.
  Under `nohup` SIGHUP stays ignored: the run outlives its terminal."""

  def __init__(self, log: Log):
    super().__init__(noted=True)
    self.log = log
    self.training = False  # set when the first step is about to run

  def __enter__(self) -> 'StopSignals':
    super().__enter__()
    self.log.on_closed = self._note_closed_output
    if self.log.closed:
      self._note_closed_output()
    return self

  def __exit__(self, *exc_info) -> None:
    super().__exit__(*exc_info)
    self.log.on_closed = None

  def on_noted(self, signum: int) -> None:
    doing = ('finishing this iteration or evaluation batch, then saving a checkpoint' if self.training else
             'stopping before training begins')
    self.log.print(f'{signal.Signals(signum).name}: {doing} (again to stop at once, unsaved)', flush=True)

  def _note_closed_output(self) -> None:
    """stdout's reader closed it (`| head`): a stop, as SIGPIPE would have been had Python not ignored it."""
    if not self.received:
      self.received.append(signal.SIGPIPE)

  def stop_before_training(self) -> None:
    """Stops the run here if a signal came: before training, nothing is saved."""
    if self.received:
      raise KeyboardInterrupt

  def requested(self, agreed: jax.Array | None = None) -> bool:
    """Whether to stop now; all processes answer alike, so all stop at the
    same point. agreed: their answer, where a train step carried it."""
    if agreed is not None:
      return bool(agreed)
    return parallel.all_processes_agree(bool(self.received))

  def reason(self) -> str:
    return self.first_signal() if self.received else 'a stop in another process'


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
  """The checkpoint's model shape, seed and optimizer (its state is saved in
  that optimizer's form), also written back into c. An override on the
  command line that disagrees with it is an error, not a silent change."""
  saved = {'optimizer': 'adamw'} | meta['config'] | meta['model_args']  # no optimizer key (older ones): AdamW's
  for key in RUN_SHAPE_KEYS + ('seed', 'optimizer'):
    saved_value = saved[key]
    if key in overridden and c[key] != saved_value:
      raise JaxGPTError(f'--config.{key}={c[key]} conflicts with the checkpoint in {c.out_dir}, '
                        f'which has {key}={saved_value}: drop the override to resume, or train '
                        'from scratch in another --config.out_dir')
    c[key] = saved_value
  if meta['vocab'] != vocab:
    raise JaxGPTError(f'the vocabulary of dataset {c.dataset} differs from the one the checkpoint in '
                      f'{c.out_dir} was trained on: resume with the same --config.dataset')
  return GPTConfig.from_run_config(c, saved['vocab_size'])


class StartingPoint:
  """Where a run starts: from scratch, from the checkpoint in out_dir
  (init_from=resume) or from GPT-2's weights. The model's config is settled
  first, and checked against the command line, so that the memory check can
  come before any weight exists; `initial_state` then builds the weights.
  A resumed run's checkpoints are opened (and locked) into `resources`."""

  def __init__(self, c: ml_collections.ConfigDict, overridden: frozenset[str], vocab: list[str] | None,
               resources: contextlib.ExitStack, log: Log):
    self.config = c
    self.checkpoints: Checkpoints | None = None  # the resumed run's, opened (and locked) at once
    self.meta: dict | None = None
    self.pretrained_folder: pathlib.Path | None = None
    if c.init_from == 'resume':
      log.print(f'Resuming training from {c.out_dir}')
      self.checkpoints = resources.enter_context(Checkpoints(c.out_dir, create=False, locked=log.main_process))
      self.resume_step = self.checkpoints.chosen_step(c.checkpoint)
      self.meta = self.checkpoints.meta(self.resume_step)
      if self.meta['iter_num'] > c.max_iters and not c.eval_only:  # nanoGPT would train one step on, and never save it
        raise JaxGPTError(f'the checkpoint in {c.out_dir} is at iteration {self.meta["iter_num"]}, past '
                          f'max_iters={c.max_iters}: raise --config.max_iters to train on')
      self.model_config = resumed_model_config(c, self.meta, overridden, vocab)
      latest = self.checkpoints.latest_step()
      if self.resume_step != latest:  # checkpoint=best, an earlier one
        log.print(f'from the best checkpoint, step {self.resume_step} (val loss {self.meta["val_loss"]:.4f}), '
                  f'not the latest, step {latest}' + ('' if c.eval_only else
                                                      f"; this run's first save replaces those after step "
                                                      f"{self.resume_step}"))
      return
    if holds_checkpoints(c.out_dir) and not c.overwrite:
      raise JaxGPTError(f'{c.out_dir} holds checkpoints of an earlier run: continue it with --config.init_from=resume, '
                        'start afresh here with --config.overwrite=True (replacing them), or pass another '
                        '--config.out_dir')
    if c.init_from == 'scratch':
      log.print('Initializing a new model from scratch')
      self.model_config = GPTConfig.from_run_config(c, data.GPT2_VOCAB_SIZE if vocab is None else len(vocab))
    else:
      log.print(f'Initializing from OpenAI GPT-2 weights: {c.init_from}')
      self.pretrained_folder = gpt2.locate(c.init_from, c.gpt2_dir)
      self.model_config = pretrained_model_config(c, gpt2.pretrained_config(self.pretrained_folder), overridden, vocab)

  @property
  def iter_num(self) -> int:
    return self.meta['iter_num'] if self.meta else 0


def initial_state(start: StartingPoint, mesh: jax.sharding.Mesh, tx: optax.GradientTransformation,
                  log: Log) -> tuple[TrainState, int]:
  """The first TrainState of a run starting at `start`, placed on the mesh,
  and the model's parameter count."""
  model, _, params = step.init_model(start.model_config, start.config.seed)
  if start.pretrained_folder:
    params = gpt2.load_params(start.pretrained_folder, start.model_config, params)
  num_params = model.num_params()
  log.print(f'number of parameters: {num_params / 1e6:.2f}M')
  del model  # from here on the params pytree is the model's only state
  params = parallel.place_state(mesh, params, start.config.fsdp)
  opt_state = parallel.init_optimizer_state(mesh, tx, params, start.config.fsdp)
  if not start.meta:
    return TrainState(params, opt_state), num_params
  params, opt_state = start.checkpoints.state(start.resume_step, params, opt_state)
  return TrainState(params, opt_state, start.meta['iter_num'], start.meta['best_val_loss']), num_params


def prepared_dataset(c: ml_collections.ConfigDict, log: Log) -> tuple[pathlib.Path, list[str] | None]:
  """The data set's folder and vocabulary (None: GPT-2 tokens), prepared
  first when it can be (by process 0; the others wait for it)."""
  if log.main_process:
    try:
      prepare.ensure_prepared(c.dataset, c.gpt2_dir)
    except BrokenPipeError:  # the reader of its lines closed stdout: stopped there, as by Ctrl-C before training
      log.note_closed()
      raise KeyboardInterrupt from None
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('data prepared')
  folder = prepare.ensure_prepared(c.dataset, c.gpt2_dir)
  vocab = data.load_vocab(folder)
  if vocab is None:
    log.print(f'defaulting to vocab_size of GPT-2 to {data.GPT2_VOCAB_SIZE} (50257 rounded up for efficiency)')
  else:
    log.print(f'found vocab_size = {len(vocab)} (inside {folder / "meta.json"})')
  return folder, vocab


def process_start() -> float:
  """When this process started, on time.monotonic()'s clock: from the
  kernel's start time on Linux (so the interpreter's start and the imports
  count), else the moment jaxgpt.train was imported."""
  try:
    after_name = pathlib.Path('/proc/self/stat').read_text().rpartition(')')[2].split()
    started = int(after_name[19]) / os.sysconf('SC_CLK_TCK')  # field 22, starttime: clock ticks after boot
    age = float(pathlib.Path('/proc/uptime').read_text().split()[0]) - started
  except (OSError, ValueError, IndexError):
    return IMPORTED_AT
  return time.monotonic() - age


def estimate_mfu(config: GPTConfig, num_params: int, tokens_per_iter: int, dt: float) -> float:
  """nanoGPT's model flops utilization, from the PaLM paper's appendix B."""
  L, H, Q, T = config.n_layer, config.n_head, config.n_embd // config.n_head, config.block_size
  flops_per_token = 6 * num_params + 12 * L * H * Q * T
  return flops_per_token * tokens_per_iter / dt / A100_BF16_PEAK_FLOPS


class Trainer:
  """A run: its parts, built on entering (before its first step) and
  released on leaving (out_dir's lock, the log files, the signal handlers,
  the evaluation and step threads), and its loop (`train`):

    with Trainer(config) as trainer:
      losses = trainer.train()
  """

  def __init__(self, config: ml_collections.ConfigDict, overridden: frozenset[str] = frozenset()):
    self.config, self.overridden = config, overridden

  def __enter__(self) -> 'Trainer':
    with contextlib.ExitStack() as resources:  # all released again if building fails
      self._build(resources)
      self.close = resources.pop_all().close
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()

  def _build(self, resources: contextlib.ExitStack) -> None:
    """Everything the run needs before its first step; what it holds is entered into resources."""
    c = self.config
    mesh = parallel.make_mesh()
    self.micro_steps = parallel.micro_steps(c.gradient_accumulation_steps, mesh)
    self.log = log = Log(jax.process_index() == 0)
    wandb = optional_import('wandb', 'wandb_log=True', 'wandb', instead='pass --config.wandb_log=False') \
        if c.wandb_log and log.main_process else None  # before anything is written
    if c.device == 'cpu' and runtime.lacks_onednn(c.dtype, c.n_embd):
      log.print("float32 matmuls: XLA's own, not oneDNN's (this jaxlib has no oneDNN): slower than on x86-64 Linux")
    self.stop = resources.enter_context(StopSignals(log))
    # nanoGPT's count: micro-batches of the whole world, each batch_size rows
    tokens_per_iter = c.gradient_accumulation_steps * c.batch_size * c.block_size
    log.print(f'tokens per iteration will be: {tokens_per_iter:,}')
    self.one_device = mesh.size == 1
    # one thread, kept for the run: a thread started afresh at every
    # evaluation would be handed a malloc arena in use by another
    self.eval_thread = resources.enter_context(ThreadPoolExecutor(1, thread_name_prefix='eval'))
    if mesh.size > 1:
      log.print(f'data parallel over {mesh.size} devices in {jax.process_count()} process(es), params '
                f'{"split (fsdp)" if c.fsdp else "replicated"}')
    folder, self.vocab = prepared_dataset(c, log)
    self.stop.stop_before_training()

    start = StartingPoint(c, self.overridden, self.vocab, resources, log)
    self.model_config = start.model_config
    # shown from here: compiling takes seconds, and the user sees it for what it is
    self.progress = resources.enter_context(TrainingProgress(start.iter_num, c.max_iters,
                                                             enabled=log.main_process and sys.stdout.isatty()))
    # every batch is drawn from (seed, stream, iteration, device): streams apart,
    # so that eval_iters does not change the training batches
    token_count = data.vocab_size(self.vocab)
    self.train_batches = parallel.Batches(data.BatchSampler(folder / 'train.bin', c.block_size, c.batch_size,
                                                            token_count), mesh, c.seed, stream=0)
    self.eval_batches = {split: parallel.Batches(data.BatchSampler(folder / f'{split}.bin', c.block_size,
                                                                   c.batch_size, token_count),
                                                 mesh, c.seed, stream=stream)
                         for stream, split in ((1, 'train'), (2, 'val'))}
    self.full_val = self._full_val_evaluator(folder) if c.full_val_context else None
    self.first_iter, self.process_start = start.iter_num, process_start()
    if c.check_memory:
      self._check_memory_before_compiling()
    graphdef, abstract_params = step.abstract_params(self.model_config)
    tx = make_optimizer(c)
    compiler_options = runtime.compiler_options(self.model_config.dtype, self.model_config.n_embd)
    self.train_step = step.make_train_step(c, graphdef, tx, mesh, compiler_options)
    if isinstance(self.train_step, step.ShardedTrainStep):
      resources.callback(self.train_step.close)  # its threads end with the run
    self.eval_batches_per_call = step.eval_batches_per_call(c.eval_iters, c.batch_size, c.block_size)
    self.eval_losses = step.make_eval_losses(graphdef, self.eval_batches_per_call, compiler_options)
    self.xs, self.ys = self.train_batches(start.iter_num, self.micro_steps)
    self._compile_within_memory(mesh, tx, abstract_params, start.iter_num, resources)

    self.stop.stop_before_training()
    # out_dir is made only now that the data and the memory proved enough
    self.checkpoints = start.checkpoints or resources.enter_context(Checkpoints(c.out_dir, locked=log.main_process))
    # the checkpoints this run does not continue: an earlier run's (overwrite=True), or those after the best one it
    # resumed from. Deleted just before this run's first save, once the lock is held and every check passed: a run
    # that fails or is stopped before it has a checkpoint of its own leaves them as they were; and none may outlive
    # that save, as orbax takes the highest step for the latest and saves no step below it. (metrics.jsonl is
    # started afresh with the training, as any run from scratch starts it: TrainLogger.)
    self.superseded = [step for step in self.checkpoints.steps() if c.overwrite or step > start.iter_num]
    if c.overwrite and self.superseded:
      log.print(f'overwrite=True: this run\'s first save replaces the checkpoints in {c.out_dir} '
                f'({self.steps_named()})')
    if start.pretrained_folder or start.meta:
      self.progress.show('loading the weights')
    self.state, num_params = initial_state(start, mesh, tx, log)
    self.logger = TrainLogger(c, self.model_config, num_params, tokens_per_iter, self.state.iter_num, log, wandb,
                              self.progress)

  def _full_val_evaluator(self, folder: pathlib.Path) -> evaluate.SplitEvaluator:
    """The whole val split's loss at full_val_context (its program compiled with the others)."""
    context = self.config.full_val_context
    evaluate.check_context(context, self.model_config.block_size, '--config.full_val_context')  # a resumed model's
    tokens = evaluate.split_tokens(folder / 'val.bin', context, '--config.full_val_context')
    # on one device, every other program call on the eval thread (split_loss)
    return evaluate.SplitEvaluator(self.model_config, tokens, context, self.eval_thread if self.one_device else None)

  def _check_memory_before_compiling(self) -> None:
    """Stops a run that cannot fit in memory, from the config alone: before
    the model is traced, a batch drawn or anything compiled."""
    c = self.config
    rows = c.batch_size * jax.local_device_count()
    drawn = self.micro_steps + c.eval_iters  # a step's micro-batches and an evaluation's, each drawn at once
    batches = memory.batches_bytes(drawn, rows, c.block_size)
    memory.check(batches, f'for {drawn:,} batches of {rows} x {c.block_size} tokens drawn at once '
                 f'({self.micro_steps:,} micro-batches of a step, {c.eval_iters:,} of an evaluation)',
                 'lower --config.eval_iters, --config.gradient_accumulation_steps, --config.batch_size or '
                 '--config.block_size' + memory.TRY_ANYWAY)
    memory.check(batches + memory.state_bytes(self.model_config, rows),
                 "for the weights, gradients and AdamW state, with one layer's attention scores",
                 memory.smaller_run(c.remat) + memory.TRY_ANYWAY)

  def _compile_within_memory(self, mesh: jax.sharding.Mesh, tx: optax.GradientTransformation,
                             abstract_params: step.Params, iter_num: int, resources: contextlib.ExitStack) -> None:
    """Compiles the train and eval programs, and checks that the run fits in
    memory by what they need, before any weight exists or anything is written.
    A step with gigabytes of working memory maps its buffers afresh while the
    run lasts (runtime.large_buffers_mapped)."""
    c = self.config
    abstract_state = (parallel.abstract_state(mesh, abstract_params, c.fsdp),
                      parallel.abstract_state(mesh, jax.eval_shape(tx.init, abstract_params), c.fsdp))
    eval_program = self.eval_losses.lower(abstract_state[0], *self.eval_batches['val'](0, c.eval_iters), 0).compile()
    programs = self.train_step.compile(*abstract_state, self.xs, self.ys, iter_num) + \
        [(eval_program, len(self.eval_batches) if self.one_device else 1)]  # the splits at once on one device
    if self.full_val:
      programs.append((self.full_val.compile(abstract_state[0]), 2 if self.full_val.helper else 1))
    estimate = memory.run_estimate(programs, abstract_state)
    available = memory.available_bytes()
    self.log.print(f'memory: {estimate}' + (f', {available[0] / memory.GB:.2f} GB available' if available else ''))
    if c.check_memory:
      memory.check(estimate.total, 'for this run', memory.smaller_run(c.remat) + memory.TRY_ANYWAY)
    if estimate.working > runtime.LARGE_BUFFER_BYTES:
      resources.enter_context(runtime.large_buffers_mapped())
    runtime.release_free_memory()  # the compiler's working memory

  def train(self) -> dict[str, float]:
    """nanoGPT's loop; returns the last evaluation's losses."""
    c, state, losses = self.config, self.state, {}
    self.stop.stop_before_training()
    self.stop.training = True
    self.progress.training()
    with self.logger:
      while True:
        out_of_time = self.out_of_time()
        due = state.iter_num % c.eval_interval == 0 and state.iter_num >= c.eval_start
        if due or c.eval_only or out_of_time:
          runtime.release_free_memory()  # the steps' freed buffers, before the evaluation takes its own
          with self.progress.evaluating():
            evaluation = self.evaluate()
          if evaluation is None:  # stopped mid-evaluation: the state is the one before it
            self.save_on_stop()
            break
          losses, full_val_seconds = evaluation
          self.logger.evaluation(state.iter_num, losses, full_val_seconds)
          if losses['val'] < state.best_val_loss or c.always_save_checkpoint:
            state.best_val_loss = min(state.best_val_loss, losses['val'])
            if state.iter_num > 0 and not self.saved():  # not the one resumed from
              self.log.print(f'saving checkpoint to {c.out_dir}')
              self.save(losses['val'])
          reason = None if c.eval_only else self.reason_to_stop(losses['val'], out_of_time)
          if reason:
            self.stop_here(losses['val'], reason)
            break
          runtime.release_free_memory()  # the next step faults its temp buffer in again
          self.logger.restart_clock(state.iter_num)  # iteration times leave evaluation out
        if c.eval_only:  # nanoGPT's `iter_num == 0 and eval_only` would let a resumed run train on
          break

        state.params, state.opt_state, metrics = self.train_step(state.params, state.opt_state, self.xs, self.ys,
                                                                 state.iter_num, **self.stop_flag())
        self.xs, self.ys = self.train_batches(state.iter_num + 1, self.micro_steps)  # drawn while the step runs
        # waits for the step: the next is dispatched only once this one is
        # done, so a stop is honoured within one step
        self.logger.step(state.iter_num, metrics)
        state.iter_num += 1
        if state.iter_num > c.max_iters:
          self.save_final()
          break
        if self.stop.requested(metrics.stop):
          self.save_on_stop()
          break
    return losses

  def out_of_time(self) -> bool:
    """Whether time_limit has passed since the process started, once this
    run has done an iteration (all processes answer alike)."""
    c = self.config
    if not c.time_limit or self.state.iter_num == self.first_iter:
      return False
    return parallel.all_processes_agree(time.monotonic() - self.process_start > c.time_limit)

  def reason_to_stop(self, val_loss: float, out_of_time: bool) -> str | None:
    """Why the run ends at this evaluation, before max_iters: target_val_loss reached, or time_limit passed."""
    c = self.config
    if c.target_val_loss and val_loss <= c.target_val_loss:
      return f'val loss {val_loss:.4f} is at or below target_val_loss={c.target_val_loss:g}'
    if out_of_time:
      elapsed = time.monotonic() - self.process_start
      return f'time_limit={c.time_limit:g} s passed ({elapsed:.1f} s since the process started)'
    return None

  def stop_here(self, val_loss: float, reason: str) -> None:
    """Ends the run at this evaluation, as at its end: the state saved, with its val loss."""
    if not self.saved():
      self.log.print(f'saving checkpoint to {self.config.out_dir}')
      self.save(val_loss)
    self.log.last_word(f'{reason}: stopped at iteration {self.state.iter_num}, saved in {self.config.out_dir}')

  def stop_flag(self) -> dict[str, bool]:
    """The train step's `stop` argument, for a step that carries it across processes."""
    return {'stop': bool(self.stop.received)} if isinstance(self.train_step, step.ShardedTrainStep) else {}

  def estimate_loss(self) -> dict[str, float] | None:
    """The mean loss of eval_iters batches of each split, read a few batches
    a call, so that a stop ends it at once: then None. On one device the
    splits are evaluated at once, each in a thread of its own: XLA:CPU runs
    one evaluation's small programs on about one core, and each program runs
    on the thread that calls it (an evaluation of the seed recipe takes ~260
    ms instead of ~320, docs/performance.md). Across devices, every process
    must launch its programs in one order: there the splits take turns."""
    c = self.config
    drawn_at = 0 if c.eval_fixed else self.state.iter_num  # eval_fixed: the same batches at every evaluation

    def split_loss(batches: parallel.Batches) -> float | None:
      xs, ys = batches(drawn_at, c.eval_iters)
      total = 0.0
      for first, skip in step.eval_calls(c.eval_iters, self.eval_batches_per_call):
        if self.stop.requested():
          return None
        for loss in self.eval_losses(self.state.params, xs, ys, first).tolist()[skip:]:
          total += loss
      return total / c.eval_iters

    names = [name for name in self.eval_batches if not (name == 'val' and self.full_val)]  # val: evaluate_full_val
    splits = [self.eval_batches[name] for name in names]
    if self.one_device and len(splits) > 1:
      other = self.eval_thread.submit(split_loss, splits[1])
      results = [split_loss(splits[0]), other.result()]
    else:
      results = [split_loss(batches) for batches in splits]
    return None if None in results else dict(zip(names, results))

  def evaluate(self) -> tuple[dict[str, float], float] | None:
    """The losses of an evaluation point, and the seconds the whole val
    split took (full_val_context: its loss is then the val loss; else 0);
    None when a stop ended the evaluation."""
    losses = self.estimate_loss()
    if losses is None:
      return None
    if not self.full_val:
      return losses, 0.0
    t0 = time.time()
    losses['val'] = self.full_val(self.state.params, stop=self.stop.requested)  # asked between its program calls
    return None if losses['val'] is None else (losses, time.time() - t0)

  def saved(self) -> bool:
    """Whether a checkpoint of this run holds the state before iteration
    iter_num (the one resumed from, or one just saved)."""
    return self.state.iter_num in self.checkpoints.steps() and self.state.iter_num not in self.superseded

  def steps_named(self) -> str:
    return f'step{"s" if len(self.superseded) > 1 else ""} {", ".join(map(str, self.superseded))}'

  def save(self, val_loss: float) -> None:
    """A checkpoint of the state before iteration iter_num (every process takes part)."""
    if self.superseded:
      self.checkpoints.delete(self.superseded)
      self.log.print(f'deleted the checkpoints this run replaces in {self.config.out_dir} ({self.steps_named()})')
      self.superseded = []
    state = self.state
    self.checkpoints.save(state.iter_num, state.params, state.opt_state, {
        'iter_num': state.iter_num, 'val_loss': val_loss, 'best_val_loss': state.best_val_loss,
        'model_args': dataclasses.asdict(self.model_config), 'config': self.config.to_dict(), 'vocab': self.vocab})

  def save_final(self) -> None:
    # the iterations since the last evaluation (all of them, when eval_interval
    # exceeds max_iters) are kept, and a resume continues where this run ended
    if not self.saved():
      self.save(math.inf)  # no val loss for this state: inf keeps it out of the running for best
      self.log.print(f'saving checkpoint to {self.config.out_dir} (the final state, before iteration '
                     f'{self.state.iter_num})')

  def save_on_stop(self) -> None:
    if not self.saved():
      self.save(math.inf)
    self.log.last_word(f'{self.stop.reason()} at iteration {self.state.iter_num}: saved a checkpoint to '
                       f'{self.config.out_dir}; continue with --config.init_from=resume')


def keep_records_before(path: pathlib.Path, iter_num: int) -> None:
  """metrics.jsonl as it was up to iteration iter_num, where a run resumes:
  the records from there on are of iterations it runs again (after a crash
  past its last checkpoint) or of a branch it does not continue (resumed
  from the best checkpoint). Replaced whole, so that a kill leaves one or
  the other; an unfinished last line goes too."""
  if not path.exists():
    return
  lines, kept = path.read_text().splitlines(keepends=True), []
  for line in lines:
    with contextlib.suppress(ValueError, TypeError, KeyError):  # an unfinished line, or not a record
      if line.endswith('\n') and json.loads(line)['iter'] < iter_num:
        kept.append(line)
  if kept == lines:  # the usual resume, after a stop that saved: the folder is left as it was
    return
  with files.replacing(path) as [rewritten]:
    rewritten.write_text(''.join(kept))


class TrainLogger:
  """What a run reports of its steps and evaluations: nanoGPT's log lines,
  with their timing and MFU; out_dir/metrics.jsonl (one JSON object a line;
  a resumed run appends to the records before its first iteration); wandb,
  with nanoGPT's keys; the progress bar's figures. Reading each step's
  loss, it also stops the run at a non-finite one, before anything is
  saved."""

  def __init__(self, config: ml_collections.ConfigDict, model_config: GPTConfig, num_params: int,
               tokens_per_iter: int, first_iter: int, log: Log, wandb, bar: TrainingProgress):
    self.config, self.model_config, self.num_params, self.tokens_per_iter = config, model_config, num_params, \
        tokens_per_iter
    self.log, self.wandb, self.bar = log, wandb, bar
    self.learning_rate = jax.jit(lr_schedule(config))  # for the log: eager, its ops would compile one by one
    self.metrics_file = None
    self.first_iter, self.running_mfu = first_iter, -1.0
    self.last_finite: tuple[int, float] | None = None  # (iteration, loss) of the last step with a finite loss
    self.restart_clock(first_iter)

  def __enter__(self) -> 'TrainLogger':
    with contextlib.ExitStack() as stack:  # all closed again if one fails to open
      if self.log.main_process:
        self.metrics_file = stack.enter_context(self.open_metrics_file())
      if self.wandb:
        c = self.config
        self.wandb.init(project=c.wandb_project, name=c.wandb_run_name, config=c.to_dict())
        stack.callback(self.wandb.finish)
      self.close = stack.pop_all().close
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()

  def open_metrics_file(self) -> TextIO:
    """out_dir/metrics.jsonl, opened before the first step: an out_dir that
    cannot be written (read-only) stops the run here, before it trains."""
    path = pathlib.Path(self.config.out_dir).absolute() / 'metrics.jsonl'
    try:
      if self.config.init_from == 'resume' and not self.config.eval_only:
        keep_records_before(path, self.first_iter)
      return path.open('a' if self.config.init_from == 'resume' else 'w')
    except OSError as e:
      raise JaxGPTError(f'cannot write {path.name} in out_dir {path.parent} ({e.strerror}): make that folder '
                        'writable, or pass another --config.out_dir') from None

  def restart_clock(self, iter_num: int) -> None:
    """Times the iterations from here on: after iter_num - 1."""
    self.t0, self.last_timed = time.time(), iter_num - 1
    self.last_finish = self.t0  # the bar's tokens/s of the next step leave the evaluation out too

  def record(self, **fields) -> None:
    if self.metrics_file:
      self.metrics_file.write(json.dumps(fields) + '\n')
      self.metrics_file.flush()

  def evaluation(self, iter_num: int, losses: dict[str, float], full_val_seconds: float) -> None:
    """full_val_seconds: the whole val split's evaluation's (full_val_context), shown on its line."""
    context = self.config.full_val_context
    full = f' (the whole split, windows of {context}, {full_val_seconds:.2f} s)' if context else ''
    self.log.print(f'step {iter_num}: train loss {losses["train"]:.4f}, val loss {losses["val"]:.4f}{full}')
    self.record(iter=iter_num, train_loss=losses['train'], val_loss=losses['val'],
                **({'full_val_s': full_val_seconds} if context else {}))
    if self.wandb:  # the keys nanoGPT logs
      self.wandb.log({'iter': iter_num, 'train/loss': losses['train'], 'val/loss': losses['val'],
                      'lr': float(self.learning_rate(iter_num)), 'mfu': self.running_mfu * 100})

  def step(self, done_iter: int, metrics: StepMetrics) -> None:
    """Reads a step's loss (waiting for the step), and prints nanoGPT's line when it is due."""
    lossf = float(metrics.loss)
    self.stop_if_not_finite(done_iter, lossf)
    if self.bar.enabled:  # the lr is a jax computation: not worth it per step for nobody
      now = time.time()
      self.bar.update(done_iter, lossf, float(self.learning_rate(done_iter)),
                      self.tokens_per_iter / max(now - self.last_finish, 1e-9))
      self.last_finish = now
    if done_iter % self.config.log_interval:
      return
    t1 = time.time()
    dt = (t1 - self.t0) / (done_iter - self.last_timed)  # mean over the iterations since the last line
    self.t0, self.last_timed = t1, done_iter
    if done_iter - self.first_iter >= 5:  # let the training loop settle a bit
      mfu = estimate_mfu(self.model_config, self.num_params, self.tokens_per_iter, dt)
      self.running_mfu = mfu if self.running_mfu == -1.0 else 0.9 * self.running_mfu + 0.1 * mfu
    self.log.print(f'iter {done_iter}: loss {lossf:.4f}, time {dt * 1000:.2f}ms, mfu {self.running_mfu * 100:.2f}%')
    self.record(iter=done_iter, loss=lossf, lr=float(self.learning_rate(done_iter)), ms=dt * 1000,
                tokens_per_s=self.tokens_per_iter / dt, mfu=self.running_mfu if self.running_mfu >= 0 else None)

  def stop_if_not_finite(self, done_iter: int, lossf: float) -> None:
    if not math.isfinite(lossf):
      last = (f'the last finite loss was {self.last_finite[1]:.4f} at iteration {self.last_finite[0]}'
              if self.last_finite else 'no iteration had a finite loss')
      raise JaxGPTError(f'loss is {lossf} at iteration {done_iter} ({last}); stopped, the checkpoints in '
                        f'{self.config.out_dir} are as they were: lower --config.learning_rate or raise '
                        '--config.warmup_iters')
    self.last_finite = (done_iter, lossf)
