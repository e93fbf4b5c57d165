"""Train a GPT, as nanoGPT's train.py does.

  python train.py --config=configs/shakespeare_char.py --config.device=cpu
  python train.py configs/shakespeare_char.py --device=cpu --compile=False   # nanoGPT's spelling
"""

import sys

from jaxgpt import cli

if __name__ == '__main__':
  sys.exit(cli.main(sys.argv))
