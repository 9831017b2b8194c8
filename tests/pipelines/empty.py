import ciflow  # noqa: F401  (a file that defines no module)
