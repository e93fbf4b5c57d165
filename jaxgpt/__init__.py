"""jaxgpt: nanoGPT in JAX/Flax, for the CPU.

Importing it changes nothing in the process. The command-line entry points
that run jax (train.py, sample.py, python -m jaxgpt.*) first run
`jaxgpt.runtime.setup()`: glibc's malloc settings, programs run inline and
jax's compilation cache, measured to make training fast here. Training from a notebook, call it yourself before
the first jax array.
"""
