"""Worker: read frames from the queue, analyse them, store the results, acknowledge."""
