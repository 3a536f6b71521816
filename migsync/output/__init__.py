"""What the command line prints: tables for a terminal, plain text for a pipe, JSON."""
