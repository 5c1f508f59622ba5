"""The backhaul collector: receives batches from devices, de-duplicates, stores, serves them back."""
