"""What an assistant sees: two stateless tools (classify an image; a small plain-vs-residual run), documented with
their units, and none of the UI's stateful endpoints; the app also starts without gradio's MCP extra."""

import base64
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ["classify_image", "plain_vs_residual"]


def test_the_api_offers_only_the_stateless_tools(app_url):
    assert sorted(Client(app_url, verbose=False).view_api(return_format="dict")["named_endpoints"]) == [
        f"/{t}" for t in TOOLS
    ]


def test_the_mcp_server_lists_the_two_tools_with_their_units(app_url):
    pytest.importorskip("mcp")  # gradio's optional extra; requirements.txt installs it
    schema = json.loads(urllib.request.urlopen(app_url + "gradio_api/mcp/schema", timeout=30).read())
    assert sorted(tool["name"] for tool in schema) == TOOLS
    plain = next(tool for tool in schema if tool["name"] == "plain_vs_residual")
    assert "8, 14, 20, 32, 44 or 56" in plain["inputSchema"]["properties"]["layers"]["description"]


def test_classify_an_image_and_refuse_what_is_not_one(app_url):
    client = Client(app_url, verbose=False)
    star = base64.b64encode((ROOT / "assets" / "examples" / "star.png").read_bytes()).decode()
    top = client.predict(star, api_name="/classify_image")
    assert max(top, key=top.get) == "star" and top["star"] > 0.9 and len(top) == 5
    with pytest.raises(AppError, match="base64"):
        client.predict("not base64 at all!", api_name="/classify_image")
    with pytest.raises(AppError, match="not an image"):
        client.predict(base64.b64encode(b"hello").decode(), api_name="/classify_image")


def test_a_small_plain_vs_residual_run_returns_its_numbers(app_url):
    client = Client(app_url, verbose=False)
    out = client.predict(8, 10, api_name="/plain_vs_residual")
    assert out["layers"] == 8 and out["steps"] == 10
    for net in ("residual", "plain"):
        assert 0 < out[net]["loss"] < 5 and 0 <= out[net]["accuracy"] <= 1
    for layers, steps in [(9, 10), (20.5, 10), ("abc", 10), (None, 10), (8, True)]:  # said, not run rounded
        with pytest.raises(AppError, match="6n\\+2"):
            client.predict(layers, steps, api_name="/plain_vs_residual")


def test_the_app_starts_without_the_mcp_extra():
    code = (
        "import sys; sys.modules['mcp'] = None\n"  # as if gradio[mcp] were not installed
        "import app\n"
        "from tests.conftest import free_port\n"
        "demo = app.build_demo(); port = free_port()\n"
        "app.launch(demo, server_name='127.0.0.1', server_port=port, prevent_thread_lock=True, quiet=True)\n"
        "import json, urllib.request\n"
        "print(json.loads(urllib.request.urlopen(f'http://127.0.0.1:{port}/config').read())['mcp_server'])\n"
        "demo.close()"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert "False" in out.stdout.split(), out.stdout[-300:] + out.stderr[-800:]  # served, with no MCP server
