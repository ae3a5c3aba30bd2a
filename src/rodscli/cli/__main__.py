"""`python -m rodscli.cli` (as torchrun and `accelerate launch` run it)."""

from rodscli.cli import run

run()
