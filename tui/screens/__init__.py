"""The screens: home, the new-run wizard, the run dashboard, and small modals."""
