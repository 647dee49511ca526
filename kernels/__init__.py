"""Triton kernels, installed as ``same_fast.kernels``.

Import these only through ``same_fast.ops``, which picks a kernel on CUDA and a torch path
elsewhere. To run kernels on CPU tensors, set ``TRITON_INTERPRET=1`` before importing them.
"""
