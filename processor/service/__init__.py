"""The gRPC services: thin adapters from loyalty.v1 messages to the transaction pipeline."""
