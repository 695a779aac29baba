"""The wizard's steps, one widget each; they read and write a shared WizardState."""
