"""UI helpers the pages share (settings, cached models, sidebar, styles); a sub-package, so never listed as a page."""
