"""The client's command line: the ``s2i`` subcommands that only talk to a running server.

``s2i generate|translate|emotion|imagine`` (the full package) and ``s2i-client`` (the light
``speech2image-triton-client`` distribution, which has no torch) are both built from here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_URL = "localhost:8001"


def cmd_translate(args: argparse.Namespace) -> int:
    """Send a speech file to the ``whisper`` model and print the text."""
    from s2i.client import Client, ClientError

    with Client(args.url, timeout_s=args.timeout_s) as client:
        try:
            result = client.translate(
                args.audio, task=args.task, language=args.language, max_new_tokens=args.max_new_tokens
            )
        except ClientError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    print(result.text)
    return 0


def cmd_imagine(args: argparse.Namespace) -> int:
    """Send a prompt to the ``diffusion`` model and write the image as PNG."""
    from PIL import Image

    from s2i.client import Client, ClientError

    with Client(args.url, timeout_s=args.timeout_s) as client:
        try:
            result = client.text_to_image(
                args.prompt,
                negative_prompt=args.negative_prompt,
                num_inference_steps=args.steps,
                guidance_scale=args.guidance_scale,
                height=args.height,
                width=args.width,
                seed=args.seed,
                scheduler=args.scheduler,
            )
        except ClientError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    args.output.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(result.image).save(args.output)
    print(f"{args.output} ({result.image.shape[1]}x{result.image.shape[0]}, seed {result.seed})")
    return 0


def cmd_emotion(args: argparse.Namespace) -> int:
    """Send a speech file to the ``emotion_classifier`` model and print the emotion and probabilities."""
    from s2i.client import Client, ClientError

    with Client(args.url, timeout_s=args.timeout_s) as client:
        try:
            result = client.classify_emotion(args.audio)
        except ClientError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    print(result.label)
    for label, probability in sorted(result.scores.items(), key=lambda item: -item[1]):
        print(f"  {label:<10} {probability:.4f}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    """Send a speech file through the ``speech_to_image`` ensemble; write the PNG, print texts and timings."""
    from s2i.client import Client, ClientError

    options = {
        "seed": args.seed,
        "num_inference_steps": args.steps,
        "guidance_scale": args.guidance_scale,
        "height": args.height,
        "width": args.width,
        "scheduler": args.scheduler,
        "emotion_override": args.emotion,
        "style_template": args.style,
        "max_new_tokens": args.max_new_tokens,
    }
    with Client(args.url, timeout_s=args.timeout_s) as client:
        try:
            result = client.speech_to_image(
                args.audio,
                return_transcript=args.transcript,
                **{key: value for key, value in options.items() if value is not None},
            )
        except ClientError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_bytes(result.png)
    if args.transcript:
        print(f"transcript: {result.transcript}")
    print(f"translation: {result.text}")
    detected = result.detected_emotion
    print(f"emotion: {result.emotion} (detected {detected}, p={result.emotion_scores[detected]:.2f})")
    print(f"prompt: {result.prompt}")
    print("timings: " + ", ".join(f"{step} {ms:.0f} ms" for step, ms in result.timings_ms.items()))
    print(f"image: {args.output} (seed {result.seed})")
    return 0


def add_client_commands(commands) -> None:
    """Add ``generate``, ``translate``, ``imagine`` and ``emotion`` to an ``add_subparsers()`` object."""
    translate = commands.add_parser("translate", help="Hindi speech file -> English text, through the server")
    translate.add_argument("audio", type=Path, help="WAV/FLAC/OGG file")
    translate.add_argument("--url", default=DEFAULT_URL, help="gRPC host:port")
    translate.add_argument("--task", choices=("translate", "transcribe"), default="translate")
    translate.add_argument("--language", default="hi")
    translate.add_argument("--max-new-tokens", type=int)
    translate.add_argument("--timeout-s", type=float, default=120.0)
    translate.set_defaults(handler=cmd_translate)

    imagine = commands.add_parser("imagine", help="English prompt -> PNG image, through the server")
    imagine.add_argument("prompt")
    imagine.add_argument("-o", "--output", type=Path, required=True, help="PNG file to write")
    imagine.add_argument("--url", default=DEFAULT_URL, help="gRPC host:port")
    imagine.add_argument("--negative-prompt")
    imagine.add_argument("--steps", type=int, help="denoising steps (server default: 50)")
    imagine.add_argument("--guidance-scale", type=float, help="classifier-free guidance (server default: 7.5)")
    imagine.add_argument("--height", type=int, help="pixels (default: the checkpoint's size)")
    imagine.add_argument("--width", type=int, help="pixels (default: the checkpoint's size)")
    imagine.add_argument("--seed", type=int, help="seed of the initial noise (server picks one if left out)")
    imagine.add_argument("--scheduler", help="ddim, euler, euler_ancestral, dpmsolver++ or pndm")
    imagine.add_argument("--timeout-s", type=float, default=300.0)
    imagine.set_defaults(handler=cmd_imagine)

    emotion = commands.add_parser("emotion", help="speech file -> emotion and probabilities, through the server")
    emotion.add_argument("audio", type=Path, help="WAV/FLAC/OGG file")
    emotion.add_argument("--url", default=DEFAULT_URL, help="gRPC host:port")
    emotion.add_argument("--timeout-s", type=float, default=60.0)
    emotion.set_defaults(handler=cmd_emotion)

    generate = commands.add_parser("generate", help="speech file -> emotion-aware image, through the server")
    generate.add_argument("audio", type=Path, help="WAV/FLAC/OGG file")
    generate.add_argument("-o", "--output", type=Path, required=True, help="PNG file to write")
    generate.add_argument("--url", default=DEFAULT_URL, help="gRPC host:port")
    generate.add_argument("--seed", type=int)
    generate.add_argument("--steps", type=int, help="denoising steps")
    generate.add_argument("--guidance-scale", type=float)
    generate.add_argument("--height", type=int)
    generate.add_argument("--width", type=int)
    generate.add_argument("--scheduler", help="ddim, euler, euler_ancestral, dpmsolver++ or pndm")
    generate.add_argument("--emotion", help="use this emotion instead of the detected one")
    generate.add_argument("--style", help="style template (see styles.toml)")
    generate.add_argument("--transcript", action="store_true", help="also print the Hindi transcript")
    generate.add_argument("--max-new-tokens", type=int)
    generate.add_argument("--timeout-s", type=float, default=600.0)
    generate.set_defaults(handler=cmd_generate)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``s2i-client``."""
    parser = argparse.ArgumentParser(prog="s2i-client", description="Talk to a speech2image-triton server.")
    add_client_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
