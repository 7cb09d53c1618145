"""Workflows: the workflows file, agents, tools, titles and the history they are sent."""
