"""``s2i web``: the browser front end — speak Hindi (or upload, or play the sample), watch the image form.

Why a small ASGI app (Starlette + uvicorn + one static page) and not Gradio: this app is
the *public front door* of the pipeline, so what matters most is control over every
byte before it reaches Triton and over the life of each job. With Starlette the upload
is read with a size cap and a deadline, the container is sniffed and converted by a
bounded ffmpeg, jobs are counted per client and overall and refused at once with 429/503,
and the gRPC stream is cancelled the moment the browser disconnects — each a few lines
that tests can reach. Gradio would bring its own queue, upload handling and websocket
protocol to work around, a package of several hundred megabytes, and a front end that
fetches fonts and scripts from CDNs at run time; here the page, script and stylesheet
are three small files served by the app itself (no network at run time, a strict
Content-Security-Policy), usable on a phone and with the keyboard. The page streams
events over Server-Sent Events (``fetch`` reading a ``text/event-stream``), which
passes through ordinary HTTP proxies and ingresses.

The app talks to Triton only through :class:`s2i.client.AsyncClient` and its decoupled
stream (``speech_to_image_stream``), and needs neither torch nor diffusers, so its
image is small and scales apart from the GPU servers.
"""

from __future__ import annotations

from s2i.web.config import WebConfig

__all__ = ["WebConfig", "create_app", "run"]


def create_app(config: WebConfig, stream=None):
    """The ASGI application (see :func:`s2i.web.app.create_app`)."""
    from s2i.web.app import create_app as _create_app

    return _create_app(config, stream)


def run(config: WebConfig, *, forwarded_allow_ips: str | None = None, log_level: str = "info") -> None:
    """Serve the app with uvicorn until interrupted.

    Args:
        config: The app's settings.
        forwarded_allow_ips: Proxies whose ``X-Forwarded-For`` is trusted (uvicorn's option;
            the per-client job limit then counts the forwarded address).
        log_level: uvicorn's log level.

    Each job's JSON line goes to stderr bare (:func:`s2i.web.observability.configure_job_log`).
    """
    import uvicorn

    from s2i.web.observability import configure_job_log

    configure_job_log()
    uvicorn.run(
        create_app(config),
        host=config.host,
        port=config.port,
        log_level=log_level,
        proxy_headers=True,
        forwarded_allow_ips=forwarded_allow_ips,
        # A job streams for a while; keep-alive between requests stays short.
        timeout_keep_alive=5,
        # Upper bound on open connections; the job limiter bounds the work.
        limit_concurrency=256,
    )
