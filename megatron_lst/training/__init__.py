"""Training: arguments, distributed set-up, the loop, optimizer, checkpointing, logging."""
