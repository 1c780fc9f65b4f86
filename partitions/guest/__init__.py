"""The guest side of a child partition as hvsim models it for synthetic guests."""
