"""Client library for the speech2image-triton server: sync and asyncio gRPC clients, typed results."""

from s2i.client.aio_client import AsyncClient
from s2i.client.errors import ClientError, InvalidRequestError, RestrictedApiError, ServerUnavailableError
from s2i.client.grpc_client import Client
from s2i.client.results import EmotionResult, GeneratedImage, SpeechToImageResult, StreamEvent, Translation
from s2i.client.transport import CallOptions, RetryPolicy

__all__ = [
    "AsyncClient",
    "CallOptions",
    "Client",
    "ClientError",
    "EmotionResult",
    "GeneratedImage",
    "InvalidRequestError",
    "RestrictedApiError",
    "RetryPolicy",
    "ServerUnavailableError",
    "SpeechToImageResult",
    "StreamEvent",
    "Translation",
]
