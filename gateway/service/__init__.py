"""The gRPC edge: thin servicers that parse, call the core and the store, and answer."""
