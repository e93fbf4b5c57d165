"""The best model found for 60 seconds of a 2-core CPU, the whole command
(start-up, compiling, the evaluation and the save included): the speedrun's
recipe (configs/shakespeare_char_speedrun.py) run five times longer, with
no target to stop at:

  python train.py --config=configs/shakespeare_char_60s.py

The schedule is sized to end before 60 s where a step takes ~38 ms (the
2-core AMD EPYC of docs/performance.md); on a slower machine time_limit
ends the run in time, at a higher loss (its learning rate not yet decayed).
"""

import pathlib

from jaxgpt.config import load_config_file


def get_config():
  config = load_config_file(str(pathlib.Path(__file__).with_name('shakespeare_char_speedrun.py')))
  config.out_dir = 'out-shakespeare-char-60s'
  config.wandb_run_name = 'budget-60s'
  config.max_iters = config.lr_decay_iters = 1400
  config.eval_interval = config.eval_start = 1400  # one evaluation, at the end
  config.target_val_loss = 0.0  # no target: the loss the budget reaches
  config.time_limit = 57.0  # the evaluation, the save and the exit take the rest
  return config
