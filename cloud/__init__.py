"""The cloud inference endpoint: Open Inference Protocol over gRPC with TLS."""
