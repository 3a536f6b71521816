"""What client and server share: wire records, canonical form, signing and verification."""
