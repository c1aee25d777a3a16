"""Triton Python-backend model ``speech_to_image_stream`` (decoupled): the pipeline, streamed.

Messages, in order: ``text`` (translation, emotion and prompt, as soon as they are
known), ``preview`` every ``preview_every`` denoising steps (a quarter-size image),
then ``image``; then the empty final response. The steps are the same models the
``speech_to_image`` ensemble composes, called through BLS; the denoising loop is
:class:`s2i.stages.diffusion.sampling.DiffusionRunner` with a step callback.
"""

import contextlib
import json
import time
from pathlib import Path

import triton_python_backend_utils as pb_utils

from s2i import names
from s2i.audio import RequestCancelledError
from s2i.model_repository.observability import RequestObserver
from s2i.model_repository.triton_io import error_response, make_stage_runner, request_inputs, scalar
from s2i.pipeline.dag import PIPELINE, Pipeline
from s2i.pipeline.streaming import StreamRequest, run_stream


class TritonPythonModel:
    """One request at a time per instance; several instances serve concurrent streams."""

    def initialize(self, args):
        """Load the diffusion runner from the ``diffusion`` model's assets copy, and the DAG to follow."""
        from s2i.stages.diffusion.sampling import DiffusionRunner

        # The DAG the ensemble beside it was written from (its config's `pipeline` parameter).
        parameters = json.loads(args["model_config"]).get("parameters", {})
        written = parameters.get(names.PIPELINE_PARAMETER, {}).get("string_value")
        self.pipeline = Pipeline.from_json(written) if written else PIPELINE

        self.run_stage = make_stage_runner(pb_utils)
        assets = Path(args["model_repository"]) / args["model_version"] / "assets"
        self.diffusion = DiffusionRunner(assets, self.run_stage)
        self.observer = RequestObserver(
            pb_utils,
            args["model_name"],
            self.run_stage,
            counters=("denoising_steps", "images", "previews"),
            histograms=("time_to_first_preview",),
        )

    def _parse(self, request) -> StreamRequest:
        """The pipeline inputs the request holds (every input of the config, so every option), and its own."""
        inputs = request_inputs(request)
        preview_every = inputs.pop(names.PREVIEW_EVERY, None)
        return StreamRequest(inputs=inputs, preview_every=int(scalar(preview_every, names.PREVIEW_EVERY, 0)))

    def execute(self, requests):
        """Stream each request's messages; errors end that request's stream with an error response."""
        for request in requests:
            sender = request.get_response_sender()
            started = self.observer.start()
            with self.run_stage.parent(request):
                outcome, counts = self._stream(request, sender, started)
            # One request, one latent: each UNet call of the stream is one denoising step.
            self.observer.count("denoising_steps", self.run_stage.stats().get(names.UNET, {}).get("calls", 0))
            self.observer.finish([request], [outcome], started, counts=[counts])
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None

    def _stream(self, request, sender, started: float) -> tuple[str, dict]:
        """Send the request's messages; return its outcome and the messages sent by kind."""
        counts = {"text": 0, "preview": 0, "image": 0}

        def send(outputs: dict) -> None:
            event = outputs[names.EVENT].reshape(-1)[0].decode("utf-8")
            sender.send(
                pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor(name, value) for name, value in outputs.items()]
                )
            )
            counts[event] = counts.get(event, 0) + 1
            if event == "preview":
                self.observer.count("previews")
                if counts[event] == 1:
                    self.observer.observe("time_to_first_preview", time.perf_counter() - started)
            elif event == "image":
                self.observer.count("images")

        try:
            run_stream(
                self._parse(request),
                self.run_stage,
                self.diffusion,
                send,
                clock=time.perf_counter,
                cancelled=request.is_cancelled,
                pipeline=self.pipeline,
            )
        except RequestCancelledError:
            # The client is gone (gRPC stream cancelled): nobody reads an error; free the instance.
            pb_utils.Logger.log_info("speech_to_image_stream: request cancelled by the client; stopped")
            return "cancelled", counts
        except Exception as error:  # noqa: BLE001 - this request's stream ends with the error
            response = error_response(pb_utils, error)
            # A cancelled stream may refuse responses; the final flag still closes it.
            with contextlib.suppress(Exception):
                sender.send(response)
            return self.observer.outcome_of(response), counts
        return "ok", counts
