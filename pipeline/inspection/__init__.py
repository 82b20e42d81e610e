"""What an index file is and who can use it: the consumers' rules, replayed, an index's description, RVC's file rules
(below every stage that writes one)."""
