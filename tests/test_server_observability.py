"""The metrics and tracing flags every server gets from ``tritonserver_args`` (``s2i serve`` and the pods)."""

from __future__ import annotations

import pytest

from s2i.server import DEFAULT_TRACE, ServerOptions, TraceOptions, observability_args, trace_args, tritonserver_args


def test_tritonserver_args_include_observability_args_when_rendered():
    options = ServerOptions("/models", restricted_api_key="key")
    args, expected = tritonserver_args(options), observability_args(options)
    start = args.index(expected[0])

    assert args[start : start + len(expected)] == expected


def test_observability_args_switch_on_latency_summaries_when_rendered():
    args = observability_args(ServerOptions("/models"))

    assert "--metrics-config=summary_latencies=true" in args
    (quantiles,) = [arg for arg in args if arg.startswith("--metrics-config=summary_quantiles=")]
    assert {part.split(":")[0] for part in quantiles.split("=", 2)[2].split(",")} >= {"0.5", "0.95", "0.99"}


def test_trace_args_default_to_opentelemetry_switched_off_when_no_trace_is_given():
    args = observability_args(ServerOptions("/models"))

    assert DEFAULT_TRACE.mode == "opentelemetry" and DEFAULT_TRACE.level == "OFF"
    assert args[-4:] == [
        "--trace-config=mode=opentelemetry",
        "--trace-config=level=OFF",
        "--trace-config=rate=1000",
        "--trace-config=count=-1",
    ]


def test_trace_args_name_the_file_and_frequency_when_triton_mode():
    trace = TraceOptions(mode="triton", level="TIMESTAMPS", rate=1, file="/tmp/trace.json", log_frequency=1)

    assert trace_args(trace) == [
        "--trace-config=mode=triton",
        "--trace-config=level=TIMESTAMPS",
        "--trace-config=rate=1",
        "--trace-config=count=-1",
        "--trace-config=triton,file=/tmp/trace.json",
        "--trace-config=triton,log-frequency=1",
    ]


def test_trace_args_pass_the_collector_url_when_given():
    trace = TraceOptions(url="http://collector:4318/v1/traces")

    assert trace_args(trace)[-1] == "--trace-config=opentelemetry,url=http://collector:4318/v1/traces"


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        # TENSORS would write speech and prompts into the traces.
        (dict(level="TENSORS"), "`trace.level`"),
        (dict(mode="jaeger"), "`trace.mode`"),
        (dict(rate=0), "`trace.rate`"),
        (dict(mode="triton"), "`trace.file`"),
    ],
)
def test_trace_options_refuse_naming_the_field_when_invalid(fields, match):
    with pytest.raises(ValueError, match=match):
        TraceOptions(**fields)
