"""The device runtime: runs a plan's head locally and talks to the cloud endpoint.

Kept light on purpose: numpy, onnxruntime, grpcio, protobuf, zstandard; never onnx,
networkx, matplotlib, the partitioner or the cloud code.
"""
