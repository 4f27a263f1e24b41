"""The channel between device and cloud: the Open Inference Protocol stubs, tensor codecs, TLS."""
