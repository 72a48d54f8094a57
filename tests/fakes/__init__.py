"""Stand-ins for services the test machines cannot reach (design.md §5)."""
