"""sandboxd: secure code execution for AI agents."""
