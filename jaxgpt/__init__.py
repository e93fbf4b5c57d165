"""jaxgpt: nanoGPT in JAX/Flax, for the CPU."""

from jaxgpt import runtime

runtime.setup()  # before jax starts its CPU backend
