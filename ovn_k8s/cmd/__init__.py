"""Entry points. Each one only parses flags, builds objects and runs them."""
