"""Building blocks of benchmarks/serving.py: models, servers, load generators, probes.

    models.py     the served models (small CNN tail, wide MLP, 8-layer MLP tails, 4 MiB sink)
    repo.py       Triton-layout repositories with config.pbtxt (edgecut and Triton alike)
    processes.py  processes pinned to one core: the edgecut endpoint, onnxruntime alone
    loadgen.py    closed- and open-loop load from a process pinned to the other core
    triton.py     the Triton server binary from the nvidia-pytriton wheel, with a Python backend
    memory.py     RSS of K tails against one full model
    channel.py    ModelInfer of 4 MiB against a bare grpcio bytes call over the same TLS
"""
