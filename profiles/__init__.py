"""Device, network, cloud and fleet profiles (filled in by the profiling issue)."""
