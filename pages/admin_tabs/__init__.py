"""The admin page's tabs, one module each; pages/admin.py wires them (these are not pages themselves)."""
