"""Reading the Ray dashboard's HTTP API (Ray 2.60 protects /api/* with a token)."""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path


def _token() -> str | None:
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    return path.read_text().strip() if path.is_file() else None


def live_actors(dashboard_url: str, timeout_s: float = 10.0) -> dict[str, str]:
    """name -> state of the named actors the dashboard reports."""
    url = f"{dashboard_url.rstrip('/')}/api/v0/actors?limit=1000"
    token = _token()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(
        urllib.request.Request(url, headers=headers), timeout=timeout_s
    ) as r:
        rows = json.loads(r.read())["data"]["result"]["result"]
    return {row["name"]: row["state"] for row in rows if row.get("name")}
