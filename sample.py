"""Sample from a trained model, as nanoGPT's sample.py.

  python sample.py --out_dir=out-shakespeare-char --start="ROMEO:" --num_samples=3
"""

import sys

from jaxgpt import sample

if __name__ == '__main__':
  sys.exit(sample.main(sys.argv))
