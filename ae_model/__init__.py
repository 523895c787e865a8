"""aetrain's model library: darknet cfgs as PyTorch networks, Assisted Excitation, training.

A plain PyTorch library: it imports no web, queue or database code. Submodules import torch;
this package file does not, so ``import ae_model`` stays cheap for the CLI.
"""

__version__ = "0.1.0"
