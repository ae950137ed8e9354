"""Training of the embedded demo models (`python -m demo_training`); the app never imports it; the CLI's `demo build` calls it."""
