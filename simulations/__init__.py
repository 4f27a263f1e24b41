"""Fleet simulator (filled in by the simulator issue)."""
