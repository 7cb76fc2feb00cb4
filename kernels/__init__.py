"""Compute kernels of neuroprint: one module per op, each with a plain torch reference.

The torch references are the CPU path and the oracle the Triton kernels are tested against.
"""
