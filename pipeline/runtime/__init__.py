"""What every layer runs on: progress and logs, atomic outputs, memory, streaming, typed records' JSON, tables."""
