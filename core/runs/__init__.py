"""The run folder: its paths, states, locks and listing, the runs folder, defensive readers, checkpoint discovery."""
