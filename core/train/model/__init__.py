"""The model side of the trainer: loading, methods (LoRA/LyCORIS/full/TI), text, init from a LoRA, the optimizer, the tiny builder."""
