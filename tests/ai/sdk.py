"""Drives the gateway with the real `openai` package, as a user would.

Usage: python3 sdk.py SCENARIO  (OPENAI_BASE_URL and OPENAI_API_KEY set)
Prints one JSON document with what the SDK returned or raised.
"""

import json
import sys

import openai
from openai import OpenAI

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def counting_client(**kw):
    """A client that counts the HTTP requests it sends (retries included)."""
    sent = []
    hooks = {"request": [lambda r: sent.append(str(r.url))]}
    # Newer SDKs build on httpx2, older ones on httpx; both take event hooks.
    make = getattr(openai, "DefaultHttpx2Client", None) or openai.DefaultHttpxClient
    return OpenAI(http_client=make(event_hooks=hooks), **kw), sent


def error_info(e):
    info = {"class": type(e).__name__, "message": getattr(e, "message", str(e))}
    if isinstance(e, openai.APIStatusError):
        info["status"] = e.status_code
        info["body"] = e.body
        info["headers"] = {k.lower(): v for k, v in e.response.headers.items()}
    elif isinstance(e, openai.APIError):
        info["body"] = e.body
    return info


def collect(stream):
    """Content, tool call fragments, finish reasons and usage of a stream."""
    out = {"content": "", "tool_calls": {}, "finish": [], "usage": None, "chunks": 0, "ids": set()}
    for chunk in stream:
        out["chunks"] += 1
        out["ids"].add(chunk.id)
        if chunk.usage is not None:
            out["usage"] = chunk.usage.model_dump(exclude_none=True)
        for choice in chunk.choices:
            d = choice.delta
            if d.content:
                out["content"] += d.content
            for tc in d.tool_calls or []:
                t = out["tool_calls"].setdefault(str(tc.index), {"id": None, "name": None, "arguments": ""})
                if tc.id:
                    t["id"] = tc.id
                if tc.function and tc.function.name:
                    t["name"] = tc.function.name
                if tc.function and tc.function.arguments:
                    t["arguments"] += tc.function.arguments
            if choice.finish_reason:
                out["finish"].append(choice.finish_reason)
    out["ids"] = len(out["ids"])
    return out


def suite():
    client = OpenAI(max_retries=0)
    r = {}
    chat = client.chat.completions.create(
        model="stub-chat",
        messages=[{"role": "user", "content": "Say hello"}],
        extra_body={"x_custom_field": {"nested": [1, 2]}},
    )
    r["chat"] = chat.model_dump()
    # Fields the SDK does not know survive the trip.
    r["chat_extra"] = (chat.model_extra or {}).get("x_stub_extra")
    r["alias"] = client.chat.completions.create(
        model="stub-latest", messages=[{"role": "user", "content": "Say hello"}]
    ).choices[0].message.content
    r["stream"] = collect(
        client.chat.completions.create(
            model="stub-chat",
            messages=[{"role": "user", "content": "Say hello"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    r["stream_no_usage"] = collect(
        client.chat.completions.create(
            model="stub-chat", messages=[{"role": "user", "content": "Say hello"}], stream=True
        )
    )
    tools = client.chat.completions.create(
        model="stub-chat",
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER_TOOL],
    )
    r["tools"] = tools.model_dump()
    r["tools_stream"] = collect(
        client.chat.completions.create(
            model="stub-chat",
            messages=[{"role": "user", "content": "Weather in Paris?"}],
            tools=[WEATHER_TOOL],
            stream=True,
        )
    )
    floats = client.embeddings.create(model="stub-embed", input=["a", "b"], encoding_format="float")
    r["embed_float"] = floats.model_dump()
    # The SDK asks for base64 by default and decodes it itself.
    r["embed_default"] = client.embeddings.create(model="stub-embed", input="a").model_dump()
    r["models"] = sorted(m.id for m in client.models.list())
    r["model"] = client.models.retrieve("stub-latest").model_dump()
    try:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    except openai.APIError as e:
        r["unknown_model"] = error_info(e)
    return r


def fallback():
    client = OpenAI(max_retries=0)
    chat = client.chat.completions.create(
        model="stub-fallback", messages=[{"role": "user", "content": "Say hello"}]
    )
    return {"content": chat.choices[0].message.content}


def broken():
    client = OpenAI(max_retries=0)
    got = ""
    try:
        stream = client.chat.completions.create(
            model="stub-broken", messages=[{"role": "user", "content": "Say hello"}], stream=True
        )
        for chunk in stream:
            for c in chunk.choices:
                got += c.delta.content or ""
    except openai.APIError as e:
        return {"raised": error_info(e), "received": got}
    return {"raised": None, "received": got}


def bad_key():
    out = {}
    for name, key in [("unknown", "slx_cli_" + "0" * 64), ("garbage", "sk-not-a-sylphx-token")]:
        client, sent = counting_client(api_key=key)
        try:
            client.chat.completions.create(model="stub-chat", messages=[{"role": "user", "content": "x"}])
            out[name] = None
        except openai.APIError as e:
            out[name] = error_info(e)
            out[name]["requests_sent"] = len(sent)
    return out


def budget():
    client, sent = counting_client(max_retries=2)
    first = client.chat.completions.create(
        model="stub-chat", messages=[{"role": "user", "content": "Say hello"}]
    )
    out = {"first": first.choices[0].message.content}
    before = len(sent)
    try:
        client.chat.completions.create(model="stub-chat", messages=[{"role": "user", "content": "again"}])
        out["second"] = None
    except openai.APIError as e:
        out["second"] = error_info(e)
    # x-should-retry: false means the SDK gave up after one request.
    out["second_requests_sent"] = len(sent) - before
    return out


def anthropic():
    client = OpenAI(max_retries=0)
    r = {}
    chat = client.chat.completions.create(
        model="claude-stub",
        max_tokens=300,
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "toolu_prev",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "toolu_prev", "content": "18C and sunny"},
        ],
    )
    r["chat"] = chat.model_dump()
    r["tools"] = client.chat.completions.create(
        model="claude-stub",
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER_TOOL],
    ).model_dump()
    r["stream"] = collect(
        client.chat.completions.create(
            model="claude-stub",
            messages=[{"role": "user", "content": "Say hello"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    r["tools_stream"] = collect(
        client.chat.completions.create(
            model="claude-stub",
            messages=[{"role": "user", "content": "Weather in Paris?"}],
            tools=[WEATHER_TOOL],
            stream=True,
        )
    )
    try:
        client.chat.completions.create(
            model="claude-stub", messages=[{"role": "user", "content": "please fail"}]
        )
    except openai.APIError as e:
        r["error"] = error_info(e)
    return r


if __name__ == "__main__":
    scenario = sys.argv[1].replace("-", "_")
    print(json.dumps(globals()[scenario](), default=str))
