"""Sample from a trained model, as nanoGPT's sample.py.

  python sample.py --out_dir=out-shakespeare-char --start="ROMEO:" --num_samples=3
"""

import signal
import sys

if __name__ == '__main__':
  signal.signal(signal.SIGTERM, signal.default_int_handler)  # as Ctrl-C, while jax loads
  try:
    from jaxgpt import sample  # a second or two
  except KeyboardInterrupt:
    print('stopped before sampling', file=sys.stderr)
    sys.exit(130)
  sys.exit(sample.main(sys.argv))
