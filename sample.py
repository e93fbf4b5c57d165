"""Sample from a trained model, as nanoGPT's sample.py.

  python sample.py --out_dir=out-shakespeare-char --start="ROMEO:" --num_samples=3
  python sample.py config/train_shakespeare_char.py --start="ROMEO:"      # the out_dir that training config wrote
  python sample.py --config=configs/shakespeare_char.py --temperature=0   # train.py's spelling; greedy
"""

import signal
import sys

if __name__ == '__main__':
  # Ctrl-C, SIGTERM or SIGHUP while jax loads is held for sample.main's handler: one line, exit 130
  signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
  from jaxgpt import sample
  sys.exit(sample.main(sys.argv))
