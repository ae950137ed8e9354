"""The admin page's tabs, one module each; app_pages/admin.py wires them (these are not pages themselves)."""
