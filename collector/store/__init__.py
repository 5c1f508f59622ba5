"""Where the collector keeps what it received: embedded SQLite by default."""
