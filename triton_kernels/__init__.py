"""Triton kernels of fastloss, installed as ``fastloss.triton_kernels`` (never as a
top-level ``triton_kernels``: that name belongs to a PyPI package and to Triton's own
repository).  Modules are imported lazily by fastloss/_backend.py; each registers its
backend there."""
