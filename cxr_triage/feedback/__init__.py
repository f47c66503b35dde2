"""The feedback store: radiologist-labelled examples, written by the stream processors, read by the trainer."""
