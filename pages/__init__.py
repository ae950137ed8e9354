"""The app's pages (one thin file each) and the UI helpers they share."""
