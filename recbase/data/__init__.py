"""Data stage: readers of public formats, the demo world, the two tables, shards and the training loader."""
