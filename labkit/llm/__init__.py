"""The model side: the tiny model, devices and maps, decoding by hand, KV-cache sizes, upstream names."""
