"""The data side of the trainer: items, this rank's batches, the shared latent and text-output caches, class images."""
