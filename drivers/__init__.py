"""VSP/VSC driver pairs and the plugin registry (entry-point group `hvsim.drivers`)."""
