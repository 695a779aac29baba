"""Planning: schedule maths across GPU counts, the recipe picker, throughput and ETA."""
