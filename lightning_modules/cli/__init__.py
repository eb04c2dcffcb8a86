"""The command lines, one module each (fit, predict, export, serve, compare), and the frame they
share (frame.py: one-line errors and exit statuses, the device choice)."""
