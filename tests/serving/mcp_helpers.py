"""What the MCP tests share: the tool names, one session's calls, and reading a tool result."""

from __future__ import annotations

from typing import Any

TOOLS = {"search", "get_document", "list_indexes", "fuse", "evaluate"}


async def call_all(client: Any, calls: list[tuple[str, dict]]) -> tuple[set[str], list[Any]]:
    tools = await client.list_tools()
    for tool in tools.tools:
        assert tool.input_schema["type"] == "object" and tool.description
    return {tool.name for tool in tools.tools}, [await client.call_tool(name, args) for name, args in calls]


def structured(result: Any) -> dict:
    assert not result.is_error, result.content
    return result.structured_content


def error_text(result: Any) -> str:
    assert result.is_error
    text = result.content[0].text
    assert "\n" not in text and "Traceback" not in text
    return text
