"""Compute kernels of neuroprint: one module per op, each with a plain reference.

The torch references are the CPU path and the oracle the Triton kernels are tested against. The decode
threads' CPU kernels are C extensions (`pixel_stats`: the quality statistics' pass, numpy reference;
`gray_lanczos`: the hashes' grayscale LANCZOS thumbnails, Pillow itself as the reference), each optional at
install and replaced by its reference, with a logged line, where it was not built.
"""
