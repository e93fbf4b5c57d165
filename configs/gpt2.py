"""GPT-2 (124M) on OpenWebText: nanoGPT's train.py defaults, unchanged.

Prepare the data with nanoGPT's data/openwebtext/prepare.py (jaxgpt reads the
same train.bin / val.bin), then:

  python train.py --config=configs/gpt2.py
"""

from jaxgpt.config import base_config


def get_config():
  return base_config()
