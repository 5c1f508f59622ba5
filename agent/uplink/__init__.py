"""Getting buffered data off the device: batch sealing, upload, backoff."""
