"""2-D toy configs (data in the plane, a small MLP or the exact score): they run on a CPU."""
