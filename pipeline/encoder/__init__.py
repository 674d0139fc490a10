"""Image features: the frozen ResNet50, the image decoder, and the HDF5 feature cache (write and read sides)."""
