"""Image captioning with soft attention over cached ResNet50 features, run as a DVC pipeline."""
