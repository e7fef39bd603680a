"""Command-line flags shared by the peer targets."""

from __future__ import annotations

import argparse


def parse(description: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--secret", default=None, help="first-message secret (default: no auth)")
    p.add_argument("--streaming", action="store_true")
    p.add_argument("--ping-interval", type=float, default=20.0)
    return p.parse_args()


def ready(scheme: str, port: int) -> None:
    print(f"listening on {scheme}://127.0.0.1:{port}", flush=True)
