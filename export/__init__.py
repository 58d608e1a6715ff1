"""statecast export."""
