"""The sdtui command line."""
