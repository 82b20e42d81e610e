"""What an index file is and who can use it: the consumers' rules, replayed (below every stage that writes one)."""
