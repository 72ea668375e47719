"""What safehold backs up. Each source yields one byte stream and the facts for its manifest."""
