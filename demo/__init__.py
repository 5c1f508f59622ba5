"""Demo programs for backhaul's README demo (a fake inference server)."""
