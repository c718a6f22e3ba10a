"""The project's own offline model family: a tiny Stable-Diffusion-style pipeline, a tiny
open_clip model for the image screen and brand LoRAs, built without any download."""
