"""The serving layer: gRPC servers, the lambda merge, the model and its registry."""
