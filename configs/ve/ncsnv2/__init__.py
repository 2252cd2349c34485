"""NCSNv2 (Song & Ermon 2020) configs."""
