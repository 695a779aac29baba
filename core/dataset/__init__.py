"""Read-only dataset scanning (kohya folder convention) and aspect-ratio buckets."""
