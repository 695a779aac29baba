"""What the trainer writes: output files, sd-scripts metadata, samples, resumable training state."""
