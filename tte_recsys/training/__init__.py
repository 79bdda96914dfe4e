"""Training the MTMH model: batches, sharding plan, optimizers, loop, checkpoints and export."""
