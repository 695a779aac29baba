"""The Textual app. Never imports torch, diffusers, transformers or peft."""
