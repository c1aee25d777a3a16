"""Stable Diffusion: CLIP text encoder, UNet denoising loop with diffusers schedulers, VAE decoder."""
