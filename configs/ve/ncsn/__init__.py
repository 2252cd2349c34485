"""NCSN (v1, Song & Ermon 2019) configs, and v1 with some of NCSNv2's techniques."""
