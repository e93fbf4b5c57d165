"""Sample from a trained model, as nanoGPT's sample.py.

  python sample.py --out_dir=out-shakespeare-char --start="ROMEO:" --num_samples=3
"""

import signal
import sys

if __name__ == '__main__':
  # Ctrl-C or SIGTERM while jax loads is held for sample.main's handler: one line, exit 130
  signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
  from jaxgpt import sample
  sys.exit(sample.main(sys.argv))
