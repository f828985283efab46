"""Tool calling on chat requests: tool_choice as a plan (and a grammar), the output as OpenAI's tool-call deltas
(the parsers for tool_choice auto are tool-parser plugins: register_tool_parsers)."""
