"""spinppo: MPI data-parallel PPO, VPG and A2C in PyTorch, in the style of OpenAI Spinning Up."""

__version__ = "0.1.0"
