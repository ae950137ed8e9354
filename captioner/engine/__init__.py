"""The caption engine: one per loaded captioner; it batches requests from every session and decodes fast."""
