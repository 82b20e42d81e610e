"""The build's steps, each with its plan and memory estimate: compress, expand, indexing."""
