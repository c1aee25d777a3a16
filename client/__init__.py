"""gRPC client library for the speech2image-triton server."""

from s2i.client.errors import ClientError, InvalidRequestError, ServerUnavailableError
from s2i.client.grpc_client import Client, Translation

__all__ = ["Client", "ClientError", "InvalidRequestError", "ServerUnavailableError", "Translation"]
