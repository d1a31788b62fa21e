"""Native CPU kernels behind XLA FFI custom calls (compiled on first use; see `build`)."""
