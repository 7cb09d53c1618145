"""OpenAI-compatible model backends: clients, streamed answers and their repairs.

Nothing here knows ChatKit's types: this layer speaks the Agents SDK and the ``openai`` package.
"""
