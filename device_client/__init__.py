"""The splitinfer device client SDK: run the head, send to the edge, fall back locally."""
