"""CI providers: one file per CI system (see `registry`)."""
