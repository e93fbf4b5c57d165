"""Checkpoints in out_dir, through orbax.

Each checkpoint is a step folder holding `state` (params and optimizer state,
orbax's standard pytree format) and `meta` (JSON: iter_num, best_val_loss, the
model config and the run config). Orbax writes a step into a temporary folder
and renames it when complete, so the latest step is never half written.
"""

import pathlib
from typing import Any

import orbax.checkpoint as ocp

from jaxgpt.config import JaxGPTError


class Checkpoints:
  """Saves to out_dir, keeping the most recent checkpoint only, as nanoGPT's ckpt.pt."""

  def __init__(self, out_dir: str):
    directory = pathlib.Path(out_dir).absolute()
    try:
      directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
      raise JaxGPTError(f'cannot create out_dir {directory} ({e.strerror}): pass a writable '
                        '--config.out_dir') from None
    self.manager = ocp.CheckpointManager(
        directory, options=ocp.CheckpointManagerOptions(max_to_keep=1))

  def save(self, step: int, params, opt_state, meta: dict[str, Any]) -> None:
    """Starts writing; the arrays are copied off the device before this returns,
    so the caller may donate them to the next step."""
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave({'params': params, 'opt_state': opt_state}),
        meta=ocp.args.JsonSave(meta)))

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
