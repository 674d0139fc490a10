"""Caption datasets: file formats, cleaning, splits, the prepare report and the prepared captions table."""
