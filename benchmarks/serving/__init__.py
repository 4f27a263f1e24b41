"""Building blocks of benchmarks/serving.py: models, servers, load generators, probes.

    models.py     the served models (small CNN tail, wide MLP, 8-layer MLP tails, 4 MiB sink)
    repo.py       Triton-layout repositories with config.pbtxt (edgecut and Triton alike)
    processes.py  pinned processes (server CPUs, client CPUs): endpoint, onnxruntime alone
    loadgen.py    closed- and open-loop load from processes pinned to the client CPUs
    triton.py     the Triton server binary from the nvidia-pytriton wheel, with a Python backend
    memory.py     RSS of K tails against one full model
    channel.py    ModelInfer of 4 MiB against a bare grpcio bytes call over the same TLS
"""
