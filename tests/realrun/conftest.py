import os

# Triton runs on the CPU only under its interpreter; set before any kernel module is imported.
os.environ.setdefault("TRITON_INTERPRET", "1")
