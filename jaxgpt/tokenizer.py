"""Text <-> token ids: a character data set's vocabulary, or GPT-2's BPE.

Both tokenizers have encode(text) -> ids and decode(ids) -> text. GPT-2's
byte-level BPE runs in tiktoken (nanoGPT's choice), built from the
vocab.json of a GPT-2 folder in Hugging Face's layout (see jaxgpt.gpt2), so
it works offline from local files.
"""

import json
import pathlib

from jaxgpt.errors import JaxGPTError, optional_import

END_OF_TEXT = '<|endoftext|>'


class CharTokenizer:
  """One token per character, ids as in the data set's meta.json."""

  def __init__(self, vocab: list[str]):
    self.vocab = vocab
    self.stoi = {ch: i for i, ch in enumerate(vocab)}

  def encode(self, text: str) -> list[int]:
    unknown = sorted(set(text) - set(self.stoi))
    if unknown:
      raise JaxGPTError(f'the prompt has characters outside the model\'s vocabulary: '
                        f'{"".join(unknown)!r}; use only characters of the training text')
    return [self.stoi[ch] for ch in text]

  def decode(self, ids) -> str:
    return ''.join(self.vocab[i] for i in ids)


def _byte_of_symbol() -> dict[str, int]:
  """GPT-2's vocab.json spells each byte as one printable symbol: the byte's
  own character when printable, else chr(256 + n) for the n-th other byte."""
  printable = [b for b in range(256) if chr(b).isprintable() and chr(b) != ' ']
  others = [b for b in range(256) if b not in printable]
  return {chr(b): b for b in printable} | {chr(256 + n): b for n, b in enumerate(others)}


class GPT2Tokenizer:
  """GPT-2's BPE. Its merge ranks are the token ids of vocab.json (tiktoken
  checks exactly that when it reads OpenAI's files), so vocab.json is all it needs."""

  def __init__(self, folder: pathlib.Path):
    tiktoken = optional_import('tiktoken', 'reading GPT-2 tokens', 'gpt2')
    from tiktoken_ext.openai_public import r50k_pat_str  # GPT-2's pre-tokenizing regex, shipped with tiktoken
    path = folder / 'vocab.json'
    try:
      vocab = json.loads(path.read_text(encoding='utf-8'))
      byte_of = _byte_of_symbol()
      ranks = {bytes(byte_of[s] for s in token): i for token, i in vocab.items() if token != END_OF_TEXT}
      self.encoding = tiktoken.Encoding('gpt2', pat_str=r50k_pat_str, mergeable_ranks=ranks,
                                        special_tokens={END_OF_TEXT: vocab[END_OF_TEXT]})
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise JaxGPTError(f'{path} is not GPT-2\'s vocabulary ({type(e).__name__}: {e})') from None

  def encode(self, text: str) -> list[int]:
    return self.encoding.encode(text, allowed_special={END_OF_TEXT})  # as nanoGPT's sample.py

  def encode_ordinary(self, text: str) -> list[int]:
    """Without special tokens: `<|endoftext|>` in a data set is plain text."""
    return self.encoding.encode_ordinary(text)

  def decode(self, ids) -> str:
    # a model's vocab_size may be padded past the tokenizer's (50304 > 50257):
    # those ids are never targets in training, so only an untrained model draws them
    return self.encoding.decode([i for i in ids if i < self.encoding.n_vocab])
