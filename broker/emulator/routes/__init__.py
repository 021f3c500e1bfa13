"""The emulator's HTTP handlers, one module per part of Smithery's API (plus test controls)."""
