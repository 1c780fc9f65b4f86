"""hvsim's fuzz targets and their runner (`make fuzz`): see docs/fuzzing.md."""
