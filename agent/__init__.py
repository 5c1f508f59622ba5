"""The backhaul agent: receives metrics on the device, buffers them durably, uploads when it can."""
